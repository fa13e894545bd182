"""Every config file composes, and every method and logger config instantiates."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ["model", "task", "method", "eval", "logger"]
OPTIONS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_config_composes(group, option):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"{group}={option}"])
    if "name" in cfg[group]:
        assert cfg[group].name == option
    if group in ("method", "logger"):
        assert instantiate(cfg[group]) is not None


def test_every_group_has_options():
    for group in GROUPS:
        assert list((CONF / group).glob("*.yaml")), f"conf/{group} is empty"


def test_task_roles_name_items_of_the_default_suite():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config")
    for item in list(cfg.task.eval.target) + list(cfg.task.eval.related):
        assert item in cfg.eval["items"]


def test_each_method_names_a_knob_that_exists():
    from omegaconf import OmegaConf

    for path in sorted((CONF / "method").glob("*.yaml")):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"method={path.stem}"])
        assert OmegaConf.select(cfg, cfg.method.knob) is not None, f"{path.name}: knob {cfg.method.knob} not in config"
