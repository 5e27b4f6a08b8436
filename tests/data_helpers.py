"""Demo files for the data tests: records, raw lines written as given, the one expected problem."""

import json

import pytest

from sdft_ops.data import DemoDataError, LoadOptions, load_demonstrations


def record(id: str = "r1", **overrides) -> dict:
    base = {"id": id, "prompt": f"question {id}", "demonstration": f"answer {id}", "domain": "math"}
    base.update(overrides)
    return base


def write_lines(tmp_path, lines: list, name: str = "demos.jsonl"):
    """Write JSONL; dicts are dumped, str/bytes are written as-is (for deliberately bad lines)."""
    path = tmp_path / name
    chunks = []
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        chunks.append(line if isinstance(line, bytes) else line.encode("utf-8"))
    path.write_bytes(b"\n".join(chunks) + b"\n")
    return path


def load_error(path, **options) -> DemoDataError:
    with pytest.raises(DemoDataError) as caught:
        load_demonstrations(path, LoadOptions(**options))
    return caught.value


def only_problem(error: DemoDataError):
    assert len(error.problems) == 1, str(error)
    return error.problems[0]
