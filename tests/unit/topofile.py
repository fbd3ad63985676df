"""A topology file for a test: a base dict with some fields set or replaced, written as JSON."""
import copy
import json


def write_topology(tmp_path, base: dict, **extra):
    raw = copy.deepcopy(base)
    raw.update(extra)
    p = tmp_path / "t.json"
    p.write_text(json.dumps(raw))
    return p
