"""`make reproduce-table`: grids expand from the config groups, sweeps skip finished runs, a failed run is isolated
and marked, and every number of the rendered table is the number in the run's results.json."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy import stats

from analysis.comparisons import focus_comparison, matched_comparison, method_comparison, variant_comparison
from analysis.stats import pareto_front, summarize
from experiments import progress
from experiments.commands import cell_commands, parallel_jobs, sweep_commands
from experiments.grid import CONF, Cell, ExperimentError, cells, load_experiment
from experiments.reproduce import main as reproduce_main
from experiments.running import run_queue, stop_processes
from tests.conftest import REPO

# The smoke grid with one injected failure: LoRA at a negative learning rate, which the runner refuses.
# (three methods: a method-level, a knob-level and a residual-init adapter; every method is covered by test_method_contract)
WITH_FAILURE = "grid.methods={folora: null, lora: [0.0005, -1.0], pissa: null}"


def make_reproduce(tmp_path, *args):
    extra = f"--runs-root {tmp_path / 'multirun'} --out {tmp_path / 'out'} '{WITH_FAILURE}'"
    return subprocess.run(["make", "-s", "reproduce-table", "TABLE=smoke", f"ARGS={extra} {' '.join(args)}"], cwd=REPO,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("reproduce")
    first = make_reproduce(tmp_path)
    return tmp_path, first


def results_files(tmp_path):
    return sorted((tmp_path / "multirun").rglob("results.json"))


@pytest.mark.integration
def test_the_sweep_runs_every_cell_and_isolates_the_failure(smoke):
    tmp_path, first = smoke
    assert first.returncode != 0, first.stdout[-3000:]  # one cell failed: the command says so
    records = [json.loads(p.read_text()) for p in results_files(tmp_path)]
    statuses = sorted((r["config"]["method"]["name"], r["config"]["train"]["lr"], r["status"]) for r in records)
    assert len(records) == 4
    assert ("lora", -1.0, "failed") in statuses
    assert sum(s == "completed" for *_, s in statuses) == 3
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert provenance["cells"] == {"total": 4, "completed": 3, "failed": 1}
    assert provenance["not_completed"][0]["method"] == "lora" and provenance["not_completed"][0]["value"] == -1.0


@pytest.mark.integration
def test_the_table_marks_the_failed_cell(smoke):
    tmp_path, _ = smoke
    table = (tmp_path / "out" / "table.md").read_text()
    failed_row = next(line for line in table.splitlines() if "| -1 " in line)
    assert "0 (1 failed)" in failed_row and "failed" in failed_row.split("|")[-2]
    assert "lora / lora" not in table
    assert "seed 0: failed" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.integration
def test_every_number_in_the_table_is_the_number_in_results_json(smoke):
    tmp_path, _ = smoke
    table = pd.read_csv(tmp_path / "out" / "table.csv")
    checked = 0
    for path in results_files(tmp_path):
        record = json.loads(path.read_text())
        if record["status"] != "completed":
            continue
        method, knob = record["method"]["name"], record["method"]["knob_value"]
        row = table[(table.method == method) & (table.knob_value.astype(str) == f"{knob:g}" if isinstance(knob, float)
                                                else table.method == method) & (table.runs == 1)]
        assert len(row) == 1, (method, knob)
        row = row.iloc[0]
        assert row.target_gain_mean == record["target_gain"]["value"]
        assert [row.target_gain_low, row.target_gain_high] == record["target_gain"]["ci"]   # one seed: the paired interval
        assert row.forgetting_mean == record["forgetting"]["value"]
        assert row.preservation_mean == record["preservation"]["mean_change"]["value"]
        assert row.kl_to_base_mean == record["kl_to_base"]["value"]
        checked += 1
    assert checked == 3
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert set(runs.status) == {"completed", "failed"}


@pytest.mark.integration
def test_tables_and_plots_are_written(smoke):
    out = smoke[0] / "out"
    for name in ("table.md", "table.csv", "table.tex", "runs.csv", "tradeoff.png", "tradeoff.pdf", "trajectories.png",
                 "change_heatmap.png", "change_heatmap.pdf", "matched.csv", "README.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert r"\begin{tabular}" in (out / "table.tex").read_text()


@pytest.mark.integration
def test_a_restarted_sweep_skips_completed_runs_and_retries_the_failed_one(smoke):
    tmp_path, _ = smoke
    before = {p: p.stat().st_mtime_ns for p in results_files(tmp_path)
              if json.loads(p.read_text())["status"] == "completed"}
    # the restart runs a queue of cells two at a time, one thread each: the completed cells are not started again, and
    # the failed one, run by its own narrowed command, lands in the folder its method's sweep gave it
    again = make_reproduce(tmp_path, "--jobs", "2")
    assert again.returncode != 0
    assert "3 of 4 cells completed already" in again.stdout and again.stdout.count("[reproduce] start ") == 1
    assert "[reproduce] failed (exit 1): lora math train.lr=-1.0 seed=0" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert len(results_files(tmp_path)) == 4
    retried = next(json.loads(p.read_text()) for p in results_files(tmp_path) if p not in before)
    assert retried["status"] == "failed" and retried["config"]["threads"] == max(1, (os.cpu_count() or 1) // 2)


def test_parallel_jobs_share_the_cores_and_refuse_a_bad_count():
    assert parallel_jobs(2) == [f"threads={max(1, (os.cpu_count() or 1) // 2)}"]
    assert parallel_jobs(10**6)[-1] == "threads=1"
    with pytest.raises(ExperimentError, match="--jobs 0"):
        parallel_jobs(0)
    assert reproduce_main(["smoke", "--jobs", "2", "--launcher", "slurm"]) == 2   # parallel here, or Slurm: not both
    assert reproduce_main(["smoke", "--jobs", "0"]) == 2


@pytest.mark.integration
def test_the_queue_runs_n_cells_at_a_time_across_methods_and_goes_on_past_a_failure(tmp_path, capsys):
    """Three cells of two methods on two lanes. Each cell waits for an event only the queue can cause: a0 ends once
    a1 has started (two at a time), a1 fails once b0 has started (b0 took a0's lane while a1 still ran, rather than
    waiting for a1's method to finish). A queue that did either differently would leave a cell waiting: it exits 9."""
    log = tmp_path / "log"

    def cell(name, waits_for=None, code=0):
        wait = (f"end = time.time() + 60\nwhile 'start {waits_for}' not in read() and time.time() < end: time.sleep(0.05)\n"
                f"code = {code} if 'start {waits_for}' in read() else 9\n") if waits_for else f"code = {code}\n"
        script = (f"import time\nlog = {str(log)!r}\nread = lambda: open(log).read()\n"
                  f"open(log, 'a').write('start {name}\\n')\n{wait}"
                  f"open(log, 'a').write('end {name}\\n')\nraise SystemExit(code)\n")
        return Cell("math", name[0], "train.lr", None, int(name[1])), [sys.executable, "-c", script]

    log.write_text("")
    commands = dict([cell("a0", waits_for="a1"), cell("a1", waits_for="b0", code=3), cell("b0")])
    seconds = run_queue(commands, jobs=2)
    events = log.read_text().split("\n")
    assert set(seconds) == {"a math seed=0", "a math seed=1", "b math seed=0"}
    assert events.index("end a0") < events.index("start b0") < events.index("end a1")
    out = capsys.readouterr().out
    assert "[reproduce] failed (exit 3): a math seed=1" in out and "done: a math seed=0" in out and "exit 9" not in out
    with pytest.raises(ExperimentError, match="--jobs 0"):
        run_queue(commands, jobs=0)


@pytest.mark.integration
def test_a_stopped_queue_lets_its_cells_exit_then_terminates_then_kills_them(tmp_path):
    ready = tmp_path / "ready"
    exits = "import time; time.sleep(0.3)"                                      # e.g. got the group's signal already
    waits = "import time; time.sleep(60)"                                       # never signalled: SIGTERM
    ignores = (f"import pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
               f"pathlib.Path({str(ready)!r}).touch(); time.sleep(60)")        # SIGTERM ignored: SIGKILL
    processes = [subprocess.Popen([sys.executable, "-c", code]) for code in (exits, waits, ignores)]
    while not ready.exists():
        time.sleep(0.05)
    stop_processes(processes, grace_s=3.0, patience_s=1.0)
    assert [p.returncode for p in processes] == [0, -signal.SIGTERM, -signal.SIGKILL]


@pytest.mark.integration
@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, -signal.SIGINT)])
def test_a_signalled_queue_starts_no_further_cell_and_waits_for_its_cells_to_exit(tmp_path, signum, exit_code):
    """A signal to the process group (`kill -- -PGID`, Ctrl-C) while the queue's one lane runs cell a: a exits on it,
    the queue exits as the signal says, after a ended (not after its grace period), and b never starts."""
    log = tmp_path / "log"
    cell = (f"import pathlib, sys, time; pathlib.Path({str(log)!r}).open('a').write(sys.argv[1] + '\\n'); "
            f"time.sleep(60)")
    queue = (f"import sys\nfrom experiments.grid import Cell\nfrom experiments.running import run_queue\n"
             f"run_queue({{Cell('math', m, 'k', None, 0): [sys.executable, '-c', {cell!r}, m] for m in 'ab'}}, 1)\n")
    driver = subprocess.Popen([sys.executable, "-c", queue], cwd=REPO, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    end = time.monotonic() + 60
    while not (log.exists() and log.read_text()) and time.monotonic() < end:
        time.sleep(0.05)
    started = time.monotonic()
    os.killpg(driver.pid, signum)
    out, _ = driver.communicate(timeout=30)
    assert driver.returncode == exit_code, out
    assert time.monotonic() - started < 20 and log.read_text() == "a\n", out
    assert "start b" not in out and "[reproduce] start a" in out


@pytest.mark.parametrize("experiment", ["knobs", "ablations"])
def test_a_cells_own_command_names_the_folder_its_methods_sweep_gives_it(experiment, tmp_path):
    """Hydra names a run's folder from its overrides (override_dirname); the queue runs each cell by its own command,
    so the folders must be the sweep's, value formatting (2.5e-4 -> 0.00025) and variants' overrides included."""
    from hydra._internal.config_loader_impl import get_overrides_dirname
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()

    def folders(command):
        overrides = [a for a in command[command.index("folora.run") + 2:] if not a.startswith(("hydra.", "hydra/"))]
        excluded = next(a for a in command if a.startswith("hydra.job.config.override_dirname.exclude_keys="))
        excluded = excluded.split("=", 1)[1].strip("[]").split(",")
        jobs = BasicSweeper.split_arguments(parser.parse_overrides(overrides), None)[0]
        return {get_overrides_dirname(parser.parse_overrides(job), excluded, ",", "=") for job in jobs}

    spec = load_experiment(experiment, [])
    grid = cells(spec)
    by_sweep = [folders(c) for c in sweep_commands(spec, tmp_path, "basic", ["threads=1"], grid)]
    by_cell = [folders(c) for c in cell_commands(spec, tmp_path, ["threads=1"], grid).values()]
    assert all(len(names) == 1 for names in by_cell) and len(set.union(*by_cell)) == len(grid)
    assert set.union(*by_cell) == set.union(*by_sweep)


def test_the_queue_resumes_interrupted_cells_first_then_goes_seed_by_seed(tmp_path, monkeypatch):
    grid = [Cell("math", method, "k", value, seed) for method in ("a", "b") for value in (1.0, 2.0) for seed in (0, 1)]
    done = pd.DataFrame({"task": "math", "method": ["a", "b", "b"], "seed": [0, 1, 0], "knob_value": [1.0, 2.0, 2.0],
                         "status": ["completed", "running", "failed"], "variant": None})
    monkeypatch.setattr(progress, "collect", lambda folders: done)
    order = [(c.method, c.value, c.seed) for c in progress.cells_to_run(grid, tmp_path)]
    assert order == [("b", 2.0, 0), ("b", 2.0, 1),                           # left behind: failed, interrupted
                     ("a", 2.0, 0), ("b", 1.0, 0),                           # then seed 0 of every method and value
                     ("a", 1.0, 1), ("a", 2.0, 1), ("b", 1.0, 1)]


def test_grids_pick_up_every_method_and_embedded_task_from_the_config_groups():
    spec = load_experiment("main", [])
    grid = cells(spec)
    methods = {p.stem for p in (CONF / "method").glob("*.yaml")} - set(spec.grid.exclude_methods)
    embedded = {p.stem for p in (CONF / "task").glob("*.yaml") if OmegaConf.load(p).get("source") == "embedded"}
    assert {c.method for c in grid} == methods and {c.task for c in grid} == embedded
    assert len(grid) == len(methods) * len(embedded) * 3


def test_knob_values_become_overrides_of_each_methods_knob(tmp_path):
    spec = load_experiment("knobs", [])
    commands = sweep_commands(spec, tmp_path, "basic")
    by_method = {next(a for a in c if a.startswith("method=")).split("=")[1]: c for c in commands}
    assert "method.kappa=0.0,1.0,4.0,16.0" in by_method["folora"]
    assert "train.lr=0.00025,0.0005,0.001,0.002,0.004" in by_method["lora"]
    assert all("skip_completed=true" in c and "train.on_code_change=restart" in c for c in commands)
    assert not any(a.startswith("reuse_from=") for c in commands for a in c)


def test_sweeps_adopt_identical_runs_from_the_given_folders_without_naming_cells_by_them(tmp_path):
    commands = sweep_commands(load_experiment("knobs", []), tmp_path, "basic", reuse_from=[tmp_path / "results"])
    for command in commands:
        assert f"reuse_from=['{tmp_path / 'results'}']" in command
        excluded = next(a for a in command if a.startswith("hydra.job.config.override_dirname.exclude_keys="))
        assert "reuse_from" in excluded.split("=", 1)[1].strip("[]").split(",")


def test_unknown_names_stop_with_a_message():
    with pytest.raises(ExperimentError, match="no experiment 'nope'"):
        load_experiment("nope", [])
    with pytest.raises(ExperimentError, match="Unknown method"):
        cells(load_experiment("smoke", ["grid.methods={nope: null}"]))
    with pytest.raises(ExperimentError, match="Unknown task"):
        cells(load_experiment("smoke", ["grid.tasks=[nope]"]))
    with pytest.raises(ExperimentError, match=r"Unknown method\(s\) \['nope'\] in exclude_methods"):
        cells(load_experiment("smoke", ["grid.exclude_methods=[nope]"]))


def test_a_trade_off_grid_over_all_methods_names_knob_values_for_each():
    """`methods: all` with `knob_values`: every method not excluded runs each of its values; one without values stops
    the grid by name, so a new method config cannot join a trade-off grid as a single default point."""
    methods = sorted(path.stem for path in (CONF / "method").glob("*.yaml"))
    spec = load_experiment("knobs", [])
    runs = cells(spec)
    expected = {m: list(spec.grid.knob_values[m]) for m in methods if m not in spec.grid.exclude_methods}
    assert {m: sorted({c.value for c in runs if c.method == m}) for m in expected} == {
        m: sorted(v) for m, v in expected.items()}
    with pytest.raises(ExperimentError, match=r"grid.knob_values gives no values for \['dora'\]"):
        cells(load_experiment("knobs", ["grid.knob_values.dora=null"]))


@pytest.mark.parametrize("launcher", ["joblib", "slurm"])
def test_launcher_configs_compose(launcher):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    target = cfg.hydra.launcher._target_
    assert {"joblib": "JoblibLauncher", "slurm": "SlurmLauncher"}[launcher] in target
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1
        assert cfg.hydra.launcher.max_num_timeout > 0   # requeued on timeout or preemption; the run resumes


def test_summary_is_mean_with_a_t_interval_over_seeds_and_keeps_failed_groups():
    frame = pd.DataFrame({"task": ["math"] * 5, "method": ["a", "a", "a", "a", "b"], "knob": ["k"] * 5,
                          "knob_value": [1.0, 1.0, 1.0, 1.0, 2.0], "seed": [0, 1, 2, 3, 0],
                          "status": ["completed", "completed", "completed", "failed", "failed"],
                          "target_gain": [0.1, 0.3, 0.2, None, None], "forgetting": [0.01, 0.03, 0.02, None, None]})
    summary = summarize(frame, ["task", "method", "knob_value"], ["target_gain", "forgetting"]).set_index("method")
    assert summary.loc["a", "runs"] == 3 and summary.loc["a", "failed"] == 1
    assert summary.loc["a", "interval"] == "seeds+documents"   # no document intervals here: the t interval over seeds
    assert summary.loc["a", "target_gain_mean"] == pytest.approx(0.2)
    reference = stats.t.interval(0.95, 2, loc=0.2, scale=stats.sem([0.1, 0.3, 0.2]))
    assert (summary.loc["a", "target_gain_low"], summary.loc["a", "target_gain_high"]) == pytest.approx(reference)
    assert summary.loc["b", "runs"] == 0 and pd.isna(summary.loc["b", "target_gain_mean"])


def test_summary_rows_follow_the_knob_values_numeric_order():
    values = [16.0, 0.0, 4.0, 1.0, 0.25]
    frame = pd.DataFrame({"task": "math", "method": "folora", "knob": "method.kappa", "knob_value": values,
                          "seed": 0, "status": "completed", "target_gain": 0.1})
    summary = summarize(frame, ["task", "method", "knob_value"], ["target_gain"])
    assert list(summary.knob_value) == ["0", "0.25", "1", "4", "16"]


def test_forgetting_at_matched_gain_interpolates_along_both_curves():
    """LoRA's curve: gain 0.1 -> forgetting 0.02, gain 0.3 -> 0.06 (3 seeds each); the method at gain 0.2 forgets
    0.01: at matched gain LoRA forgets 0.04, the difference is -0.03."""
    rows = []
    for seed, noise in enumerate([-0.001, 0.0, 0.001]):
        rows += [{"task": "math", "method": "lora", "knob_value": 1e-4, "seed": seed, "status": "completed",
                  "target_gain": 0.1 + noise, "forgetting": 0.02 + noise},
                 {"task": "math", "method": "lora", "knob_value": 1e-3, "seed": seed, "status": "completed",
                  "target_gain": 0.3 + noise, "forgetting": 0.06 + noise},
                 {"task": "math", "method": "other", "knob_value": 1.0, "seed": seed, "status": "completed",
                  "target_gain": 0.2 + noise, "forgetting": 0.01 + noise}]
    matched = matched_comparison(pd.DataFrame(rows)).iloc[0]
    assert matched.method == "other" and matched.matched_at == pytest.approx(0.2)
    assert matched.difference == pytest.approx(-0.03) and matched.high < 0 and matched.significant
    apart = pd.DataFrame(rows).assign(target_gain=lambda f: f.target_gain.where(f.method == "lora", 0.9))
    assert "no overlap" in matched_comparison(apart).iloc[0].note


def test_matched_gain_compares_against_the_references_best_settings_not_a_beaten_one():
    """LoRA at a too-high rate learns less (0.15) and forgets far more (0.20) than at 1e-3 (0.3, 0.06): matching the
    method's 0.2 between the cells sorted by gain would put LoRA at 0.153 and the method 0.143 ahead; along LoRA's
    best settings LoRA forgets 0.04 there and the method is 0.03 ahead."""
    rows = []
    for seed, noise in enumerate([-0.001, 0.0, 0.001]):
        for method, knob, gain, forgetting in [("lora", 1e-4, 0.1, 0.02), ("lora", 1e-3, 0.3, 0.06),
                                               ("lora", 1e-2, 0.15, 0.20), ("other", 1.0, 0.2, 0.01)]:
            rows.append({"task": "math", "method": method, "knob_value": knob, "seed": seed, "status": "completed",
                         "target_gain": gain + noise, "forgetting": forgetting + noise})
    matched = matched_comparison(pd.DataFrame(rows)).iloc[0]
    assert matched.forgetting_reference == pytest.approx(0.04) and matched.difference == pytest.approx(-0.03)


def test_the_matched_interval_is_a_t_interval_not_a_narrow_percentile_one():
    """One cell per side at the same gain: the difference of two 3-seed means, whose 95% interval is the mean
    difference ± t(2) × √(s₁²/3 + s₂²/3) (t at the fewest seeds' n − 1, conservative against Welch's df). A
    percentile bootstrap would be about 2.7 times narrower."""
    mine, theirs = [0.010, 0.014, 0.021], [0.030, 0.026, 0.041]
    rows = [{"task": "math", "method": method, "knob_value": 1.0, "seed": seed, "status": "completed",
             "target_gain": 0.2, "forgetting": value}
            for method, values in (("other", mine), ("lora", theirs)) for seed, value in enumerate(values)]
    matched = matched_comparison(pd.DataFrame(rows), resamples=20000).iloc[0]
    half = stats.t.ppf(0.975, 2) * np.sqrt(np.var(mine, ddof=1) / 3 + np.var(theirs, ddof=1) / 3)
    assert matched.difference == pytest.approx(np.mean(mine) - np.mean(theirs))
    assert (matched.high - matched.low) / 2 == pytest.approx(half, rel=0.05)


def test_forgetting_is_matched_on_either_measure_of_learning():
    """The same curves matched on the validation loss decrease instead of the target gain: the method's one cell
    learned 0.5 nats/token, between LoRA's 0.4 (forgetting 0.02) and 0.6 (0.06), so LoRA forgets 0.04 there."""
    rows = []
    for seed, noise in enumerate([-0.001, 0.0, 0.001]):
        for method, knob, learned, forgetting in [("lora", 1e-4, 0.4, 0.02), ("lora", 1e-3, 0.6, 0.06),
                                                  ("other", 1.0, 0.5, 0.01)]:
            rows.append({"task": "math", "method": method, "knob_value": knob, "seed": seed, "status": "completed",
                         "target_gain": 0.1, "val_loss_decrease": learned + noise, "forgetting": forgetting + noise})
    matched = matched_comparison(pd.DataFrame(rows), x="val_loss_decrease").iloc[0]
    assert matched.learning == "val_loss_decrease" and matched.matched_at == pytest.approx(0.5)
    assert matched.difference == pytest.approx(-0.03) and matched.significant
    assert matched_comparison(pd.DataFrame(rows).drop(columns="val_loss_decrease"), x="val_loss_decrease").empty


def test_pareto_front_matches_brute_force():
    import random

    rng = random.Random(0)
    points = [(rng.random(), rng.random()) for _ in range(60)]
    front = pareto_front(points)
    for p in points:
        dominated = any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in points)
        assert (p in front) != dominated
    assert front == sorted(front)


