"""Adopting a run another experiment already computed (`reuse_from=[folder, ...]`).

Experiments share cells: `main`'s LoRA on math at the default learning rate is a point of `knobs`' LoRA curve, and
`ablations`' `full` variant is FoLoRA at its default κ in `knobs`. On CPU the same config computes the same numbers
(seeds everywhere), so a run started with `reuse_from` first looks in those folders for a completed run of the same
computation and, where it finds one, records that run's results as its own (`reused_from` in results.json names the
run that computed them) instead of spending the same CPU time again.

The same computation means all of:
- the same resolved config, less the keys that only label a run or say how it is executed (`EXECUTION_KEYS`,
  `variant`) and those that reach the computation only through another compared key (`method.lr`, which is
  `train.lr`'s default);
- a key only this run's config has (one added by newer code, e.g. `model.dtype`) holds its default: no override of
  this run sets it, and no override picks a config file other than the primary config's default for its group (a
  file such as `model=llama-3.1-8b-instruct` sets `dtype: bf16` itself). A key is added with the default that keeps
  what the code did before it existed;
- no key only the other run's config has (that may be a `+key=value` override of its own);
- the same data: task, eval-suite and model fingerprints (checked by the caller, which loads them).

Like `skip_completed`, this does not compare code versions: a grid's cells may come from several commits, and each
record names its own (`git`, `versions`).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from folora.errors import FoloraError
from folora.experiment.record import provenance
from folora.experiment.validation import validate_config
from folora.models import load_model
from folora.records.fields import eval_metrics, summary_metrics
from folora.records.identity import EXECUTION_KEYS, REPO, Identity, flat_config, identity, without_keys
from folora.records.io import write_bytes_atomic, write_json_atomic
from folora.records.loggers import start_logger
from folora.records.run_record import NUMERICS, host_info
from folora.tasks.data import load_task_data
from folora.training import precision
from folora.training.device import apply_threads, pick_device
from folora.training.loop import replay

LABEL_KEYS = ("variant",)   # names a run; what a variant changes is in its overrides, which are compared
# Keys that reach the computation only through another key that is compared: `method.lr` is `train.lr`'s default
# (conf/config.yaml) and nothing else reads it, so a run made with `++method.lr=2e-3` (knobs) and one whose method has
# no `lr` (main's LoRA) compute the same when their `train.lr` agree.
SOURCE_KEYS = ("method.lr",)


def comparable(config: dict) -> dict:
    """The flat resolved config less labels, execution keys and keys read only through another compared key: what
    decides the numbers a run computes."""
    return without_keys(flat_config(config), (*EXECUTION_KEYS, *LABEL_KEYS, *SOURCE_KEYS))


def adoption_identity(config: dict, data: dict | None, numerics: int) -> Identity:
    """What a cell is adopted by: its comparable config, the fingerprints of the data it read (`provenance`) and the
    numerics version. No code digest: a grid's cells may come from several commits, each record naming its own."""
    return identity("adoption", config=comparable(config), data=data or {}, code={"numerics": numerics})


def recorded_identity(record: dict) -> Identity:
    """The adoption identity of a written record (a record without `numerics` is version 1)."""
    return adoption_identity(record.get("config", {}), record.get("data"), record.get("numerics", 1))


def same_computation(mine: dict, theirs: dict, overridden: set[str]) -> bool:
    """Whether two flat comparable configs compute the same run (module docstring); `overridden`: the config paths
    this run's overrides set ("" for all of them); a key only `mine` has must not lie under one of them."""
    if set(theirs) - set(mine):
        return False
    for key, value in mine.items():
        if key in theirs:
            if theirs[key] != value:
                return False
        elif any(_under(key, path) for path in overridden):
            return False
    return True


def _under(key: str, path: str) -> bool:
    """Whether an override of `path` sets flat key `key`: the key itself, a subtree (`method.proxy`), or an element
    of a list the flat key holds whole (`method.layers.0`)."""
    return path == "" or key == path or key.startswith(path + ".") or path.startswith(key + ".")


def overridden_keys(overrides: list[str], default_choices: dict[str, str]) -> set[str]:
    """Config paths set by command-line overrides: values (`train.lr=1e-3`, `+method.x=1`, `~method.dropout`), and
    the package of a config group whose file is not the primary config's default (`method=lora` where the default
    is folora: every `method.*` key comes from another file). A group at its default (`model=smollm2-135m`) sets
    nothing new. `default_choices`: {group: default option} of the primary config's defaults list."""
    paths = set()
    for override in overrides:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        if key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        group, _, package = key.partition("@")
        if group in default_choices or "/" in group:
            if package or default_choices.get(group) != value:   # another file, or the same file put elsewhere
                paths.add("" if package == "_global_" else package or group.replace("/", "."))
        else:
            paths.add(key)
    return paths


def default_choices(primary: Path) -> dict[str, str]:
    """{group: option} of a primary config's defaults list (conf/config.yaml)."""
    defaults = OmegaConf.to_container(OmegaConf.load(primary)).get("defaults", [])
    return {k: str(v) for entry in defaults if isinstance(entry, dict) for k, v in entry.items()}


