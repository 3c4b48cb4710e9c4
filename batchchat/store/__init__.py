"""What a run keeps: the journal of every answer paid for, the files beside the output, the lock,
and the counts a run adds up as it goes."""