def test_wandb_summary_run_logs_the_table_offline(tmp_path):
    from analysis.stats import summarize as _summarize
    from analysis.wandb_summary import log_summary

    frame = pd.DataFrame({"task": ["math"], "method": ["lora"], "knob": ["train.lr"], "knob_value": [5e-4], "seed": [0],
                          "status": ["completed"], "target_gain": [0.1], "forgetting": [0.02], "kl_to_base": [0.2]})
    summary = _summarize(frame, ["task", "method", "knob_value"], ["target_gain", "forgetting", "kl_to_base"])
    folder = log_summary("unit", {"summary": summary}, tmp_path, project="folora", entity=None, mode="offline")
    assert list((tmp_path / "wandb").glob("offline-run-*/*.wandb")), folder


def test_ablation_variants_are_override_sets_run_at_every_seed(tmp_path):
    spec = load_experiment("ablations", [])
    grid = cells(spec)
    variants = dict(spec.grid.variants)
    assert {c.variant for c in grid} == set(variants) and {c.method for c in grid} == {"folora"}
    assert len(grid) == len(variants) * 3
    commands = {next(a for a in c if a.startswith("variant=")).split("=")[1]: c
                for c in sweep_commands(spec, tmp_path, "basic")}
    assert set(commands) == set(variants)
    assert "method.gate_b=false" in commands["a_only"] and "method.gate_b=false" not in commands["full"]
    # what a run of the variant composes: the label and the switch
    overrides = [a for a in commands["a_only"] if a.startswith(("method=", "variant=", "method."))]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    assert cfg.variant == "a_only" and cfg.method.gate_b is False and cfg.method.gate_a is True


