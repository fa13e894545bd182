"""An experiment's grid, resolved: the experiment file (experiments/<name>.yaml), its selectors of tasks and methods
read against the config groups (so a new task or method config is picked up without code changes), its variants
(named override sets, e.g. an ablation's switches), the cells they span, each method's default knob value, and the
folder the grid's runs live in. Composing configs here is how a misspelt name stops a grid before anything runs."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

EXPERIMENTS = Path(__file__).resolve().parent
REPO = EXPERIMENTS.parent
CONF = REPO / "conf"
RUNS_ROOT = REPO / "results"


class ExperimentError(Exception):
    """A grid that cannot be run as written: the message says what to change."""


@dataclass(frozen=True)
class Cell:
    """One run of the grid: a task, a method at one knob value (None: the method's default), a seed, and the
    variant of the method (None where the grid has no variants)."""

    task: str
    method: str
    knob: str
    value: object
    seed: int
    variant: str | None = None


def _compose(overrides: list[str]) -> DictConfig:
    """The run config these overrides give (conf/config.yaml and its groups)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def available(group: str) -> dict[str, DictConfig]:
    """Every option of a config group, composed as a run sees it (a method YAML extends conf/method/_base/...).
    Composed once per state of conf/: a grid resolves its tasks and methods many times."""
    stamp = tuple((str(p), p.stat().st_mtime_ns) for p in sorted(CONF.rglob("*.yaml")))
    return dict(_available(group, stamp))


@lru_cache(maxsize=16)
def _available(group: str, stamp: tuple) -> tuple[tuple[str, DictConfig], ...]:
    return tuple((path.stem, _compose([f"{group}={path.stem}"])[group]) for path in sorted((CONF / group).glob("*.yaml")))


def load_experiment(name: str, dotlist: list[str]) -> DictConfig:
    """experiments/<name>.yaml with `dotlist` (e.g. grid.seeds=[0]) merged over it."""
    path = EXPERIMENTS / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))
        raise ExperimentError(f"There is no experiment {name!r}; choose one of {names} (files in experiments/).")
    spec = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(dotlist))
    check_render(spec)
    return spec


def check_render(spec: DictConfig) -> None:
    """`render.reference` and `render.focus` name methods of conf/method: a misspelt one stops the grid before it
    runs rather than leaving its comparison silently out of the tables."""
    methods = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
    for key in ("reference", "focus"):
        value = spec.get("render", {}).get(key)
        if value is not None and value not in methods:
            raise ExperimentError(f"render.{key}: {value!r} is not a method; choose one of {methods} "
                                  f"(files in conf/method/).")


def resolve_tasks(selector) -> list[str]:
    """A list of task names, or a source (`embedded`, `hub`): every task config with that `source`."""
    options = available("task")
    if isinstance(selector, str):
        names = [name for name, cfg in options.items() if cfg.get("source") == selector]
        if not names:
            raise ExperimentError(f"No task config has source={selector!r}; use a list of tasks from {list(options)}.")
        return names
    unknown = [t for t in selector if t not in options]
    if unknown:
        raise ExperimentError(f"Unknown task(s) {unknown}; conf/task has {list(options)}.")
    return list(selector)


def resolve_methods(grid: DictConfig) -> dict[str, list | None]:
    """`grid.methods`: `all` or {method: [knob values] or null (its default)}. With `all`, every method config in
    conf/method/ less `grid.exclude_methods`, each at the values `grid.knob_values` gives it (a grid that lists knob
    values must list them for every method it runs, so a new method cannot join a trade-off grid as a single point)."""
    options = available("method")
    selector = grid.methods
    if selector != "all" and (grid.get("exclude_methods") or grid.get("knob_values")):
        raise ExperimentError("grid.exclude_methods and grid.knob_values apply to `methods: all`; with a mapping of "
                              "methods, list the methods and their knob values there instead.")
    if selector != "all":
        methods = OmegaConf.to_container(selector) if isinstance(selector, DictConfig) else dict(selector)
        unknown = [m for m in methods if m not in options]
        if unknown:
            raise ExperimentError(f"Unknown method(s) {unknown}; conf/method has {list(options)}.")
        return {m: (list(v) if v is not None else None) for m, v in methods.items()}
    excluded = [str(m) for m in grid.get("exclude_methods") or []]
    values = OmegaConf.to_container(grid.knob_values) if grid.get("knob_values") is not None else None
    unknown = [m for m in [*excluded, *(values or {})] if m not in options]
    if unknown:
        raise ExperimentError(f"Unknown method(s) {unknown} in exclude_methods or knob_values; conf/method has "
                              f"{list(options)}.")
    methods = [name for name in options if name not in excluded]
    if values is not None:
        missing = [m for m in methods if values.get(m) is None]
        if missing:
            raise ExperimentError(f"grid.knob_values gives no values for {missing}: add a list of knob values for "
                                  f"each (its YAML's `knob` names the key), or list them in grid.exclude_methods.")
        return {m: list(values[m]) for m in methods}
    return {name: None for name in methods}


