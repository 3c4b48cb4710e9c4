"""A job run one way or another: on files (``runfile``), on DataFrames (``frames``), as a dry
run (``dryrun``), or as a conversation (``chat``), by the engine it asks for (``engines``)."""
