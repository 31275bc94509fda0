"""Lightning glue every method and evaluation can use: callbacks (Hugging Face export, requeue on a
signal) and the FSDP wrapping policy.

May import: ``lit_align.modeling`` and ``lit_align.data``.
"""
