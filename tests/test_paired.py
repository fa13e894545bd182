"""Paired bootstrap intervals against SciPy's own, and per-document outcomes against lm-eval's aggregates."""

import math

import numpy as np
import pytest
from scipy import stats

from folora.evals import outcomes, paired


def synthetic_pairs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(0.0, 1.0, size=n)
    final = base + rng.normal(0.3, 0.5, size=n)     # strongly paired: the difference varies far less than each
    return base, final


def test_paired_mean_change_interval_matches_scipy_bootstrap():
    base, final = synthetic_pairs()
    ours = paired.score_change({"doc_id": list(range(len(base))), "num": list(base), "den": [1.0] * len(base), "scale": 1.0},
                               {"doc_id": list(range(len(base))), "num": list(final), "den": [1.0] * len(base), "scale": 1.0},
                               n_resamples=20000)
    reference = stats.bootstrap((base, final), lambda b, f, axis: f.mean(axis) - b.mean(axis), paired=True,
                                n_resamples=20000, method="percentile", confidence_level=0.95,
                                random_state=np.random.default_rng(5), vectorized=True)
    width = reference.confidence_interval.high - reference.confidence_interval.low
    assert ours.value == pytest.approx(final.mean() - base.mean())
    assert ours.low == pytest.approx(reference.confidence_interval.low, abs=0.03 * width)
    assert ours.high == pytest.approx(reference.confidence_interval.high, abs=0.03 * width)


def test_ratio_score_change_matches_scipy_bootstrap_of_a_ratio_of_sums():
    """Bits per byte: sum(nll) / sum(bytes) / ln 2 on every resample, base and final on the same documents."""
    rng = np.random.default_rng(3)
    nbytes = rng.integers(100, 800, size=80).astype(float)
    nll_base = nbytes * rng.uniform(0.4, 0.8, size=80)
    nll_final = nll_base * rng.uniform(0.98, 1.06, size=80)
    scale = 1 / math.log(2)
    base = {"doc_id": list(range(80)), "num": list(nll_base), "den": list(nbytes), "scale": scale}
    final = base | {"num": list(nll_final)}
    ours = paired.score_change(base, final, n_resamples=20000)

    def change(b, f, d, axis):
        return scale * (f.sum(axis) - b.sum(axis)) / d.sum(axis)

    reference = stats.bootstrap((nll_base, nll_final, nbytes), change, paired=True, n_resamples=20000,
                                method="percentile", random_state=np.random.default_rng(7), vectorized=True)
    width = reference.confidence_interval.high - reference.confidence_interval.low
    assert ours.value == pytest.approx(scale * (nll_final.sum() - nll_base.sum()) / nbytes.sum())
    assert ours.low == pytest.approx(reference.confidence_interval.low, abs=0.03 * width)
    assert ours.high == pytest.approx(reference.confidence_interval.high, abs=0.03 * width)


def test_pairing_makes_the_interval_narrower_than_an_unpaired_one():
    base, final = synthetic_pairs()
    ours = paired.score_change({"doc_id": list(range(len(base))), "num": list(base), "den": [1.0] * len(base), "scale": 1.0},
                               {"doc_id": list(range(len(base))), "num": list(final), "den": [1.0] * len(base), "scale": 1.0})
    unpaired = stats.bootstrap((final, base), lambda f, b, axis: f.mean(axis) - b.mean(axis), paired=False,
                               method="percentile", random_state=np.random.default_rng(0), vectorized=True)
    unpaired_width = unpaired.confidence_interval.high - unpaired.confidence_interval.low
    assert ours.high - ours.low < 0.6 * unpaired_width


def test_intervals_are_seeded_by_the_documents():
    base, final = synthetic_pairs()
    rows = {"doc_id": list(range(len(base))), "den": [1.0] * len(base), "scale": 1.0}
    first = paired.score_change(rows | {"num": list(base)}, rows | {"num": list(final)})
    again = paired.score_change(rows | {"num": list(base)}, rows | {"num": list(final)})
    assert (first.low, first.high) == (again.low, again.high)


def test_outcomes_are_aligned_on_document_ids():
    base = {"doc_id": [0, 1, 2, 3], "num": [0.0, 1.0, 0.0, 1.0], "den": [1.0] * 4, "scale": 1.0}
    final = {"doc_id": [3, 1, 0], "num": [1.0, 1.0, 1.0], "den": [1.0] * 3, "scale": 1.0}
    change = paired.score_change(base, final)
    assert change.value == pytest.approx(1.0 - 2 / 3)   # documents 0, 1, 3 only


def test_margin_change_reads_the_gold_choice_against_the_best_wrong_one():
    base = {"doc_id": [0, 1], "num": [1.0, 0.0], "den": [1.0, 1.0], "scale": 1.0,
            "choice_ll": [[-1.0, -2.0, -3.0], [-2.0, -1.5, -4.0]], "gold": [0, 0]}
    final = base | {"choice_ll": [[-0.5, -2.5, -3.0], [-1.0, -1.5, -4.0]]}
    assert outcomes.margins(base) == [1.0, -0.5]
    assert paired.margin_change(base, final).value == pytest.approx(((2.0 - 1.0) + (0.5 + 0.5)) / 2)


