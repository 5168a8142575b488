"""One helper the evidence scripts share: append a JSON document as one line, durably."""
from __future__ import annotations

import json
import os
import pathlib


def append_jsonl(path, doc: dict) -> None:
    """Append ``doc`` to the JSON-lines file ``path`` (its folder made if needed), flushed to disk
    before returning so that an interrupted series of runs keeps every finished line."""
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a") as f:
        f.write(json.dumps(doc) + "\n")
        f.flush()
        os.fsync(f.fileno())
