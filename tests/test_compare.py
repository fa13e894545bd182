"""`python -m analysis.compare`: two runs' final scores compared on the same documents, with paired intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.compare import compare, main, render
from folora.evals import outcomes, paired


def _run(folder, correct, nll):
    folder.mkdir()
    final = {"acc": {"doc_id": list(range(len(correct))), "num": correct, "den": [1] * len(correct), "scale": 1.0},
             "bpb": {"doc_id": list(range(len(nll))), "num": nll, "den": [100] * len(nll), "scale": 1 / np.log(2)}}
    outcomes.save(folder / "outcomes.json.gz", {"base": final, "final": final})
    (folder / "results.json").write_text(json.dumps({"forgetting": {"value": 0.01, "ci": [0.0, 0.02]},
                                                     "preservation": {"mean_change": {"value": -0.1, "ci": [-0.2, 0.0]}}}))
    return folder


def test_the_difference_is_the_paired_change_from_a_to_b(tmp_path):
    rng = np.random.default_rng(0)
    correct_a = rng.integers(0, 2, 40).tolist()
    correct_b = [1 - c if i % 5 == 0 else c for i, c in enumerate(correct_a)]
    nll_a = rng.uniform(50, 80, 40).tolist()
    nll_b = [x + 3 for x in nll_a]   # worse on every document: significant
    a, b = _run(tmp_path / "a", correct_a, nll_a), _run(tmp_path / "b", correct_b, nll_b)
    result = compare(a, b)
    finals = [outcomes.load(r / "outcomes.json.gz")["final"] for r in (a, b)]
    for item in ("acc", "bpb"):
        expected = paired.score_change(finals[0][item], finals[1][item])
        assert result["items"][item]["difference"].value == expected.value
        assert (result["items"][item]["difference"].low, result["items"][item]["difference"].high) == (expected.low, expected.high)
    assert result["items"]["bpb"]["difference"].excludes_zero and result["items"]["bpb"]["difference"].value > 0
    table = render(result)
    assert "| bpb |" in table and " *" in table and "| preservation | -0.1000 [-0.2000, +0.0000]" in table


def test_a_folder_without_outcomes_is_refused(tmp_path, capsys):
    assert main([str(tmp_path), str(tmp_path)]) == 2
    assert "has no outcomes.json.gz" in capsys.readouterr().err


# Runs as the runner records them (`folora.records.fields.scored_fields`): a target accuracy, a forgetting bits-per-byte item and a
# preservation accuracy, each run's final outcomes moved from one shared base by its own per-document changes.
ROLES = {"acc": "target", "bpb": "forgetting", "qa": "preservation"}
HIGHER_IS_BETTER = {"acc": True, "bpb": False, "qa": True}


def _outcome(num, den, scale=1.0):
    return {"doc_id": list(range(len(num))), "num": [float(x) for x in num], "den": [float(x) for x in den],
            "scale": scale}


def _scores(outcomes_by_item):
    return {item: {"value": outcomes.score(o), "stderr": 0.0, "n": len(o["doc_id"]),
                   "higher_is_better": HIGHER_IS_BETTER[item], "kind": item} for item, o in outcomes_by_item.items()}


def _recorded_run(folder, base, final, kl_per_prompt, method="lora", seed=0):
    from folora.records.fields import scored_fields

    folder.mkdir(parents=True)
    outcomes.save(folder / "outcomes.json.gz", {"base": base, "final": final})
    record = scored_fields(_scores(base), _scores(final), base, final, ROLES, {})
    record |= {"status": "completed", "config": {"task": {"name": "math"}, "method": {"name": method}, "seed": seed},
               "method": {"knob": "knob", "knob_value": 1.0},
               "kl_to_base": {"value": float(np.mean(kl_per_prompt)), "ci": [0.0, 1.0],
                              "per_prompt": [round(float(x), 6) for x in kl_per_prompt]}}
    (folder / "results.json").write_text(json.dumps(record))
    return folder


def _shared_base(rng):
    bytes_ = rng.integers(200, 400, 60)
    return {"acc": _outcome(rng.integers(0, 2, 48), np.ones(48)),
            "bpb": _outcome(bytes_ * rng.uniform(0.6, 0.9, 60), bytes_, 1 / np.log(2)),
            "qa": _outcome(rng.integers(0, 2, 40), np.ones(40))}


def _moved(base, rng, shared, own_scale, flip_every):
    """Final outcomes: bits per byte moved per document by `shared` (what both runs forget alike) plus noise of its
    own; every `flip_every`-th answer of the accuracies flipped."""
    bpb = base["bpb"]
    nll = np.asarray(bpb["num"]) + np.asarray(bpb["den"]) * (shared + rng.normal(0, own_scale, len(shared)))
    flip = {item: [1 - x if i % flip_every == 0 else x for i, x in enumerate(base[item]["num"])] for item in ("acc", "qa")}
    return {"acc": _outcome(flip["acc"], base["acc"]["den"]), "qa": _outcome(flip["qa"], base["qa"]["den"]),
            "bpb": _outcome(nll, bpb["den"], bpb["scale"])}


def test_the_headline_difference_of_two_runs_is_paired_on_their_documents(tmp_path):
    """B − A of each headline equals the difference of the two records' headlines; its interval is the paired
    bootstrap over documents (checked against SciPy's paired percentile bootstrap of the same ratio statistic), and
    where the two runs' changes co-vary it is narrower than the two runs' intervals taken as independent."""
    from scipy import stats

    from analysis.compare import headline_difference

    rng = np.random.default_rng(1)
    base = _shared_base(rng)
    shared = rng.normal(0.02, 0.03, 60)          # documents both runs forget alike
    kl = rng.uniform(0.1, 0.5, 24)
    a = _recorded_run(tmp_path / "a", base, _moved(base, rng, shared, 0.004, 5), kl)
    b = _recorded_run(tmp_path / "b", base, _moved(base, rng, shared + 0.01, 0.004, 7), kl * 0.8)
    records = [json.loads((run / "results.json").read_text()) for run in (a, b)]
    difference = headline_difference(a, b)

    for name in ("target_gain", "forgetting"):
        assert difference[name].value == pytest.approx(records[1][name]["value"] - records[0][name]["value"], abs=2e-6)
    assert difference["preservation"].value == pytest.approx(
        records[1]["preservation"]["mean_change"]["value"] - records[0]["preservation"]["mean_change"]["value"], abs=2e-6)
    assert difference["kl_to_base"].value == pytest.approx(float(np.mean(kl * 0.8 - kl)), abs=1e-6)

    finals = [outcomes.load(run / "outcomes.json.gz")["final"]["bpb"] for run in (a, b)]
    num_a, num_b, den = (np.asarray(x, dtype=float) for x in (finals[0]["num"], finals[1]["num"], finals[0]["den"]))
    reference = stats.bootstrap((num_a, num_b, den), lambda x, y, d: (y.sum() - x.sum()) / d.sum() / np.log(2),
                                paired=True, vectorized=False, method="percentile", n_resamples=4000,
                                random_state=np.random.default_rng(0)).confidence_interval
    width = reference.high - reference.low
    assert difference["forgetting"].low == pytest.approx(reference.low, abs=0.15 * width)
    assert difference["forgetting"].high == pytest.approx(reference.high, abs=0.15 * width)

    independent = np.hypot(*[(r["forgetting"]["ci"][1] - r["forgetting"]["ci"][0]) / 2 for r in records])
    assert (difference["forgetting"].high - difference["forgetting"].low) / 2 < 0.5 * independent


def test_runs_of_different_tasks_have_no_paired_headline_difference(tmp_path):
    from analysis.compare import UnpairedRuns, headline_difference

    rng = np.random.default_rng(2)
    base = _shared_base(rng)
    a = _recorded_run(tmp_path / "a", base, _moved(base, rng, np.zeros(60), 0.01, 5), [0.1, 0.2])
    b = _recorded_run(tmp_path / "b", base, _moved(base, rng, np.zeros(60), 0.01, 5), [0.1, 0.2])
    record = json.loads((b / "results.json").read_text())
    record["roles"] = {**record["roles"], "acc": "preservation", "qa": "target"}
    (b / "results.json").write_text(json.dumps(record))
    with pytest.raises(UnpairedRuns, match="same roles"):
        headline_difference(a, b)
    assert "No paired headline difference" in render(compare(a, b))


def test_methods_compared_by_seed_count_each_seeds_paired_document_interval(tmp_path):
    """Through the real collect → render path: each seed's document half width is that of the two runs' paired
    difference (`headline_difference`), not the two runs' own intervals taken as independent."""
    import pandas as pd

    from analysis.collect import collect
    from analysis.compare import headline_difference
    from analysis.comparisons import method_comparison
    from analysis.stats import combined_interval

    rng = np.random.default_rng(3)
    base = _shared_base(rng)
    pairs = []
    for seed in range(3):
        shared = rng.normal(0.02 + 0.005 * seed, 0.03, 60)
        kl = rng.uniform(0.1, 0.5, 24)
        pairs.append([_recorded_run(tmp_path / f"{method}_{seed}", base, _moved(base, rng, shared + shift, 0.004, 5),
                                    kl, method=method, seed=seed)
                      for method, shift in (("lora", 0.0), ("other", -0.01))])
    frame = collect([tmp_path])
    row = method_comparison(frame, "lora", {"lora": 1.0, "other": 1.0}, ["forgetting"]).iloc[0]
    paired_half = [(d.high - d.low) / 2 for d in (headline_difference(a, b)["forgetting"] for a, b in pairs)]
    differences = [headline_difference(a, b)["forgetting"].value for a, b in pairs]
    expected = combined_interval(pd.Series(differences), pd.Series(paired_half))
    assert row.forgetting_difference == pytest.approx(np.mean(differences), abs=2e-6)
    assert (row.forgetting_low, row.forgetting_high) == pytest.approx(expected, abs=2e-6)
