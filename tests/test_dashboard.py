"""The experiment dashboard as code: every panel the issue of trade-offs needs, a filter that selects exactly the
experiment's runs, a definition that round-trips through wandb-workspaces' own model, offline runs that carry the
keys the panels read, and a clear stop without credentials."""

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from experiments import dashboard
from experiments.grid import load_experiment
from tests.conftest import REPO, TINY, run_folora
from tests.wandb_offline import read_run

pytest.importorskip("wandb_workspaces")


@pytest.fixture(scope="module")
def smoke_workspace():
    return dashboard.build_workspace(load_experiment("smoke", []), "my-team", "folora")


def panels_of(workspace) -> dict[str, list]:
    return {section.name: section.panels for section in workspace.sections}


def metric_names(panel) -> set[str]:
    found = set()
    for field in ("x", "y", "metrics"):
        value = getattr(panel, field, None)
        for v in value if isinstance(value, list) else [value]:
            if v is not None:
                found.add(getattr(v, "name", v))
    return found


def test_every_panel_is_there(smoke_workspace):
    sections = panels_of(smoke_workspace)
    kinds = {name: [type(p).__name__ for p in panels] for name, panels in sections.items()}
    tradeoff = sections["Trade-off: learning vs forgetting"]
    assert {"target_gain", "forgetting"} <= metric_names(tradeoff[0]) and kinds["Trade-off: learning vs forgetting"][0] == "ScatterPlot"
    assert any(getattr(p, "table_name", None) == "table" for p in tradeoff)   # the summary run's interval table
    trajectories = set().union(*(metric_names(p) for p in sections["Learning–forgetting trajectories"]))
    assert trajectories == {"Step", "trajectory/val_loss", "trajectory/kl_to_base", "trajectory/bpb"}
    live = set().union(*(metric_names(p) for p in sections["Live statistics: FoLoRA and LaLoRA"]))
    assert {"train/proxy_penalty", "train/gate_a_mean", "train/gate_b_mean", "train/penalty"} <= live
    bars = sections["Per-item paired changes"][0]
    items = OmegaConf.load(REPO / "conf" / "eval" / "embedded.yaml")["items"]
    assert metric_names(bars) == {f"change/{item}" for item in items}
    assert "RunComparer" in kinds["Per-item paired changes"]
    for panel in [*sections["Learning–forgetting trajectories"], bars]:
        assert panel.groupby.name == "method_name"


def test_the_runs_table_groups_by_method_and_knob_and_shows_the_config_columns(smoke_workspace):
    runset = smoke_workspace.runset_settings
    assert [g.name for g in runset.groupby] == ["method_name", "knob_value"]
    assert {"config:method_name", "config:knob", "config:knob_value", "config:seed", "config:task_name"} <= set(
        runset.pinned_columns)


def test_a_grid_of_variants_groups_by_variant():
    workspace = dashboard.build_workspace(load_experiment("ablations", []), "my-team", "folora")
    assert [g.name for g in workspace.runset_settings.groupby] == ["method_name", "knob_value", "variant"]
    assert "config:variant" in workspace.runset_settings.pinned_columns
    for panel in panels_of(workspace)["Learning–forgetting trajectories"]:
        assert panel.groupby.name == "variant"


def selects(filters: list[dict], config: dict) -> bool:
    """Evaluate the saved filterV2 list (AND of equalities on config keys) on one run's config."""
    assert all(f["op"] == "=" and f["key"]["section"] == "config" for f in filters), filters
    return all(config.get(f["key"]["name"]) == f["value"] for f in filters)


def test_the_filter_selects_exactly_the_experiments_runs(smoke_workspace):
    saved = dashboard.definition(smoke_workspace)["spec"]["section"]["runSets"][0]["filters"]["filters"]
    runs = [{"experiment": "smoke", "method_name": "lora"}, {"experiment": "smoke"},          # a run, the summary run
            {"experiment": "knobs", "method_name": "lora"}, {"experiment": "default", "method_name": "folora"}]
    assert [selects(saved, run) for run in runs] == [True, True, False, False]


def test_the_definition_round_trips_through_the_librarys_model(smoke_workspace):
    saved = dashboard.definition(smoke_workspace)
    again = dashboard.from_definition(json.loads(json.dumps(saved)))
    assert dashboard.definition(again) == saved
    assert [s.name for s in again.sections] == [s.name for s in smoke_workspace.sections]


@pytest.mark.integration
def test_an_offline_run_holds_the_keys_the_panels_read(tmp_path, smoke_workspace):
    run_dir = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith("logger=")]
    process = run_folora(run_dir, *overrides, "logger=wandb", "experiment=smoke")
    assert process.returncode == 0, process.stderr[-3000:]
    run = read_run(next((run_dir / "wandb").glob("offline-run-*/*.wandb")))
    assert run["group"] == "smoke" and run["job_type"] == "folora"
    flat = {k: run["config"][k] for k in ("method_name", "knob", "knob_value", "task_name", "model_name", "eval_suite",
                                          "seed", "experiment")}
    assert flat == {"method_name": "folora", "knob": "method.kappa", "knob_value": 1.0, "task_name": "math",
                    "model_name": "tiny-random", "eval_suite": "embedded", "seed": 0, "experiment": "smoke"}
    summary_keys = {k for s in smoke_workspace.sections for p in s.panels if type(p).__name__ in ("ScatterPlot", "BarPlot")
                    for k in metric_names(p)}
    assert summary_keys <= set(run["summary"]), summary_keys - set(run["summary"])
    assert {"target_gain_low", "target_gain_high", "forgetting_low", "forgetting_high"} <= set(run["summary"])
    history = set().union(*run["history"])
    assert {"trajectory/val_loss", "trajectory/kl_to_base", "trajectory/bpb", "train/proxy_penalty",
            "train/gate_a_mean"} <= history


@pytest.mark.integration
def test_without_credentials_the_definition_is_written_and_the_command_says_how_to_save_it(tmp_path):
    out = tmp_path / "dashboard.json"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"} | {"NETRC": str(tmp_path / "no-netrc")}
    process = subprocess.run([sys.executable, "-m", "experiments.dashboard", "smoke", "--entity", "my-team", "--out",
                              str(out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert process.returncode == 2
    assert "no W&B credentials" in process.stderr and f"--save {out}" in process.stderr
    workspace = dashboard.from_definition(json.loads(out.read_text()))
    assert workspace.entity == "my-team" and workspace.name == "folora — smoke"
    again = subprocess.run([sys.executable, "-m", "experiments.dashboard", "--save", str(out)], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "no W&B credentials" in again.stderr
    unknown = subprocess.run([sys.executable, "-m", "experiments.dashboard", "nope"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert unknown.returncode == 2 and "no experiment 'nope'" in unknown.stderr