def resolve_variants(grid: DictConfig) -> dict[str | None, list[str]]:
    """`grid.variants`: {name: [run overrides]}, each a variant of every method of the grid (an ablation switches one
    thing off or swaps it); without it, one unnamed variant with no overrides."""
    variants = grid.get("variants")
    if not variants:
        return {None: []}
    for name, overrides in variants.items():
        _check_variant(name, overrides)
    return {str(name): [str(o) for o in overrides or []] for name, overrides in variants.items()}


def _check_variant(name, overrides) -> None:
    # the name becomes part of run folders and of `variant=<name>`, which Hydra parses as YAML
    if not str(name).isidentifier() or not isinstance(yaml.safe_load(str(name)), str):
        raise ExperimentError(f"Variant name {name!r} must be a plain identifier (letters, digits, _) that YAML "
                              f"reads as text (not true, null, nan, ...): it becomes part of the run folder's name.")
    if overrides is not None and (isinstance(overrides, str) or not all("=" in str(o) for o in overrides)):
        raise ExperimentError(f"Variant {name!r}: give a list of key=value overrides, e.g. [method.gate_b=false], "
                              f"or [] for the method as configured; got {overrides!r}.")
    if any("," in str(o) for o in overrides or []):
        raise ExperimentError(f"Variant {name!r}: an override with a comma ({list(overrides)}) would become a sweep "
                              f"over its values; a variant is one setting. Make each value its own variant.")


def check_variants(methods: list[str], variants: dict[str | None, list[str]], fixed: list[str] = ()) -> None:
    """Compose every (method, variant) with the grid's fixed overrides before anything runs, so a misspelt key stops
    the grid with its name."""
    for method, (name, overrides) in itertools.product(methods, variants.items()):
        if not overrides:
            continue
        try:
            _compose([*fixed, f"method={method}", *overrides])
        except Exception as error:  # noqa: BLE001 - Hydra's messages name the key; ours names the variant
            raise ExperimentError(f"Variant {name!r} of method {method!r} does not compose: "
                                  f"{str(error).splitlines()[0]}") from error


def fixed_overrides(spec: DictConfig) -> list[str]:
    """The settings every run of the grid shares: model, eval suite and the grid's own overrides."""
    grid = spec.grid
    return [f"model={grid.model}", f"eval={grid.eval}", *grid.overrides]


def default_knob_values(spec: DictConfig, methods: list[str]) -> dict[str, object]:
    """Each method's knob value where the grid does not set it: its config composed with the grid's fixed settings
    (a grid override such as train.lr moves LoRA's default with it)."""
    values = {}
    for method in methods:
        cfg = _compose([*fixed_overrides(spec), f"method={method}"])
        values[method] = OmegaConf.select(cfg, str(cfg.method.knob))
    return values


def cells(spec: DictConfig) -> list[Cell]:
    """Every run of the grid, method by method (then variant, task, knob value, seed): the order its sweeps take."""
    grid = spec.grid
    knobs = {name: str(cfg.knob) for name, cfg in available("method").items()}
    methods = resolve_methods(grid)
    variants = resolve_variants(grid)
    check_variants(list(methods), variants, fixed_overrides(spec))
    out = []
    for method, values in methods.items():
        for variant, task, value, seed in itertools.product(variants, resolve_tasks(grid.tasks), values or [None],
                                                            grid.seeds):
            out.append(Cell(task, method, knobs[method], value, int(seed), variant))
    return out


def sweep_dir(spec: DictConfig, root: Path) -> Path:
    """Runs of one grid live together; a change to the fixed settings (model, suite, overrides) gets a new folder,
    so a skipped run is always a run of the same settings."""
    variants = resolve_variants(spec.grid)
    fixed = json.dumps([spec.grid.model, spec.grid.eval, list(spec.grid.overrides)]
                       + ([variants] if variants != {None: []} else []))   # a variant's overrides, edited: new runs
    digest = hashlib.sha256(fixed.encode()).hexdigest()[:8]
    return root / spec.name / "runs" / f"{spec.grid.model}_{spec.grid.eval}_{digest}"