def lm_eval_samples():
    """lm-eval's logged samples of three kinds: multiple choice, bits per byte, IFEval's per-instruction lists."""
    mc = [{"doc_id": i, "filter": "none", "target": gold, "acc": float(np.argmax(lls) == gold), "acc_norm": 1.0,
           "filtered_resps": [[ll, False] for ll in lls]}
          for i, (lls, gold) in enumerate([([-1.0, -2.0, -3.0, -4.0], 0), ([-3.0, -1.0, -2.0, -4.0], 2),
                                            ([-1.5, -1.0, -2.0, -4.0], 1)])]
    bpb = [{"doc_id": i, "filter": "none", "target": "x" * b, "bits_per_byte": (-ll, b), "filtered_resps": [-ll]}
           for i, (ll, b) in enumerate([(300.0, 500), (100.0, 120), (50.0, 300)])]
    inst = [{"doc_id": i, "filter": "none", "inst_level_strict_acc": flags}
            for i, flags in enumerate([[True, False, True], [False], [True, True]])]
    return mc, bpb, inst


def test_outcomes_reproduce_lm_evals_aggregates():
    from lm_eval.api.metrics import bits_per_byte, mean

    from folora.evals.lm_tasks.folora_utils import mean_of_all

    mc, bpb, inst = lm_eval_samples()
    acc = outcomes.item_outcomes("acc,none", mc)
    assert outcomes.score(acc) == pytest.approx(mean([s["acc"] for s in mc]))
    assert acc["gold"] == [0, 2, 1] and acc["chance"] == pytest.approx(0.25)
    ratio = outcomes.item_outcomes("bits_per_byte,none", bpb)
    assert outcomes.score(ratio) == pytest.approx(bits_per_byte([s["bits_per_byte"] for s in bpb]))
    assert "choice_ll" not in ratio
    level = outcomes.item_outcomes("inst_level_strict_acc,none", inst)
    assert outcomes.score(level) == pytest.approx(mean_of_all([s["inst_level_strict_acc"] for s in inst]))


def test_only_the_items_filter_is_read():
    samples = [{"doc_id": 0, "filter": "strict-match", "exact_match": 0.0},
               {"doc_id": 0, "filter": "flexible-extract", "exact_match": 1.0}]
    assert outcomes.item_outcomes("exact_match,strict-match", samples)["num"] == [0.0]
    assert outcomes.item_outcomes("exact_match,flexible-extract", samples)["num"] == [1.0]


def test_outcome_files_round_trip(tmp_path):
    mc, _, _ = lm_eval_samples()
    data = {"base": {"capitals": outcomes.item_outcomes("acc,none", mc)}}
    outcomes.save(tmp_path / "outcomes.json.gz", data)
    assert outcomes.load(tmp_path / "outcomes.json.gz") == data


def test_items_of_one_task_resample_jointly_and_items_of_different_tasks_independently():
    """Two tasks that both number their 64 documents 0..63 (prose and code bits per byte) must not draw the same
    resamples: a mean over them would carry the chance correlation of unrelated documents that share an index. Two
    items of one task (math strict and flexible) are on the same documents and must draw the same ones."""
    ids = list(range(64))
    assert np.array_equal(paired.resample(ids, source="folora_math"), paired.resample(ids, source="folora_math"))
    assert not np.array_equal(paired.resample(ids, source="folora_prose_bpb"),
                              paired.resample(ids, source="folora_code_bpb"))
    # per-index changes that run against each other: resampled together they cancel, independently they do not
    x = np.random.default_rng(1).normal(size=64)
    rows = {"doc_id": ids, "den": [1.0] * 64, "scale": 1.0}
    parts = [paired.score_change(rows | {"num": [0.0] * 64}, rows | {"num": list(v)}, source=source)
             for v, source in ((x, "folora_prose_bpb"), (-x, "folora_code_bpb"))]
    width = paired.mean_of(parts).high - paired.mean_of(parts).low
    independent = 2 * 1.96 * np.sqrt(np.var(x) / 64 / 2)   # the sd of the mean of two independent means, halved
    assert width == pytest.approx(independent, rel=0.15)


def test_outcomes_naming_one_document_twice_cannot_be_paired():
    twice = {"doc_id": [0, 0, 1], "num": [1.0, 0.0, 1.0], "den": [1.0] * 3, "scale": 1.0}
    with pytest.raises(ValueError, match="one document id twice"):
        paired.score_change(twice, twice)


def test_a_group_tasks_documents_get_ids_unique_across_its_subtasks():
    from folora.evals.suite import GROUP_DOC_ID_STRIDE, group_samples

    samples = group_samples({"mmlu_b": [{"doc_id": 0, "acc": 1.0}], "mmlu_a": [{"doc_id": 0, "acc": 0.0},
                                                                              {"doc_id": 1, "acc": 1.0}]})
    assert [s["doc_id"] for s in samples] == [0, 1, GROUP_DOC_ID_STRIDE]   # subtasks by name: mmlu_a, then mmlu_b
    assert [s["acc"] for s in samples] == [0.0, 1.0, 1.0]
