"""The engines that answer a run's requests, behind one interface (``base.Executor``): the live
engine (requests from this process) and provider batches; the Ray engine lives in ``batchchat.ray``.
``engines.executor_for`` picks one for a job."""
