"""folora: forgetting-aware fine-tuning of foundation models.

A run composes `model x task x method x eval suite` (Hydra configs under `conf/`), measures every eval item
before and after fine-tuning, and records target gain, retention of non-target capabilities and the KL
divergence to the base model in a `results.json` per run.
"""

__version__ = "0.1.0"