def test_a_misspelt_variant_stops_before_anything_runs():
    with pytest.raises(ExperimentError, match="Variant 'typo' of method 'folora' does not compose"):
        cells(load_experiment("ablations", ["grid.variants={full: [], typo: [method.gate_c=false]}"]))
    with pytest.raises(ExperimentError, match="key=value overrides"):
        cells(load_experiment("ablations", ["grid.variants={full: method.gate_b}"]))
    with pytest.raises(ExperimentError, match="reads as text"):   # `variant=true` would be a bool, not a label
        cells(load_experiment("ablations", ["grid.variants={'true': [method.gate_b=false]}"]))
    with pytest.raises(ExperimentError, match="would become a sweep"):
        cells(load_experiment("ablations", ["grid.variants={gates: ['method.gate=hard,sigmoid']}"]))


def test_a_grid_without_variants_keeps_its_folder_and_editing_a_variant_moves_it(tmp_path):
    from experiments.grid import sweep_dir

    assert sweep_dir(load_experiment("knobs", []), tmp_path).name == "smollm2-135m_embedded_df30e1aa"
    before = sweep_dir(load_experiment("ablations", []), tmp_path)
    edited = sweep_dir(load_experiment("ablations", ["grid.variants.proxy_16=[method.proxy.num_sequences=8]"]), tmp_path)
    assert before != edited


