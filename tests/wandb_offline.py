"""Read an offline W&B run (`offline-run-*/run-*.wandb`) without a server: its config, summary and history.

The file is W&B's record log (LevelDB's log format): a 7-byte header, then 32 KiB blocks of chunks, each with a
7-byte header (checksum, length, type: full / first / middle / last) carrying a serialized `wandb.proto` Record.
wandb 0.31 reads these files only in its Go core, so the tests read them here.
"""

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B record log"
    position, pending = HEADER, b""
    while position + HEADER <= len(data):
        left_in_block = BLOCK - position % BLOCK
        if left_in_block < HEADER:          # a block's tail too short for a header is padding
            position += left_in_block
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[position:position + HEADER])
        chunk = data[position + HEADER:position + HEADER + length]
        position += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(path: Path) -> dict:
    """{"group", "job_type", "config", "summary", "history"} of an offline run's record log."""
    out = {"group": None, "job_type": None, "config": {}, "summary": {}, "history": []}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["group"], out["job_type"] = record.run.run_group, record.run.job_type
            out["config"] |= {_key(i): json.loads(i.value_json) for i in record.run.config.update}
        elif kind == "config":
            out["config"] |= {_key(i): json.loads(i.value_json) for i in record.config.update}
        elif kind == "summary":
            out["summary"] |= {_key(i): json.loads(i.value_json) for i in record.summary.update}
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in record.history.item})
    out["config"] = {k: v.get("value", v) if isinstance(v, dict) else v for k, v in out["config"].items()}
    return out
