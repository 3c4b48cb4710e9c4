"""A row into its requests and keys, an answer into its meaning, and the plan of a run."""