def test_variants_are_compared_with_the_reference_paired_by_seed():
    rows = []
    for seed, (full, hard) in enumerate([(0.010, 0.014), (0.020, 0.025), (0.015, 0.018)]):
        rows += [{"task": "math", "method": "folora", "knob_value": 1.0, "seed": seed, "status": "completed",
                  "variant": variant, "forgetting": value, "target_gain": 0.1}
                 for variant, value in (("full", full), ("gate_hard", hard))]
    rows.append({"task": "math", "method": "folora", "knob_value": 1.0, "seed": 3, "status": "completed",
                 "variant": "gate_hard", "forgetting": 0.5, "target_gain": 0.1})   # no reference at seed 3: unpaired
    comparison = variant_comparison(pd.DataFrame(rows), "full", ["forgetting", "target_gain"]).iloc[0]
    differences = [0.004, 0.005, 0.003]
    reference = stats.t.interval(0.95, 2, loc=0.004, scale=stats.sem(differences))
    assert comparison.variant == "gate_hard" and comparison.seeds == "0,1,2"
    assert comparison.forgetting_difference == pytest.approx(0.004)
    assert (comparison.forgetting_low, comparison.forgetting_high) == pytest.approx(reference)
    assert comparison.target_gain_difference == pytest.approx(0.0)


