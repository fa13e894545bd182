"""One-off tools run from the checkout (`python -m scripts.<name>`): data builders and record migrations."""
