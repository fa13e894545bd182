"""folora: forgetting-aware fine-tuning of foundation models.

A run composes `model x task x method x eval suite` (Hydra configs under `conf/`), measures every eval item
before and after fine-tuning on the same documents, and records in a `results.json` per run the paired changes
with 95% intervals: target gain, forgetting (bits-per-byte increase on held-out text), the KL divergence to the
base model, and the preservation of non-target capabilities.
"""

__version__ = "0.1.0"
