"""What a run says and shows: the wording of plans, progress and summaries (``text``), and an
output looked at after the fact, summed up (``survey``) and drawn (``htmlreport``)."""
