"""A method object from its config (`conf/method/<name>.yaml`, whose `_target_` names the class)."""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from folora.errors import FoloraError
from folora.methods.base import Method


def build_method(cfg: DictConfig) -> Method:
    """Instantiate the method named by `conf/method/<name>.yaml`; its own errors reach the user unwrapped."""
    try:
        return instantiate(cfg)
    except InstantiationException as error:
        if isinstance(error.__cause__, FoloraError):
            raise error.__cause__ from None
        raise
