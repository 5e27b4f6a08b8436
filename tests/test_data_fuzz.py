"""Fuzzing the demo loader: 1200 seeded mutations of valid files; only DemoDataError may escape,
and every problem names the file (and a line, where the file could be read line by line)."""

import json
import random

from sdft_ops.data import DemoDataError, load_demonstrations
from sdft_ops.domains import shipped_dir

SEEDS = [json.loads(line) for name in ("tooluse", "knowledge", "triage")
         for line in (shipped_dir() / f"{name}.train.jsonl").read_text().splitlines()[:3]]
SEEDS.append({"id": "chat-1", "prompt": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Hi?"}],
              "demonstration": "Hello.", "domain": "chat"})
NASTY = ["\x00", "\u202e", "\u200b", "\ud800", "\uffff", "é", "🙂", "\\", '"', "\n", "{", "]",
         "9" * 5000, "1e999", "NaN", "-Infinity", "..", "/", "../../escaped", " " * 3]


def _mutate(rng: random.Random) -> bytes:
    record = json.loads(json.dumps(rng.choice(SEEDS)))
    kind = rng.randrange(10)
    if kind == 0:  # a field replaced by a value of another type or a nasty string
        record[rng.choice(list(record) + ["extra"])] = rng.choice(
            [None, 0, -1, 1.5, True, [], {}, [1, [2]], rng.choice(NASTY), "x" * rng.randrange(1, 400)])
    elif kind == 1:  # a field dropped
        record.pop(rng.choice(list(record)))
    elif kind == 2:  # deep nesting
        depth = rng.choice([10, 70, 1000, 50_000])
        record["metadata"] = json.loads("[" * min(depth, 60) + "]" * min(depth, 60))
        text = json.dumps(record)
        return (text[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}").encode()
    elif kind == 3:  # nasty text inside a string field
        key = rng.choice(["id", "demonstration", "domain"])
        record[key] = rng.choice(NASTY) * rng.randrange(1, 4)
    elif kind == 4:  # chat roles shuffled / wrong
        record["prompt"] = [{"role": rng.choice(["user", "assistant", "system", "tool", ""]),
                             "content": rng.choice(["hi", "", "\x00"])} for _ in range(rng.randrange(0, 4))]
    text = json.dumps(record, ensure_ascii=rng.random() < 0.5)
    data = bytearray(text.encode("utf-8", "surrogatepass"))
    if kind == 5 and data:  # byte flips
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 6:  # truncation
        data = data[: rng.randrange(len(data) + 1)]
    elif kind == 7:  # duplicated key, raw huge number, raw constant
        data = bytearray(text[:-1].encode() + rng.choice(
            [b', "id": "dup"}', b', "n": ' + b"7" * 5000 + b"}", b', "n": NaN}', b', "n": 1e400}']))
    elif kind == 8:  # random unicode noise appended inside the object
        noise = "".join(chr(rng.randrange(1, 0x2FFFF)) for _ in range(20))
        data = bytearray(text[:-1].encode() + f', "noise": {json.dumps(noise)}}}'.encode())
    lines = [bytes(data)] + [json.dumps(s).encode() for s in rng.sample(SEEDS, 2)]
    rng.shuffle(lines)
    return b"\n".join(lines) + rng.choice([b"", b"\n", b"\r\n", b"\n\n"])


def test_a_thousand_mutated_files_raise_only_demo_data_errors(tmp_path):
    rng = random.Random(20261202)
    path = tmp_path / "fuzz.jsonl"
    rejected = 0
    for _ in range(1200):
        path.write_bytes(_mutate(rng))
        try:
            load_demonstrations(path)
        except DemoDataError as e:
            rejected += 1
            assert all(p.file == str(path) for p in e.problems) and e.problems
    assert rejected > 600  # the mutations do break files; a loader accepting all would fail here