def candidates(cfg: DictConfig, overridden: set[str], roots: list[Path], run_dir: Path) -> list[tuple[Path, dict]]:
    """(results.json path, its record) of the completed runs under `roots` (searched recursively) whose config
    computes what `cfg` does, newest first."""
    mine = adoption_identity(OmegaConf.to_container(cfg, resolve=True), None, NUMERICS)
    own = run_dir.resolve()
    found = []
    for root in roots:
        for path in sorted(Path(root).rglob("results.json")):
            if path.parent.resolve() == own:
                continue
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue   # a record being written, or not ours: never adopt what cannot be read
            theirs = recorded_identity(record)
            # computed with other numerics: never adopted into this version's table
            if (record.get("status") == "completed" and theirs.code == mine.code
                    and same_computation(mine.config, theirs.config, overridden)):
                found.append((path, record))
    return sorted(found, key=lambda f: f[1].get("finished_at", ""), reverse=True)


def adopt(source: Path, record: dict, cfg: DictConfig, run_dir: Path, logger, host: dict, repo: Path) -> dict:
    """Write `source`'s `record` into `run_dir` as this run's, under this run's config, labels and command (`host`),
    with its per-document outcomes; log it as a completed logger run (the training history replayed, the final
    scores, the summary). The folder never holds a completed results.json with other files than its own: the record
    is marked running first and written completed last."""
    record = dict(record)
    origin = record.get("reused_from") or {"results": _shown(source, repo),
                                           "experiment": record["config"].get("experiment"),
                                           "variant": record["config"].get("variant"),
                                           "git": record.get("git"), "host": record.get("host")}
    resolved = OmegaConf.to_container(cfg, resolve=True)
    record |= {"config": resolved, "host": host, "reused_from": origin,
               "adopted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json_atomic(run_dir / "results.json", {"status": "running", "config": resolved, "adopting": origin})
    write_bytes_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    write_bytes_atomic(run_dir / "outcomes.json.gz",
                       (source.parent / record.get("outcomes", "outcomes.json.gz")).read_bytes())
    record["outcomes"] = "outcomes.json.gz"
    for stale in ("adapter", "model", "checkpoint"):   # an earlier attempt's: the record's adapter is the source run's
        if stale != "checkpoint" or not cfg.train.get("keep_checkpoint", False):
            shutil.rmtree(run_dir / stale, ignore_errors=True)

    start_logger(logger, cfg, run_dir, resolved | {"reused_from": origin["results"]}, extra_tags=["reused"])
    train = record.get("train", {})
    replay(SimpleNamespace(logs=train.get("logs", []), trajectory=train.get("trajectory", [])), logger.log)
    logger.log(eval_metrics({item: entry["final"]["value"] for item, entry in record["metrics"].items()},
                            record["kl_to_base"]["value"]), train.get("steps"))
    logger.summary(summary_metrics(record))
    write_json_atomic(run_dir / "results.json", record)   # last: a completed record means everything else is there
    logger.finish("completed")
    return record


def _shown(path: Path, repo: Path) -> str:
    """A path as committed records show it: relative to the checkout where it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(repo)) if path.is_relative_to(repo) else str(path)


def adopt_completed_run(cfg: DictConfig, run_dir: Path, overridden: set[str]) -> dict | None:
    """Where `cfg.reuse_from` holds a completed run of this same computation (folora/experiment/adopt.py) on the same data,
    record it as this run's and return the record; else None, and the run computes its own. Whatever stops an
    adoption (a config error, a model that does not load, an unreadable source) leaves the run to `run_experiment`,
    which reports and records a config error as it always does."""
    try:
        validate_config(cfg)
    except FoloraError:
        return None
    sources = candidates(cfg, overridden, [Path(p) for p in cfg.get("reuse_from") or []], run_dir)
    if not sources:
        return None
    apply_threads(cfg)
    try:
        device = pick_device(cfg.device)
        loaded = load_model(cfg.model)
        eval_precision = precision.resolve(cfg.eval.precision, device)
        data = provenance(cfg, loaded, load_task_data(cfg, loaded, loaded.model.to(device), device, eval_precision))
    except FoloraError:
        return None
    for source, found in sources:
        if recorded_identity(found).data != data:   # the same config, but other task, suite or model data
            continue
        logger = None
        try:
            logger = instantiate(cfg.logger)
            record = adopt(source, found, cfg, run_dir, logger, host_info() | {"threads": torch.get_num_threads()},
                           REPO)
        except Exception as error:   # a source that cannot be copied: the next one, or compute the run
            if logger is not None:
                logger.finish("failed")
            print(f"[folora] could not adopt {source.parent} ({type(error).__name__}: {error}); the run goes on "
                  f"without it", file=sys.stderr, flush=True)
            continue
        print(f"[folora] the same run, on the same data, completed in {source.parent}: its results are recorded "
              f"here (results.json: reused_from) instead of computing them again", flush=True)
        return record
    return None
