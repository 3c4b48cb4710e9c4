"""What a job is (``spec``), where it sends (``endpoint``), what it may spend (``money``), and how
it is loaded from flags, job files and keywords (``settings``, ``jobfile``)."""
