"""`make dashboard TABLE=<experiment> ENTITY=<entity> PROJECT=<project>`: an experiment's W&B workspace, as code.

    python -m experiments.dashboard knobs --entity my-team --project folora     # sync the offline runs, save, print URL
    python -m experiments.dashboard --save results/knobs/dashboard.json         # save a definition written earlier

The workspace is built with `wandb-workspaces` (W&B's library for saved workspaces and reports; a workspace rather
than a report because it is the project's live view, with the runs table and grouping a researcher keeps working
in, while a report is a frozen document), filtered to the experiment's runs (`config.experiment`, the W&B group
of a sweep), grouped by method and knob value (and variant, in a grid of variants such as `ablations`, whose
panels then group by variant), with the runs table showing method, knob, knob value, seed and task. Sections:

1. Trade-off — target gain against forgetting (and against KL to the base, and against the preservation change),
   one point per run, coloured by group; beside it the summary run's table of cell means with their intervals.
2. Learning–forgetting trajectories — target validation loss, KL to the base and bits per byte against step,
   grouped by method (mean and standard error over the group's runs).
3. Live statistics of the methods — FoLoRA's proxy penalty, task utility and gate openness; LaLoRA's penalty.
4. Per-item paired changes — every eval item's `change/<item>` as bars per method, and a run comparer.

Without credentials or network the definition is written to `results/<experiment>/dashboard.json` (the library's
own model, `wandb_workspaces.workspaces.internal.View`) and the command says how to save it later.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from omegaconf import OmegaConf

from experiments.grid import CONF, REPO, RUNS_ROOT, ExperimentError, load_experiment, sweep_dir

RUN_COLUMNS = ["config:method_name", "config:knob", "config:knob_value", "config:seed", "config:task_name",
               "summary:target_gain", "summary:forgetting", "summary:kl_to_base", "summary:preservation_mean_change",
               "summary:status"]
TRAJECTORY = {"trajectory/val_loss": "target validation loss", "trajectory/kl_to_base": "KL(base ‖ tuned), nats/token",
              "trajectory/bpb": "bits per byte, held-out text"}
LIVE = {"train/proxy_penalty": "FoLoRA proxy penalty", "train/task_utility": "FoLoRA task utility",
        "train/gate_a_mean": "FoLoRA gate openness (A, mean)", "train/gate_a_open": "FoLoRA gates open (A, fraction)",
        "train/gate_b_mean": "FoLoRA gate openness (B, mean)", "train/penalty": "LaLoRA penalty"}


class DashboardError(Exception):
    """The dashboard cannot be saved as asked: the message says what to do."""


def eval_items(suite: str) -> list[str]:
    """The items of the experiment's eval suite (conf/eval/<suite>.yaml), in the suite's order."""
    return list(OmegaConf.load(CONF / "eval" / f"{suite}.yaml")["items"])


def build_workspace(spec, entity: str, project: str):
    """The experiment's workspace (see the module docstring)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    # a grid of variants (ablations) compares the variants of one method: its panels and table group by variant
    has_variants = bool(spec.grid.get("variants"))
    by_method = wr.Config("variant" if has_variants else "method_name")

    def trend(key: str, title: str):
        return wr.LinePlot(title=title, x="Step", y=[key], groupby=by_method, groupby_aggfunc="mean",
                           groupby_rangefunc="stderr", title_x="step", title_y=title)

    tradeoff = [wr.ScatterPlot(title="target gain vs forgetting (lower is better)", x=wr.SummaryMetric("target_gain"),
                               y=wr.SummaryMetric("forgetting")),
                wr.ScatterPlot(title="target gain vs KL to the base", x=wr.SummaryMetric("target_gain"),
                               y=wr.SummaryMetric("kl_to_base")),
                wr.ScatterPlot(title="target gain vs preservation (mean normalized change)",
                               x=wr.SummaryMetric("target_gain"), y=wr.SummaryMetric("preservation_mean_change")),
                wr.WeavePanelSummaryTable(table_name="table")]
    changes = [wr.BarPlot(title="paired change per eval item (final − base), mean over each method's runs",
                          metrics=[wr.SummaryMetric(f"change/{item}") for item in eval_items(spec.grid.eval)],
                          groupby=by_method, groupby_aggfunc="mean", groupby_rangefunc="stderr", orientation="h"),
               wr.RunComparer(diff_only=True)]
    sections = [ws.Section(name="Trade-off: learning vs forgetting", panels=tradeoff, is_open=True),
                ws.Section(name="Learning–forgetting trajectories", panels=[trend(k, t) for k, t in TRAJECTORY.items()],
                           is_open=True),
                ws.Section(name="Live statistics: FoLoRA and LaLoRA", panels=[trend(k, t) for k, t in LIVE.items()]),
                ws.Section(name="Per-item paired changes", panels=changes, is_open=True)]
    runset = ws.RunsetSettings(filters=f"Config('experiment') = '{spec.name}'",
                               groupby=[expr.Config("method_name"), expr.Config("knob_value"),
                                        *([expr.Config("variant")] if has_variants else [])],
                               pinned_columns=RUN_COLUMNS + (["config:variant"] if has_variants else []))
    return ws.Workspace(entity=entity, project=project, name=f"folora — {spec.name}", sections=sections,
                        runset_settings=runset)


