"""Data: tokenized, padded batches (and later grain pipelines, TFDS builders, the data store)."""
