"""The output table: assembled from the input and the store, written through a ``Sink``; and
what a run reports as it goes (``progress``)."""
