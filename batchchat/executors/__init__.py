"""The engines that answer a run's requests, behind one interface (``base.Executor``)."""
