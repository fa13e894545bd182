"""analysis.collect reads results.json files written by the runner into a DataFrame, values unchanged."""

import json

import pytest

from analysis.collect import collect


def test_collect_reads_every_run_and_keeps_the_numbers(tmp_path):
    for i, status in enumerate(["completed", "failed"]):
        run = tmp_path / f"run{i}"
        run.mkdir()
        record = {"status": status, "config": {"model": {"name": "tiny-random"}, "task": {"name": "math"},
                                               "method": {"name": "lora"}, "seed": i, "train": {"lr": 0.1 * (i + 1)}},
                  "method": {"knob": "train.lr", "knob_value": 0.1 * (i + 1)}}
        if status == "completed":
            record |= {"target_gain": {"value": 0.25, "ci": [0.1, 0.4]}, "forgetting": {"value": 0.02, "ci": [0.01, 0.03]},
                       "kl_to_base": {"value": 0.01, "ci": [0.0, 0.02]},
                       "preservation": {"mean_change": {"value": -0.05, "ci": [-0.1, 0.0]}, "dropped": ["capitals"]},
                       "metrics": {"capitals": {"base": {"value": 0.8}, "final": {"value": 0.7},
                                                "change": {"value": -0.1, "ci": [-0.2, -0.01]}}}}
        (run / "results.json").write_text(json.dumps(record))
    frame = collect([tmp_path]).set_index("seed")
    assert list(frame["status"]) == ["completed", "failed"]
    assert frame.loc[0, "target_gain"] == 0.25 and frame.loc[0, "final:capitals"] == 0.7
    assert (frame.loc[0, "forgetting_low"], frame.loc[0, "forgetting_high"]) == (0.01, 0.03)
    assert frame.loc[0, "preservation"] == -0.05 and frame.loc[0, "preservation_dropped"] == 1
    assert frame.loc[0, "change_high:capitals"] == -0.01
    assert frame.loc[1, "knob_value"] == 0.2 and frame.loc[1, "lr"] == 0.2


def test_a_failed_record_gives_empty_headlines(tmp_path):
    record = {"status": "failed", "config": {"task": {"name": "math"}, "method": {"name": "lora"}, "seed": 0},
              "error": {"message": "boom"}}
    (tmp_path / "results.json").write_text(json.dumps(record))
    row = collect([tmp_path]).iloc[0]
    assert row.status == "failed" and row.error == "boom"
    assert row.target_gain is None and row.target_gain_low is None and row.forgetting is None


def test_learning_on_validation_text_is_the_loss_before_training_minus_after():
    from analysis.collect import val_loss_decrease

    train = {"base_point": {"val_loss": 1.0}, "trajectory": [{"step": 10, "val_loss": 0.4}], "validation_loss": 0.25}
    assert val_loss_decrease(train) == pytest.approx(0.75)
    assert val_loss_decrease({"base_point": {"val_loss": 1.0}, "validation_loss": None}) is None
    assert val_loss_decrease({}) is None
    # measured from the base model where the record has its point: an initialization that moved the model (step 0
    # at 1.004 against the base's 0.999) is not counted as learning or unlearning
    moved = {"base_point": {"val_loss": 0.999}, "trajectory": [{"step": 0, "val_loss": 1.004}], "validation_loss": 0.25}
    assert val_loss_decrease(moved) == pytest.approx(0.749)
