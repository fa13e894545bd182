"""`python -m analysis.compare`: two runs' final scores compared on the same documents, with paired intervals."""

from __future__ import annotations

import json

import numpy as np

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
