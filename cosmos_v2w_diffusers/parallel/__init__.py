"""How processes split the work: the parallel dimensions and context parallelism."""
