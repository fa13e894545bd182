"""Records and reports: results.json, the fields a run's scores decide, the one identity function that keys every
cache, the end-of-run table, loggers, phase timing and atomic files."""