def definition(workspace) -> dict:
    """The workspace as the library's own model (`internal.View`), JSON-ready."""
    return workspace._to_model().model_dump(by_alias=True, mode="json")


def from_definition(data: dict):
    """A workspace from a saved definition, through the library's model (the inverse of `definition`)."""
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces.workspaces import internal

    return ws.Workspace._from_model(internal.View.model_validate(data))


def offline_runs(root: Path) -> list[Path]:
    """The offline W&B runs of an experiment's sweeps (and its summary run)."""
    return sorted(p for p in root.rglob("offline-run-*") if p.is_dir())


def has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def sync(runs: list[Path], entity: str, project: str) -> None:
    """Upload offline runs that are not uploaded yet (`wandb sync` skips those it synced before)."""
    if not runs:
        return
    command = [sys.executable, "-m", "wandb", "sync", "--skip-synced", "--entity", entity, "--project", project,
               *map(str, runs)]
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode != 0:
        raise DashboardError(f"`wandb sync` failed (exit {process.returncode}): {process.stderr.strip()[-500:]}")


def save(workspace) -> str:
    try:
        workspace.save()
    except Exception as error:   # the library raises requests, GraphQL and auth errors alike
        raise DashboardError(f"W&B did not accept the workspace: {type(error).__name__}: {error}") from error
    return workspace.url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", nargs="?", help="a file name in experiments/ without .yaml: knobs, main, ablations, smoke")
    parser.add_argument("--entity", default=os.environ.get("WANDB_ENTITY") or None)
    parser.add_argument("--project", default=None, help="W&B project (default: conf/logger/wandb.yaml's)")
    parser.add_argument("--runs-root", type=Path, default=RUNS_ROOT, help="where the experiment's sweeps ran")
    parser.add_argument("--out", type=Path, default=None, help="the definition's JSON (default results/<name>/dashboard.json)")
    parser.add_argument("--save", type=Path, default=None, metavar="JSON", help="save a definition written earlier")
    args = parser.parse_args(argv)
    try:
        if args.save:
            workspace = from_definition(json.loads(args.save.read_text()))
            workspace.entity = args.entity or workspace.entity
            return _save_or_explain(workspace, args.save, runs=[])
        if not args.experiment:
            raise DashboardError("name an experiment (e.g. `make dashboard TABLE=knobs`) or pass --save <definition.json>")
        spec = load_experiment(args.experiment, [])
        project = args.project or OmegaConf.load(CONF / "logger" / "wandb.yaml").get("project", "folora")
        workspace = build_workspace(spec, args.entity or "", project)
        out = args.out or REPO / "results" / spec.name / "dashboard.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(definition(workspace), indent=1) + "\n")
        print(f"[dashboard] definition of {len(workspace.sections)} sections written to {out}")
        return _save_or_explain(workspace, out, runs=offline_runs(sweep_dir(spec, args.runs_root)))
    except (DashboardError, ExperimentError) as error:
        print(f"dashboard: error: {error}", file=sys.stderr)
        return 2


def _save_or_explain(workspace, path: Path, runs: list[Path]) -> int:
    if not workspace.entity:
        raise DashboardError(f"no W&B entity: pass ENTITY=<team or user> (or set WANDB_ENTITY). The definition is in "
                             f"{path}.")
    if not has_credentials():
        raise DashboardError(f"no W&B credentials (run `wandb login` or set WANDB_API_KEY). The definition is in {path}; "
                             f"save it later with `python -m experiments.dashboard --save {path}`.")
    sync(runs, workspace.entity, workspace.project)
    print(f"[dashboard] {len(runs)} offline runs synced (already synced ones skipped)")
    print(f"[dashboard] saved: {save(workspace)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
