"""Training data per task: embedded generators and hub / local-file loaders, formatted as chat."""
