"""The base: records, errors, reading answers, keys, JSON, small helpers. Knows nothing of jobs."""
