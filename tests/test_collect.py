"""analysis.collect reads results.json files written by the runner into a DataFrame, values unchanged."""

import json

from analysis.collect import collect


def test_collect_reads_every_run_and_keeps_the_numbers(tmp_path):
    for i, status in enumerate(["completed", "failed"]):
        run = tmp_path / f"run{i}"
        run.mkdir()
        record = {"status": status, "config": {"model": {"name": "tiny-random"}, "task": {"name": "math"},
                                               "method": {"name": "lora"}, "seed": i},
                  "method": {"knob": "train.lr", "knob_value": 0.1 * (i + 1)}}
        if status == "completed":
            record |= {"target_gain": 0.25, "retention": {"mean": 0.9}, "kl_to_base": {"value": 0.01},
                       "metrics": {"capitals": {"base": {"value": 0.8}, "final": {"value": 0.7}}}}
        (run / "results.json").write_text(json.dumps(record))
    frame = collect([tmp_path]).set_index("seed")
    assert list(frame["status"]) == ["completed", "failed"]
    assert frame.loc[0, "target_gain"] == 0.25 and frame.loc[0, "final:capitals"] == 0.7
    assert frame.loc[1, "knob_value"] == 0.2