def test_a_mean_over_seeds_counts_the_documents_they_share():
    """Seeds that agree exactly still carry the eval set's sampling noise: the interval is the runs' document
    interval, not zero width; without document intervals it is the t interval over seeds; otherwise the two variance
    parts add (Welch–Satterthwaite degrees of freedom), never narrower than the seeds-only interval."""
    from analysis.stats import combined_interval

    z = stats.norm.ppf(0.975)
    same = pd.Series([0.0208, 0.0208])
    assert combined_interval(same, pd.Series([0.02, 0.02])) == pytest.approx((0.0008, 0.0408))
    values = pd.Series([0.10, 0.30, 0.20])
    assert combined_interval(values, pd.Series(dtype=float)) == pytest.approx(
        stats.t.interval(0.95, 2, loc=0.2, scale=stats.sem(values)))
    seed_part, document_part = values.var() / 3, (0.5 / z) ** 2
    df = (seed_part + document_part) ** 2 / (seed_part**2 / 2)
    half = stats.t.ppf(0.975, df) * (seed_part + document_part) ** 0.5
    assert combined_interval(values, pd.Series([0.5, 0.5, 0.5])) == pytest.approx((0.2 - half, 0.2 + half))
    seeds_only = stats.t.interval(0.95, 2, loc=0.2, scale=stats.sem(values))
    assert combined_interval(values, pd.Series([0.01] * 3)) == pytest.approx(seeds_only)   # the wider of the parts
    frame = pd.DataFrame({"task": ["math"] * 2, "method": ["a"] * 2, "knob": ["k"] * 2, "knob_value": [1.0] * 2,
                          "seed": [0, 1], "status": ["completed"] * 2, "target_gain": [0.0208] * 2,
                          "target_gain_low": [0.0008] * 2, "target_gain_high": [0.0408] * 2})
    row = summarize(frame, ["task", "method", "knob_value"], ["target_gain"]).iloc[0]
    assert row.interval == "seeds+documents" and row.target_gain_low == pytest.approx(0.0008)
    assert row.target_gain_low_seeds == row.target_gain_high_seeds == pytest.approx(0.0208)


