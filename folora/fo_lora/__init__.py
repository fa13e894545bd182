"""FoLoRA: LoRA trained by gated Adam in a generalized-Rayleigh spectral basis, calibrated on data the base model
samples itself. A peer of the methods in `baselines/`: it implements the same `folora.methods.base.Method` interface
and the runner drives it without knowing it.

- `method`      the `FoLoRA` method class (calibration, optimizer wiring, basis refresh, live statistics);
- `spectral`    the generalized eigenproblem C_t v = λ (C_p + εI) v, per input group;
- `gated_adam`  Adam whose steps are gated by g(λ) in the spectral basis (A's moments in A's own coordinates by
                default, or in the spectral ones), B gated in the r × r basis.

The shared calibration components it uses (proxy sampling, covariance hooks) live in `folora.calibration`.
"""

from folora.fo_lora.method import FoLoRA

__all__ = ["FoLoRA"]
