"""Adopting another experiment's run of the same computation (`reuse_from`, folora/experiment/adopt.py): the rules that decide
"the same", an adoption through the real entry point (record, outcomes, W&B run), and the cases that must compute."""

import gzip
import json
import shutil

import pytest

from folora.experiment.adopt import candidates, default_choices, overridden_keys, same_computation
from tests.conftest import REPO, TINY, composed, read_results, run_folora
from tests.wandb_offline import read_run

GROUPS = {"model": "smollm2-135m", "task": "math", "method": "folora", "eval": "embedded", "logger": "wandb"}


def test_a_key_only_this_run_has_must_hold_its_default():
    mine = {"train.lr": 0.002, "model.dtype": "fp32", "model.name": "smollm2-135m"}
    theirs = {"train.lr": 0.002, "model.name": "smollm2-135m"}     # written before model.dtype existed
    assert same_computation(mine, theirs, overridden=set())
    assert not same_computation(mine, theirs, overridden={"model.dtype"})   # model.dtype=fp32 given explicitly
    assert not same_computation(mine, theirs, overridden={"model"})   # another model file, which may set dtype itself
    assert not same_computation(mine, theirs, overridden={""})        # a _global_ package: anything may differ
    lists = {"method.layers": "[1, 2]", "seed": 0}
    assert not same_computation(lists, {"seed": 0}, overridden={"method.layers.0"})   # one element of a list set


def test_a_key_only_the_other_run_has_or_a_different_value_is_another_computation():
    assert not same_computation({"train.lr": 0.002}, {"train.lr": 0.002, "method.extra": 1}, overridden=set())
    assert not same_computation({"train.lr": 0.002}, {"train.lr": 0.001}, overridden=set())
    assert same_computation({"train.lr": 0.002, "seed": 0}, {"seed": 0, "train.lr": 2.0e-3}, overridden={"seed"})


def test_a_methods_learning_rate_is_compared_through_the_one_training_uses():
    """`method.lr` only supplies `train.lr`'s default: knobs' `++method.lr=2e-3` LoRA cell and main's LoRA (no
    `method.lr`) at train.lr 2e-3 are one computation; a different train.lr is not, whatever method.lr says."""
    from folora.experiment.adopt import comparable

    knobs = comparable({"method": {"name": "lora", "lr": 0.002}, "train": {"lr": 0.002}})
    main = comparable({"method": {"name": "lora"}, "train": {"lr": 0.002}})
    assert same_computation(main, knobs, overridden={"method"}) and same_computation(knobs, main, overridden={"method"})
    moved = comparable({"method": {"name": "lora", "lr": 0.002}, "train": {"lr": 0.001}})
    assert not same_computation(main, moved, overridden={"method"})


