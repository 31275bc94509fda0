"""Records in, typed batches out: one DataModule for every method."""
