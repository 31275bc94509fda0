"""lit_align: post-training for small language models on PyTorch Lightning."""

__version__ = "0.1.0"