def test_overridden_keys_name_values_and_config_files_other_than_the_default():
    overrides = ["method=lora", "model=smollm2-135m", "train.lr=0.002", "+method.extra=1", "~method.dropout",
                 "hydra.verbose=true", "hydra/launcher=joblib", "seed=0", "method.layers.0=3", "model@other=tiny-random",
                 "method/_base=x", "task@_global_=math"]
    assert overridden_keys(overrides, GROUPS) == {"method", "train.lr", "method.extra", "method.dropout", "seed",
                                                  "method.layers.0", "other", "method._base", ""}
    assert default_choices(REPO / "conf" / "config.yaml") == GROUPS


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A completed tiny run of experiment `knobs-like`, its learning rate given explicitly as a knob grid does."""
    root = tmp_path_factory.mktemp("reuse")
    run_dir = root / "knobs-like" / "runs" / "cell"
    process = run_folora(run_dir, *TINY, "experiment=knobs-like", "train.lr=0.002")
    assert process.returncode == 0, process.stderr[-3000:]
    return root, run_dir


@pytest.mark.integration
def test_another_experiment_adopts_the_same_run_instead_of_computing_it(source_run, tmp_path):
    root, source = source_run
    run_dir = tmp_path / "main-cell"
    overrides = [o for o in TINY if not o.startswith("logger=")]
    process = run_folora(run_dir, *overrides, "logger=wandb", "experiment=main-like", "variant=full",
                         f"reuse_from=['{root / 'knobs-like'}']")
    assert process.returncode == 0, process.stderr[-3000:]
    assert "instead of computing them again" in process.stdout
    original, adopted = read_results(source), read_results(run_dir)
    assert adopted["status"] == "completed"
    assert adopted["reused_from"]["results"] == str(source / "results.json")
    assert adopted["reused_from"]["experiment"] == "knobs-like" and adopted["reused_from"]["git"] == original["git"]
    assert adopted["config"]["experiment"] == "main-like" and adopted["config"]["variant"] == "full"
    assert "experiment=main-like" in adopted["host"]["argv"] and adopted["reused_from"]["host"] == original["host"]
    for key in ("metrics", "target_gain", "forgetting", "kl_to_base", "train", "timing", "data", "versions", "git"):
        assert adopted[key] == original[key], key
    with gzip.open(source / "outcomes.json.gz") as a, gzip.open(run_dir / "outcomes.json.gz") as b:
        assert json.load(a) == json.load(b)
    assert (run_dir / "config.yaml").is_file() and not (run_dir / "adapter").exists()

    offline = list((run_dir / "wandb").glob("offline-run-*/*.wandb"))
    assert len(offline) == 1
    logged = read_run(offline[0])
    assert logged["group"] == "main-like" and logged["config"]["reused_from"] == str(source / "results.json")
    assert logged["summary"]["status"] == "completed"
    assert logged["summary"]["forgetting"] == pytest.approx(original["forgetting"]["value"])
    steps = {row["_step"] for row in logged["history"] if "train/loss" in row}
    assert steps == {log["step"] for log in original["train"]["logs"]}

    # adopted again from the adopted copy: the origin stays the run that computed it
    from folora.experiment.adopt import adopt_completed_run

    again = composed(*TINY, "experiment=third", f"reuse_from=['{tmp_path}']")
    record = adopt_completed_run(again, tmp_path / "again", overridden_keys(list(TINY), GROUPS))
    assert record["reused_from"]["results"] == str(source / "results.json")
    assert read_results(tmp_path / "again")["config"]["experiment"] == "third"


@pytest.mark.integration
def test_other_data_or_another_config_is_computed_not_adopted(source_run, tmp_path, monkeypatch):
    from folora.experiment.adopt import adopt_completed_run

    root, source = source_run
    changed = tmp_path / "changed"
    shutil.copytree(source, changed / "cell", ignore=shutil.ignore_patterns("adapter", "wandb"))
    record = read_results(changed / "cell")
    record["data"]["task"]["fingerprint"] = "another task data"
    (changed / "cell" / "results.json").write_text(json.dumps(record))
    cfg = composed(*TINY, "experiment=main-like", f"reuse_from=['{changed}']")
    assert candidates(cfg, overridden_keys(list(TINY), GROUPS), [changed], tmp_path / "new")   # the config matches
    assert adopt_completed_run(cfg, tmp_path / "new", overridden_keys(list(TINY), GROUPS)) is None

    broken = tmp_path / "broken"
    shutil.copytree(source, broken / "cell", ignore=shutil.ignore_patterns("adapter", "wandb", "outcomes.json.gz"))
    cfg = composed(*TINY, f"reuse_from=['{broken}']")
    assert adopt_completed_run(cfg, tmp_path / "broken-adopter", overridden_keys(list(TINY), GROUPS)) is None
    assert read_results(tmp_path / "broken-adopter")["status"] == "running"   # never a completed record without outcomes

    other_seed = composed(*TINY, "seed=1", f"reuse_from=['{root}']")
    assert adopt_completed_run(other_seed, tmp_path / "new", overridden_keys([*TINY, "seed=1"], GROUPS)) is None
    explicit = composed(*TINY, "model.dtype=fp32", f"reuse_from=['{root}']")   # a key the source never named
    same = composed(*TINY, f"reuse_from=['{root}']")
    assert adopt_completed_run(same, tmp_path / "same", overridden_keys(list(TINY), GROUPS)) is not None
    assert adopt_completed_run(explicit, tmp_path / "new", overridden_keys([*TINY, "model.dtype=fp32"], GROUPS)) \
        is not None   # both configs hold model.dtype (the source wrote it): an explicit equal value is the same run


@pytest.mark.integration
def test_a_reuse_folder_that_does_not_exist_is_refused(tmp_path):
    process = run_folora(tmp_path / "run", *TINY, f"reuse_from=['{tmp_path / 'missing'}']")
    assert process.returncode == 2
    assert "reuse_from" in process.stderr and "existing folders" in process.stderr
    assert read_results(tmp_path / "run")["status"] == "failed"   # recorded as any config error is
