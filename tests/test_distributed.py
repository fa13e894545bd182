"""A run on two ranks (torchrun, gloo, one thread each) is the run on one process: every method's calibration and
training, the entry point's loss curve and final outcomes; a stop signal on one rank stops both, and the resumed
two-rank run equals the uninterrupted one. Bad distributed input stops before training.

Equal means: the same data, the same global batches, the same statistics (each rank summing its share of the
calibration's batches) and, in fp32, loss curves within a relative 1e-5 (measured: 1.4e-7 over 20 steps). Not bit
for bit, because a rank's half-batch weight gradient sums its tokens apart from the other half's; under bf16
autocast each half's partial products are rounded to bf16 as well, and the curves agree to about 3e-5
(docs/distributed.md). A resumed two-rank run repeats the uninterrupted one exactly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import METHODS, REPO, TINY, read_results, run_folora

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, ranks: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", f"--master_port={free_port()}",
            *args]


ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_every_method_calibrates_and_trains_the_same_on_two_ranks(tmp_path):
    from tests.distributed_train import train_every_method

    out = tmp_path / "two.json"
    # a cache folder each: both sample their proxies (rank 0 for the two), so their forward passes compare
    process = subprocess.run(torchrun(str(REPO / "tests" / "distributed_train.py"), str(out), str(tmp_path / "two"),
                                      ",".join(METHODS)),
                             cwd=REPO, capture_output=True, text=True, timeout=900, env=ONE_THREAD)
    assert process.returncode == 0, process.stderr[-4000:]
    two = json.loads(out.read_text())
    assert two["world_size"] == 2
    one = train_every_method(list(METHODS), tmp_path / "one")
    for name in METHODS:
        a, b = one[name], two["methods"][name]
        assert b["tokens"] == a["tokens"] and b["calibration_keys"] == a["calibration_keys"], name
        assert b["calibration_abs_sums"].keys() == a["calibration_abs_sums"].keys(), name
        # the statistics reduced across ranks: covariances (and their token counts) and LaLoRA's curvature
        assert [c[1] for c in b["covariances"]] == [c[1] for c in a["covariances"]], name
        for one_pass, two_pass in zip(a["covariances"], b["covariances"], strict=True):
            assert two_pass[0] == pytest.approx(one_pass[0], rel=1e-5), name
        (one_stats, one_spectra), (two_stats, two_spectra) = (_split(r["calibration_abs_sums"]) for r in (a, b))
        assert two_stats == pytest.approx(one_stats, rel=1e-5), name
        assert two_spectra == pytest.approx(one_spectra, rel=5e-3), name     # what is decomposed from them
        assert b["losses"] == pytest.approx(a["losses"], rel=1e-5), name
        # CorDA's adapter starts from its decomposition, which agrees to the conditioning above (measured 1.5e-5)
        assert b["weights_abs_sum"] == pytest.approx(a["weights_abs_sum"], rel=1e-4), name
    # a statistics pass is shared: each rank runs fewer of the calibration's forward passes than one process does
    for name in ("folora", "lalora", "corda"):
        (alone,), ranks = one[name]["calibration_forwards"], two["methods"][name]["calibration_forwards"]
        assert max(ranks) < alone, (name, ranks, alone)
        assert one[name]["covariances"] or name == "lalora", name


def _split(sums: dict[str, float]) -> tuple[dict, dict]:
    """(a calibration's statistics, its decompositions: FoLoRA's generalized eigenbases, CorDA's SVDs). The tiny
    model's proxy is fewer tokens than some layers are wide: directions held only by FoLoRA's damping ε = 1e-4, or
    singular values near zero, where an eigenvector's condition is about 1/ε. There the last-bit difference of a
    covariance summed in another order (3e-8 relative) moves the vectors by up to 2e-3 (docs/distributed.md)."""
    decomposed = {k for k in sums if k.startswith(("/bases/", "/eigens/"))}
    return {k: v for k, v in sums.items() if k not in decomposed}, {k: v for k, v in sums.items() if k in decomposed}


def test_methods_that_shard_train_the_same_under_fsdp_on_two_ranks(tmp_path):
    """FSDP2 (`train.sharding=fsdp`): each decoder block's weights, gradients and optimizer state split across the
    two ranks, for full fine-tuning and every PEFT adapter; FoLoRA and LaLoRA refuse it (tested below)."""
    from folora.methods.build import build_method
    from tests.conftest import composed
    from tests.distributed_train import train_every_method

    methods = [m for m in METHODS if build_method(composed(f"method={m}").method).sharding_blocker() is None]
    assert {"full", "lora", "dora", "corda", "pissa"} <= set(methods) and "folora" not in methods
    out = tmp_path / "two.json"
    process = subprocess.run(torchrun(str(REPO / "tests" / "distributed_train.py"), str(out), str(tmp_path / "two"),
                                      ",".join(methods), "train.sharding=fsdp"),
                             cwd=REPO, capture_output=True, text=True, timeout=900, env=ONE_THREAD)
    assert process.returncode == 0, process.stderr[-4000:]
    two = json.loads(out.read_text())["methods"]
    one = train_every_method(methods, tmp_path / "one")
    for name in methods:
        assert two[name]["tokens"] == one[name]["tokens"], name
        assert two[name]["losses"] == pytest.approx(one[name]["losses"], rel=1e-5), name
        assert two[name]["weights_abs_sum"] == pytest.approx(one[name]["weights_abs_sum"], rel=1e-4), name


# --- through the entry point ----------------------------------------------------------------------------------------

RUN = [*TINY, "method=lora", "threads=1", "eval.every=0", "eval.limit=1", "train.steps=40", "train.checkpoint_every=0",
       "train.precision=fp32"]


def _discrete(record: dict) -> dict:
    """Every item's final score but the bits-per-byte ones (continuous: they agree to the last digits)."""
    return {i: m["final"]["value"] for i, m in record["metrics"].items() if record["roles"][i] != "forgetting"}


# LoRA with DDP; full fine-tuning sharded by FSDP2, its checkpoint gathered whole and its evaluation on the whole model
SHARDINGS = {"ddp": [*RUN], "fsdp": [*RUN, "method=full", "train.sharding=fsdp"]}


@pytest.fixture(scope="module", params=sorted(SHARDINGS))
def two_ranks(request, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("two") / "run"
    process = subprocess.run(torchrun("-m", "folora.run", f"hydra.run.dir={run_dir}", *SHARDINGS[request.param]),
                             cwd=REPO, capture_output=True, text=True, timeout=900, env=ONE_THREAD)
    assert process.returncode == 0, process.stderr[-4000:]
    return run_dir, SHARDINGS[request.param]


def test_the_entry_points_two_rank_run_is_the_one_process_run(two_ranks, tmp_path):
    from folora.evals import outcomes

    two_dir, run = two_ranks
    process = run_folora(tmp_path, *run, env={"OMP_NUM_THREADS": "1"})
    assert process.returncode == 0, process.stderr[-4000:]
    one, two = read_results(tmp_path), read_results(two_dir)
    assert two["status"] == "completed" and two["host"]["world_size"] == 2
    assert two["train"]["tokens"] == one["train"]["tokens"]
    assert two["train"]["loss_curve"] == pytest.approx(one["train"]["loss_curve"], rel=1e-5)
    assert _discrete(two) == _discrete(one)
    # per document: every discrete item's outcomes are the one-process run's, every bits-per-byte one within 1e-5
    one_docs, two_docs = (outcomes.load(d / "outcomes.json.gz")["final"] for d in (tmp_path, two_dir))
    assert one_docs.keys() == two_docs.keys()
    for item, docs in one_docs.items():
        assert two_docs[item]["doc_id"] == docs["doc_id"], item
        if one["roles"].get(item) == "forgetting":
            assert two_docs[item]["num"] == pytest.approx(docs["num"], rel=1e-5), item
        else:
            assert two_docs[item]["num"] == docs["num"], item


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_two_ranks_through_the_entry_point_has_the_one_process_outcomes(method, tmp_path):
    """Every method as a user runs it (`torchrun ... -m folora.run`), 10 steps in fp32: the two-rank run's loss curve
    within 1e-5 of one process's and its per-document outcomes the same (`pytest -m slow`: about 10 min)."""
    from folora.evals import outcomes

    run = [*TINY, f"method={method}", "threads=1", "eval.every=0", "eval.limit=2", "train.steps=10",
           "train.checkpoint_every=0", "train.precision=fp32", "calibration_cache=false"]
    two = subprocess.run(torchrun("-m", "folora.run", f"hydra.run.dir={tmp_path / 'two'}", *run), cwd=REPO,
                         capture_output=True, text=True, timeout=900, env=ONE_THREAD)
    assert two.returncode == 0, two.stderr[-4000:]
    one = run_folora(tmp_path / "one", *run, env={"OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr[-4000:]
    a, b = read_results(tmp_path / "one"), read_results(tmp_path / "two")
    assert b["train"]["loss_curve"] == pytest.approx(a["train"]["loss_curve"], rel=1e-5)
    one_docs, two_docs = (outcomes.load(tmp_path / d / "outcomes.json.gz")["final"] for d in ("one", "two"))
    for item, docs in one_docs.items():
        if a["roles"].get(item) == "forgetting":
            assert two_docs[item]["num"] == pytest.approx(docs["num"], rel=1e-5), item
        else:
            assert two_docs[item]["num"] == docs["num"], item


def _workers(launcher: subprocess.Popen) -> dict[int, int]:
    """{local rank: pid} of torchrun's worker processes."""
    children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    workers = {}
    for pid in children:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ranks = [e.split(b"=", 1)[1] for e in environ if e.startswith(b"LOCAL_RANK=")]
        if ranks:
            workers[int(ranks[0])] = int(pid)
    return workers


def test_a_stop_signal_on_one_rank_stops_both_and_the_resumed_run_is_the_uninterrupted_one(two_ranks, tmp_path):
    (uninterrupted_dir, run), run_dir, log = two_ranks, tmp_path / "run", tmp_path / "stderr.txt"
    command = torchrun("-m", "folora.run", f"hydra.run.dir={run_dir}", *run)
    with log.open("w") as stderr:
        launcher = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr, env=ONE_THREAD)
        deadline = time.time() + 300
        while "train:" not in log.read_text() or len(_workers(launcher)) < 2:   # training has started on both
            assert launcher.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        os.kill(_workers(launcher)[1], signal.SIGTERM)                        # rank 1 only
        assert launcher.wait(timeout=300) != 0
    record = read_results(run_dir)
    assert record["status"] == "interrupted", log.read_text()[-3000:]
    step = record["interrupted"]["checkpoint_step"]
    assert 0 < step < 40 and (run_dir / "checkpoint" / "state.pt").exists()
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env=ONE_THREAD)
    assert again.returncode == 0, again.stderr[-4000:]
    resumed, uninterrupted = read_results(run_dir), read_results(uninterrupted_dir)
    assert resumed["status"] == "completed" and resumed["resumed_from_step"] == step
    assert resumed["train"]["loss_curve"] == uninterrupted["train"]["loss_curve"]
    assert resumed["metrics"] == uninterrupted["metrics"]


def test_a_rank_that_dies_fails_the_run_with_a_message_and_no_complete_result(tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        launcher = subprocess.Popen(torchrun("-m", "folora.run", f"hydra.run.dir={run_dir}", *RUN), cwd=REPO,
                                    stdout=subprocess.DEVNULL, stderr=stderr, env=ONE_THREAD)
        deadline = time.time() + 300
        while "train:" not in log.read_text() or len(_workers(launcher)) < 2:
            assert launcher.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        os.kill(_workers(launcher)[1], signal.SIGKILL)                        # rank 1 dies: no handler runs
        assert launcher.wait(timeout=300) != 0                               # the group stops, not hangs
    record = read_results(run_dir)
    assert record is not None and record["status"] == "failed", log.read_text()[-3000:]
    assert record["error"]["type"] == "LostRanks"          # the cause, not the SIGTERM torchrun sent after it
    assert "folora: error: rank 0 of this 2-rank run lost the others" in log.read_text()
    assert not (run_dir / "adapter").exists()


def test_the_evaluation_sharding_measurement_gathers_every_document_on_rank_0(tmp_path):
    """scripts/eval_sharding.py, which docs/distributed.md quotes: rank 0 alone against every rank its share of the
    documents (lm-eval's data-parallel protocol), both gathered into the same documents on rank 0."""
    process = subprocess.run(torchrun("-m", "scripts.eval_sharding", "--out", str(tmp_path), "model=tiny-random",
                                      "eval.limit=3", "eval.kl.max_tokens=16"),
                             cwd=REPO, capture_output=True, text=True, timeout=600, env=ONE_THREAD)
    assert process.returncode == 0, process.stderr[-4000:]
    report = json.loads((tmp_path / "eval_sharding_tiny-random_2ranks.json").read_text())
    assert report["world_size"] == 2 and report["rank0_alone_s"] > 0 and report["sharded_s"] > 0
    assert report["items"] and all(row["same_documents"] and row["documents"] == 3 for row in report["items"].values())


# --- bad input ------------------------------------------------------------------------------------------------------


def test_ranks_started_with_different_configs_stop_before_training(tmp_path):
    process = subprocess.run(torchrun("-m", "folora.run", f"hydra.run.dir={tmp_path}", *TINY,
                                      "seed=${oc.env:LOCAL_RANK}"),
                             cwd=REPO, capture_output=True, text=True, timeout=600, env=ONE_THREAD)
    assert process.returncode != 0
    assert "folora: error: The ranks of this distributed run were started with different configs" in process.stderr
    assert read_results(tmp_path) is None


def test_a_world_size_that_does_not_divide_the_batch_and_a_method_that_cannot_yet_are_refused(monkeypatch):
    from folora.errors import FoloraError
    from folora.experiment.runner import check_distributed
    from folora.methods.build import build_method
    from folora.training import distributed
    from tests.conftest import composed

    monkeypatch.setattr(distributed, "_WORLD", distributed.World(rank=0, size=3))
    cfg = composed("model=tiny-random", "train.batch_size=8")
    with pytest.raises(FoloraError, match=r"train.batch_size=8 is the global batch.*3 does not divide it.*batch_size=9"):
        check_distributed(cfg, build_method(cfg.method))
    cfg = composed("model=tiny-random", "train.batch_size=9", "method.refresh_every=5")
    with pytest.raises(FoloraError, match=r"method=folora cannot run on 3 ranks yet: method.refresh_every=5"):
        check_distributed(cfg, build_method(cfg.method))
    for method in ("folora", "lalora"):   # sharded: their optimizer or penalty reads whole matrices
        cfg = composed("model=tiny-random", "train.batch_size=9", f"method={method}", "train.sharding=fsdp")
        with pytest.raises(FoloraError, match=rf"method={method} cannot train sharded \(train.sharding=fsdp\) yet: "
                                              rf".*use train.sharding=ddp"):
            check_distributed(cfg, build_method(cfg.method))
    cfg = composed("model=tiny-random", "train.batch_size=9", "method=full", "train.sharding=fsdp", "eval.every=5")
    with pytest.raises(FoloraError, match=r"eval.every=5 .* set eval.every=0 with train.sharding=fsdp"):
        check_distributed(cfg, build_method(cfg.method))


def test_the_world_comes_from_torchrun_or_slurm():
    from folora.training.distributed import World, from_environment, shard

    assert from_environment({}) == World()
    assert from_environment({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == World(1, 4, 1)
    assert from_environment({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}) == World(5, 8, 1)
    assert from_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == World()
    import torch

    batch = {"input_ids": torch.arange(8).reshape(4, 2), "labels": torch.arange(8).reshape(4, 2)}
    assert shard(batch, World(1, 2)).keys() == batch.keys()
    assert shard(batch, World(1, 2))["input_ids"].tolist() == [[4, 5], [6, 7]]
    assert shard(batch, World())["input_ids"] is batch["input_ids"]


def test_the_multi_gpu_slurm_launcher_composes_one_task_per_gpu():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm_multigpu", "hydra.launcher.nodes=2"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher.tasks_per_node == launcher.gpus_per_node == 8 and launcher.nodes == 2
    assert "submitit" in launcher._target_.lower()


@pytest.mark.gpu
@pytest.mark.parametrize("sharding", sorted(SHARDINGS))
def test_two_ranks_on_nccl_train_as_one_process(tmp_path, sharding):
    """The same equality on GPUs: NCCL, two ranks, one GPU each (run where two GPUs are present), with DDP (LoRA)
    and with FSDP2 (full fine-tuning)."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    run = [*SHARDINGS[sharding], "device=cuda"]
    two = subprocess.run(torchrun("-m", "folora.run", f"hydra.run.dir={tmp_path / 'two'}", *run), cwd=REPO,
                         capture_output=True, text=True, timeout=1800)
    assert two.returncode == 0, two.stderr[-4000:]
    one = run_folora(tmp_path / "one", *run)
    assert one.returncode == 0, one.stderr[-4000:]
    two, one = read_results(tmp_path / "two"), read_results(tmp_path / "one")
    assert two["train"]["loss_curve"] == pytest.approx(one["train"]["loss_curve"], rel=1e-3)
    assert _discrete(two) == _discrete(one)
