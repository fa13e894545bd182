"""Calibration data and statistics that any method may use while it prepares, before training starts.

- `proxy`       sequences sampled from the base model itself (cached on disk): FoLoRA's forgetting penalty and
                LaLoRA's curvature are both estimated on them, so the two methods are compared on the same data.
- `covariance`  input covariances `E[x xᵀ]` of linear layers from forward hooks, one per group of layers that read
                the same input, streamed a chunk of groups at a time.

Nothing here knows a method: methods import these components, never the other way round.
"""
