"""Evaluation: eval suites run through lm-eval, plus the KL divergence to the base model."""
