"""The one identity module (folora/records/identity.py) that keys every cache: each key follows the code that computes
its thing and nothing else. An edit to the scoring code computes the base evaluation anew while an edit to the
training loop does not; the proxy samples, the drafts and each method's calibration follow their own modules (and
the folora modules those import, at module level or inside functions).

The edits are made to a copy of the checkout's folora/ and baselines/ that the identity module reads in place of
the checkout (`REPO` pointed at it): the code that runs is the checkout's, the code that is digested is the copy's."""

from __future__ import annotations

import shutil

import pytest
import torch

from folora.records import identity
from tests.conftest import REPO, composed, proxy_config

CPU = torch.device("cpu")


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A copy of the checkout's source packages, digested instead of the checkout's own."""
    root = tmp_path / "checkout"
    for package in identity.LOCAL_PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(identity, "REPO", root)
    identity._closure.cache_clear()   # the closures name files: the copy's from now on
    yield root
    identity._closure.cache_clear()   # and the checkout's again once REPO is restored


def edit(path) -> None:
    """Change a source file the way an edit that computes nothing differently does: a comment at its end."""
    assert path.is_file(), path
    path.write_text(path.read_text() + "\n# edited\n")


@pytest.fixture(scope="module")
def tiny():
    from folora.models import load_model

    return load_model(composed("model=tiny-random").model)


# --- the identity itself -----------------------------------------------------------------------------------------

def test_a_key_names_its_kind_and_each_of_its_three_parts():
    base = identity.identity("thing", config={"a": 1}, data={"model": "m"}, code={"digest": "d"})
    assert base.key == identity.identity("thing", config={"a": 1}, data={"model": "m"}, code={"digest": "d"}).key
    assert len(base.key) == 24 and int(base.key, 16) >= 0
    others = [identity.identity("other", config={"a": 1}, data={"model": "m"}, code={"digest": "d"}),
              identity.identity("thing", config={"a": 2}, data={"model": "m"}, code={"digest": "d"}),
              identity.identity("thing", config={"a": 1}, data={"model": "n"}, code={"digest": "d"}),
              identity.identity("thing", config={"a": 1}, data={"model": "m"}, code={"digest": "e"})]
    assert len({base.key, *(other.key for other in others)}) == 5
    assert base.parts == {"config": {"a": 1}, "data": {"model": "m"}, "code": {"digest": "d"}}


def test_flat_configs_compare_key_by_key_and_execution_keys_are_left_out():
    flat = identity.flat_config({"train": {"lr": 0.002, "betas": [0.9, 0.999]}, "threads": 2, "logger": {"mode": "x"}})
    assert flat == {"train.lr": 0.002, "train.betas": "[0.9, 0.999]", "threads": 2, "logger.mode": "x"}
    assert identity.without_keys(flat, identity.EXECUTION_KEYS) == {"train.lr": 0.002, "train.betas": "[0.9, 0.999]"}
    saved = {"config": {"train.lr": 0.002}, "code": {"files": "a"}}
    config, code = identity.differences(saved, {"config": {"train.lr": 0.001, "model.dtype": "fp32"},
                                                 "code": {"files": "b"}})
    assert config == ["train.lr: 0.002 in the checkpoint, 0.001 now"]
    assert code == ["model.dtype: '<absent>' in the checkpoint, 'fp32' now", "code files: a in the checkpoint, b now"]


# --- (d) the closure follows every import ---------------------------------------------------------------------------

def test_the_code_digest_follows_imports_made_inside_functions():
    """lm-eval loads folora_utils by path; it imports the sandbox and the instruction checks inside its functions,
    and those score items too."""
    closure = identity._closure("folora.evals.lm_tasks.folora_utils")
    assert REPO / "folora/evals/sandbox.py" in closure
    assert REPO / "folora/tasks/instructions.py" in closure
    assert REPO / "folora/training/loop.py" not in closure


def test_the_code_digest_follows_relative_imports_and_package_inits(tmp_path, monkeypatch):
    package = tmp_path / "folora" / "sub"
    package.mkdir(parents=True)
    (tmp_path / "folora" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from .b import g\n    return g()\n")
    (package / "b.py").write_text("import os\n\ndef g():\n    return os.sep\n")
    monkeypatch.setattr(identity, "REPO", tmp_path)
    identity._closure.cache_clear()
    try:
        assert identity._closure("folora.sub.a") == {tmp_path / "folora/__init__.py", package / "__init__.py",
                                                     package / "a.py", package / "b.py"}
    finally:
        identity._closure.cache_clear()


# --- (a) the base evaluation's key ---------------------------------------------------------------------------------

def base_eval_key(eval_cfg) -> str:
    from folora.experiment.caches import base_eval_identity

    return base_eval_identity(eval_cfg, "tiny-random-fingerprint", "fp32").key


def test_the_base_eval_key_follows_the_scoring_code_and_nothing_else(checkout):
    eval_cfg = composed("model=tiny-random").eval
    key = base_eval_key(eval_cfg)
    for unrelated in ("folora/training/loop.py", "folora/fo_lora/method.py", "baselines/lora.py",
                      "folora/calibration/proxy.py"):
        edit(checkout / unrelated)
        assert base_eval_key(eval_cfg) == key, f"{unrelated} does not score anything"
    for scoring in ("folora/evals/outcomes.py", "folora/evals/suite.py", "folora/evals/lm_tasks/folora_capitals.yaml",
                    "folora/evals/lm_tasks/folora_utils.py", "folora/evals/sandbox.py", "folora/models.py"):
        edit(checkout / scoring)
        new = base_eval_key(eval_cfg)
        assert new != key, f"{scoring} scores items: an edit must compute the base evaluation anew"
        key = new


def test_the_base_eval_key_follows_the_suite_the_precision_and_the_model():
    from folora.experiment.caches import base_eval_identity

    eval_cfg = composed("model=tiny-random").eval
    key = base_eval_identity(eval_cfg, "m", "fp32").key
    assert base_eval_identity(composed("model=tiny-random", "eval.every=7").eval, "m", "fp32").key == key   # not scored
    others = [base_eval_identity(eval_cfg, "m", "bf16"), base_eval_identity(eval_cfg, "n", "fp32"),
              base_eval_identity(composed("model=tiny-random", "eval.limit=5").eval, "m", "fp32"),
              base_eval_identity(composed("model=tiny-random", "eval.batch_size=7").eval, "m", "fp32")]
    assert key not in {other.key for other in others}


# --- (b) the real cache, end to end ---------------------------------------------------------------------------------

def test_the_base_eval_cache_computes_again_after_a_scoring_code_edit(checkout, tiny, tmp_path, monkeypatch):
    from folora.experiment import caches

    monkeypatch.setattr(caches, "cache_dir", lambda: tmp_path / "cache")
    kept = ("capitals_zeroshot", "prose_bpb")   # a multiple-choice item and bits per byte: seconds on tiny-random
    every = composed("model=tiny-random").eval["items"]
    eval_cfg = composed("model=tiny-random", "eval.limit=2", *[f"~eval.items.{i}" for i in every if i not in kept]).eval
    assert sorted(eval_cfg["items"]) == sorted(kept)

    def evaluate():
        return caches.cached_base_eval(tiny.model, tiny.tokenizer, eval_cfg, tiny.fingerprint, "fp32")

    def entries():
        return sorted(p.name for p in (tmp_path / "cache" / "base_evals").glob("*.json"))

    computed, cached = evaluate()
    assert cached is False and set(computed.scores) == set(kept) and len(entries()) == 1
    again, cached = evaluate()
    assert cached is True and again.scores == computed.scores and again.outcomes == computed.outcomes
    edit(checkout / "folora/training/loop.py")
    assert evaluate()[1] is True and len(entries()) == 1          # not scoring code: still the cached entry
    edit(checkout / "folora/evals/outcomes.py")
    anew, cached = evaluate()
    assert cached is False and len(entries()) == 2                # scoring code: computed anew, under a new key
    assert anew.scores == computed.scores                         # (a comment computes the same numbers)
    assert evaluate()[1] is True


# --- (c) the proxy samples, the drafts and the calibrations -----------------------------------------------------------

def test_proxy_drafts_and_calibration_keys_each_follow_their_own_code(checkout, tiny, tmp_path):
    """Each edit changes exactly the keys whose code (with what it imports) it touches, seen through the caches
    themselves: a proxy sample or a draft computed anew, a calibration identity that differs."""
    from baselines.lalora import LaLoRA
    from folora.calibration.cache import calibration_identity
    from folora.calibration.proxy import sample_proxy
    from folora.fo_lora import FoLoRA
    from folora.tasks.drafts import BaseModelDrafter

    cache = tmp_path / "cache"
    drafter = BaseModelDrafter(tiny.model, tiny.tokenizer, device=CPU, cache_dir=cache,
                               model_fingerprint=tiny.fingerprint, max_new_tokens=3, batch_size=2)

    def computed_anew() -> set[str]:
        """Which caches compute anew now (and fill their entry, so that the next call finds it)."""
        proxy = sample_proxy(tiny.model, tiny.tokenizer, proxy_config(num_sequences=2, length=3, batch_size=2),
                             model_fingerprint=tiny.fingerprint, cache_dir=cache, device=CPU)
        drafts_before = len(list((cache / "drafts").glob("*.json")))
        drafter(["Say hi.", "Name a colour."])
        drafted = len(list((cache / "drafts").glob("*.json"))) > drafts_before
        return {name for name, fresh in (("proxy", not proxy.cached), ("drafts", drafted)) if fresh}

    calibrations = {"folora calibration": FoLoRA, "lalora calibration": LaLoRA}

    def calibration_keys() -> dict[str, str]:
        return {name: calibration_identity(cls, {"option": 1}, model_fingerprint=tiny.fingerprint, precision="fp32",
                                           device=CPU).key for name, cls in calibrations.items()}

    assert computed_anew() == {"proxy", "drafts"}     # an empty cache
    assert computed_anew() == set()
    keys = calibration_keys()
    edits = [("folora/training/loop.py", set()),
             ("folora/calibration/proxy.py", {"proxy", "folora calibration", "lalora calibration"}),
             ("folora/tasks/drafts.py", {"drafts", "folora calibration"}),   # FoLoRA reads task data: tasks.data
             ("folora/fo_lora/spectral.py", {"folora calibration"}),
             ("baselines/lalora.py", {"lalora calibration"}),
             ("baselines/svd_slice.py", set())]
    for path, expected in edits:
        edit(checkout / path)
        now = calibration_keys()
        changed = computed_anew() | {name for name in calibrations if now[name] != keys[name]}
        assert changed == expected, f"after an edit of {path}"
        keys = now
