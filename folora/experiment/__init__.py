"""Running one experiment: the runner's phases, the caches it looks in (base evaluation, calibration), adopting another
experiment's cell, config validation and the shape of the results record. Only the entry point (`folora.run`) imports
the runner."""
