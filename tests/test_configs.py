"""Every config file composes and is named after its file, every method and logger config instantiates, and every
cell of every experiment grid (experiments/*.yaml) composes into a run config that passes the run's checks."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.conftest import CONF, METHODS, REPO, composed

GROUPS = ["model", "task", "method", "eval", "logger"]
NAMED = ["model", "task", "method", "eval"]      # groups whose options carry a `name` (the logger's do not)
BUILT = ["method", "logger"]                     # groups whose options are objects (`_target_`)


def options(*groups: str) -> list[tuple[str, str]]:
    return [(group, path.stem) for group in groups for path in sorted((CONF / group).glob("*.yaml"))]


@pytest.mark.parametrize(("group", "option"), options(*NAMED), ids=[f"{g}={o}" for g, o in options(*NAMED)])
def test_every_named_config_composes_under_its_file_name(group, option):
    assert composed(f"{group}={option}")[group].name == option


@pytest.mark.parametrize(("group", "option"), options(*BUILT), ids=[f"{g}={o}" for g, o in options(*BUILT)])
def test_every_method_and_logger_config_instantiates(group, option):
    assert instantiate(composed(f"{group}={option}")[group]) is not None


def test_every_group_has_options():
    for group in GROUPS:
        assert list((CONF / group).glob("*.yaml")), f"conf/{group} is empty"


def test_task_roles_name_items_of_the_default_suite():
    cfg = composed()
    for item in list(cfg.task.eval.target) + list(cfg.task.eval.related):
        assert item in cfg.eval["items"]


@pytest.mark.parametrize("method", METHODS)
def test_each_method_names_a_knob_that_exists(method):
    cfg = composed(f"method={method}")
    assert OmegaConf.select(cfg, cfg.method.knob) is not None, f"{method}.yaml: knob {cfg.method.knob} not in config"


# --- every cell of every experiment --------------------------------------------------------------------------------

EXPERIMENTS = sorted(path.stem for path in (REPO / "experiments").glob("*.yaml"))


def cell_overrides(command: list[str]) -> list[str]:
    """The run config's overrides in a cell's `python -m folora.run -m ...` command: everything after the module and
    its `-m`, less Hydra's own settings (where the run goes, the launcher), which do not reach the run config."""
    start = command.index("folora.run") + 1
    args = command[start + 1:] if command[start] == "-m" else command[start:]
    return [a for a in args if not a.lstrip("+~").startswith(("hydra.", "hydra/"))]


def test_every_experiment_file_is_checked():
    assert {"smoke", "main", "knobs", "ablations", "gpu-main"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_cell_of_an_experiment_composes_into_a_valid_run_config(experiment, tmp_path):
    """Each cell's own command line (`cell_commands`: the method's sweep narrowed to the cell, as `make
    reproduce-table JOBS=...` runs it; the grid from `load_experiment` and `cells`, all as experiments.reproduce
    uses them) composed with Hydra as the run composes it, then checked by the run's own checks
    (`validate_config`, `check_method_options`); no model is loaded."""
    from experiments.reproduce import cell_commands, cells, default_knob_values, load_experiment

    spec = load_experiment(experiment, [])
    grid = cells(spec)
    assert grid, f"experiments/{experiment}.yaml has no cells"
    commands = cell_commands(spec, tmp_path / "runs", [], grid)
    defaults = default_knob_values(spec, sorted({cell.method for cell in grid}))
    assert list(commands) == grid
    composed_once: dict[tuple, list[str]] = {}
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for cell, command in commands.items():
            overrides = cell_overrides(command)
            # cells that differ only in the seed compose alike: the first is composed and checked, the others must
            # differ from it in their seed override alone
            unseeded = [o for o in overrides if not o.startswith("seed=")]
            key = (cell.task, cell.method, str(cell.value), cell.variant)
            if key in composed_once:
                assert unseeded == composed_once[key] and f"seed={cell.seed}" in overrides, (cell, overrides)
                continue
            composed_once[key] = unseeded
            check_cell(f"experiments/{experiment}.yaml", spec, cell, overrides, defaults[cell.method])


def check_cell(where: str, spec, cell, overrides: list[str], default_value) -> None:
    """One cell's config, composed from its overrides, is the cell and passes the run's own checks."""
    from folora.experiment.validation import validate_config
    from folora.methods.options import check_method_options

    assert not any("," in o for o in overrides), (cell, overrides)   # one cell: no sweep left in its overrides
    cfg = compose(config_name="config", overrides=overrides)
    where = f"{where}, cell {cell}: {' '.join(overrides)}"
    assert (cfg.experiment, cfg.task.name, cfg.method.name, int(cfg.seed)) == (
        spec.name, cell.task, cell.method, cell.seed), where
    assert (cfg.model.name, cfg.eval.name) == (spec.grid.model, spec.grid.eval), where
    assert OmegaConf.select(cfg, cell.knob) == (default_value if cell.value is None else cell.value), where
    assert cfg.get("variant") == cell.variant, where
    validate_config(cfg)
    check_method_options(cfg.method)
