"""Training: the loop and the one optimizer step the bench also times, checkpoints and exact resume, stop signals,
random generators, device and precision."""