def test_default_knob_values_come_from_the_configs_and_the_grids_fixed_settings():
    from experiments.grid import default_knob_values

    spec = load_experiment("knobs", [])
    assert default_knob_values(spec, ["lora", "folora", "lalora"]) == {"lora": 2e-3, "folora": 1.0, "lalora": 1.0}
    moved = load_experiment("knobs", ["grid.overrides=[train.steps=40,train.lr=1e-3]"])
    assert default_knob_values(moved, ["lora"]) == {"lora": 1e-3}


def test_methods_are_compared_at_their_defaults_paired_by_seed():
    """Seed s shifts both methods alike (the shared data order); the per-seed differences are -0.010, -0.012,
    -0.008: their mean and t interval, not the unpaired one. Cells at other knob values take no part."""
    rows = []
    for seed, shift in enumerate([0.0, 0.02, -0.02]):
        rows += [{"task": "math", "method": "lora", "knob_value": 2e-3, "seed": seed, "forgetting": 0.03 + shift},
                 {"task": "math", "method": "lora", "knob_value": 1e-3, "seed": seed, "forgetting": 0.5},
                 {"task": "math", "method": "other", "knob_value": 1.0,
                  "seed": seed, "forgetting": 0.03 + shift + [-0.010, -0.012, -0.008][seed]},
                 {"task": "math", "method": "other", "knob_value": 4.0, "seed": seed, "forgetting": 0.9}]
    frame = pd.DataFrame(rows).assign(status="completed")
    row = method_comparison(frame, "lora", {"lora": 2e-3, "other": 1.0}, ["forgetting"]).iloc[0]
    assert row.method == "other" and row.knob_value == "1" and row.reference_knob_value == "0.002"
    assert row.seeds == "0,1,2" and row.forgetting_difference == pytest.approx(-0.010)
    reference = stats.t.interval(0.95, 2, loc=-0.010, scale=stats.sem([-0.010, -0.012, -0.008]))
    assert (row.forgetting_low, row.forgetting_high) == pytest.approx(reference)
    assert method_comparison(frame, "lora", {"lora": 4e-3, "other": 1.0}, ["forgetting"]).empty


