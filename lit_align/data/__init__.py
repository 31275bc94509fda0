"""Records in, typed batches out: one DataModule for every method.

- ``sources``: where records come from (local files, hub datasets) and the one record-file reader;
- ``formats`` / ``preference``: validation and tokenization of each record shape (chat template once);
- ``collate`` / ``kinds``: the typed batches (``SFTBatch``, ``PreferenceBatch``, ``PromptBatch``) and
  which one a method asks for; ``sampler``: accumulation windows across ranks;
- ``datamodule``: ``AlignDataModule``, told its tokenizer and batch kind (``connect``), never asking.

May import: nothing of lit_align (every other layer builds on it).
"""
