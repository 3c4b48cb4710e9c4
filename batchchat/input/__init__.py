"""The input table, read as Arrow batches on every pass."""