def test_a_seed_counts_once_in_a_table_cell():
    """Two completed runs of one seed (a copied run folder) are one observation, as in the paired comparisons: three
    rows of seeds 0, 0, 1 give the mean and t interval of two values, not three."""
    frame = pd.DataFrame({"task": "math", "method": "lora", "knob": "train.lr", "knob_value": 2e-3, "seed": [0, 0, 1],
                          "status": "completed", "forgetting": [0.01, 0.01, 0.03]})
    row = summarize(frame, ["task", "method", "knob_value"], ["forgetting"]).iloc[0]
    assert row.runs == 2 and row.forgetting_mean == pytest.approx(0.02)
    assert (row.forgetting_low, row.forgetting_high) == pytest.approx(
        stats.t.interval(0.95, 1, loc=0.02, scale=stats.sem([0.01, 0.03])))


def test_a_single_change_is_marked_by_the_run_it_came_from():
    from analysis.stats import change_excludes_zero

    runs = pd.DataFrame({"change:x": [np.nan, 0.3], "change_low:x": [-1.0, 0.1], "change_high:x": [1.0, 0.5]})
    changes = pd.to_numeric(runs["change:x"]).dropna()
    assert change_excludes_zero(changes, runs, "x")


def test_two_single_settings_are_not_matched_along_a_curve():
    """A grid of defaults has one point per method: at different gains nothing lies between them to interpolate, so
    the matched comparison says so instead of reporting two points that happen not to overlap."""
    frame = pd.DataFrame([{"task": "math", "method": method, "knob_value": value, "seed": seed, "status": "completed",
                           "target_gain": gain + 0.01 * seed, "forgetting": 0.02}
                          for seed in range(3) for method, value, gain in (("lora", 2e-3, 0.1), ("other", 1.0, 0.2))])
    row = matched_comparison(frame, reference="lora").iloc[0]
    assert math.isnan(row.matched_at) and row.note.startswith("one setting on each side")


def test_the_focus_method_is_compared_with_every_other_method_from_its_own_side():
    """`focus − other` per seed for each other method at its default: the sign says whether the focus method forgets
    less; a knob value off the default takes no part, on either side."""
    rows = []
    for seed, shift in enumerate([0.0, 0.02, -0.02]):
        for method, value, forgetting in (("folora", 1.0, 0.01), ("folora", 4.0, 0.9), ("lora", 2e-3, 0.03),
                                          ("pissa", "top", 0.2)):
            rows.append({"task": "math", "method": method, "knob_value": value, "seed": seed,
                         "forgetting": forgetting + shift + (0.001 * seed if method == "pissa" else 0.0)})
    frame = pd.DataFrame(rows).assign(status="completed")
    defaults = {"folora": 1.0, "lora": 2e-3, "pissa": "top"}
    compared = focus_comparison(frame, "folora", defaults, ["forgetting"])
    assert list(compared.reference) == ["lora", "pissa"] and set(compared.method) == {"folora"}
    assert compared.forgetting_difference.tolist() == pytest.approx([-0.02, -0.191])
    pissa = stats.t.interval(0.95, 2, loc=-0.191, scale=stats.sem([-0.19, -0.191, -0.192]))
    assert (compared.iloc[1].forgetting_low, compared.iloc[1].forgetting_high) == pytest.approx(pissa)
    assert focus_comparison(frame[frame.method != "folora"], "folora", defaults, ["forgetting"]).empty


