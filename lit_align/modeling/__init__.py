"""Models and machines: loading policies, reward models and tokenizers by name, and what the hardware does fast.

- ``models``: ``embedded:``, ``tiny:``, local folders, ``.gguf`` files and hub ids to loaded models;
  LoRA / QLoRA; merged copies for export.
- ``tiny``: randomly initialised stand-ins and offline tokenizers for tests and smoke runs.
- ``hardware``: CPU feature flags (bf16 or not).

May import: nothing of lit_align.
"""