def test_an_experiment_naming_an_unknown_method_to_compare_with_stops_before_it_runs():
    with pytest.raises(ExperimentError, match=r"render.focus: 'fololra' is not a method; choose one of \[.*'folora'"):
        load_experiment("main", ["render.focus=fololra"])


def test_a_paired_difference_counts_the_documents_noise_of_both_runs():
    """Seeds that agree closely give a narrow t interval; each run's own interval over documents (half width 0.004
    and 0.003) widens it to the tables' combined interval with the difference's document half width 0.005."""
    from analysis.stats import combined_interval

    rows = []
    for seed, difference in enumerate([-0.010, -0.011, -0.009]):
        rows += [{"task": "math", "method": "lora", "knob_value": 2e-3, "seed": seed, "forgetting": 0.03,
                  "forgetting_low": 0.026, "forgetting_high": 0.034},
                 {"task": "math", "method": "other", "knob_value": 1.0, "seed": seed, "forgetting": 0.03 + difference,
                  "forgetting_low": 0.027 + difference, "forgetting_high": 0.033 + difference}]
    frame = pd.DataFrame(rows).assign(status="completed")
    row = method_comparison(frame, "lora", {"lora": 2e-3, "other": 1.0}, ["forgetting"]).iloc[0]
    expected = combined_interval(pd.Series([-0.010, -0.011, -0.009]), pd.Series([0.005] * 3))
    assert (row.forgetting_low, row.forgetting_high) == pytest.approx(expected)
    seeds_only = stats.t.interval(0.95, 2, loc=-0.010, scale=stats.sem([-0.010, -0.011, -0.009]))
    assert row.forgetting_high - row.forgetting_low > seeds_only[1] - seeds_only[0]


def test_a_method_is_compared_only_at_its_known_default():
    """A method swept around its default (no run at it) gets a row that says so; a method whose default is unknown is
    left out instead of being compared at whichever knob value each seed happens to have."""
    rows = [{"task": "math", "method": method, "knob_value": value, "seed": seed, "forgetting": 0.01 * seed}
            for seed in range(3) for method, value in (("lora", 2e-3), ("slice", 0.25), ("slice", 0.75),
                                                       ("unknown", 0.1), ("unknown", 10.0))]
    frame = pd.DataFrame(rows).assign(status="completed")
    compared = method_comparison(frame, "lora", {"lora": 2e-3, "slice": "middle"}, ["forgetting"])
    assert list(compared.method) == ["slice"]
    assert compared.iloc[0].note == "no completed run at its default" and compared.iloc[0].knob_value == "middle"


def test_a_completed_cell_without_a_metric_reads_not_recorded():
    from analysis.tables import display_table

    frame = pd.DataFrame({"task": "math", "method": "lora", "knob": "train.lr", "knob_value": [2e-3, 2e-3],
                          "seed": [0, 1], "status": "completed", "target_gain": [0.1, 0.2],
                          "val_loss_decrease": [None, None]})
    metrics = ["target_gain", "val_loss_decrease"]
    shown = display_table(summarize(frame, ["task", "method", "knob_value"], metrics), ["task", "method", "knob_value"],
                          metrics)
    assert shown.iloc[0].val_loss_decrease == "not recorded" and shown.iloc[0].target_gain.startswith("+0.15")


def test_the_durations_grid_plots_learning_and_forgetting_against_training_steps(tmp_path):
    """experiments/durations.yaml rendered from its cells: durations.png (x: steps) beside the trade-off plot, whose
    curves join each method's durations in order of steps; the table has a row per method and duration."""
    from analysis.render import render_experiment
    from experiments.grid import load_experiment

    rows = [{"task": "math", "method": method, "knob": "train.lr", "knob_value": 2e-3, "seed": seed, "steps": steps,
             "variant": f"steps_{steps}", "status": "completed", "numerics": 2, "kind": "run",
             "target_gain": 0.1 * scale + 0.01 * seed, "val_loss_decrease": 0.5 * scale, "forgetting": 0.01 * scale * k,
             "kl_to_base": 0.2 * scale * k, "preservation": -0.01 * scale}
            for method, k in (("lora", 1.0), ("full", 2.0)) for seed in range(3)
            for steps, scale in ((40, 1.0), (160, 1.5), (320, 1.8))]
    provenance = {"cells": {"total": 18, "completed": 18}, "not_completed": [], "command": "make reproduce-table "
                  "TABLE=durations", "runs": "results/durations/runs"}
    written = render_experiment(pd.DataFrame(rows), load_experiment("durations", []), tmp_path, provenance)
    assert (tmp_path / "durations.png").is_file() and written["durations"]
    assert (tmp_path / "tradeoff.png").is_file() and "![durations](durations.png)" in (tmp_path / "README.md").read_text()
    table = written["summary"]
    assert len(table) == 6 and sorted(table.steps.unique()) == [40, 160, 320]
    assert table.set_index(["method", "steps"]).loc[("full", 320), "forgetting_mean"] == pytest.approx(0.036)
