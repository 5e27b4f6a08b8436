"""Tests for sdft_ops.data: every kind of bad input is reported with file, line and field;
good data loads; the content hash and split depend on the records only."""

from __future__ import annotations

import json

import pytest

from sdft_ops.data import (
    ChatMessage,
    DemoDataError,
    DemoDataset,
    Demonstration,
    LoadOptions,
    load_demonstrations,
)


from tests.data_helpers import load_error, only_problem, record, write_lines


# --- bad input: one test per kind, each checking file, line and field are named -------------


def test_malformed_json_names_line_and_column(tmp_path):
    path = write_lines(tmp_path, [record("a"), '{"id": "b", "prompt": "q"'])
    problem = only_problem(error := load_error(path))
    assert (problem.line, problem.field) == (2, None)
    assert f"{path}:2:" in str(error)
    assert "column" in problem.message and "malformed JSON" in problem.message


def test_missing_field(tmp_path):
    bad = record("b")
    del bad["domain"]
    path = write_lines(tmp_path, [record("a"), bad])
    error = load_error(path)
    assert f"{path}:2: domain: required field is missing" in str(error)


@pytest.mark.parametrize("empty", ["", "   \t "])
def test_empty_or_whitespace_field(tmp_path, empty):
    path = write_lines(tmp_path, [record("a", demonstration=empty)])
    problem = only_problem(error := load_error(path))
    assert (problem.line, problem.field) == (1, "demonstration")
    assert f"{path}:1: demonstration: must not be empty" in str(error)


def test_wrong_type(tmp_path):
    path = write_lines(tmp_path, [record("a"), record("b", prompt=5)])
    problem = only_problem(error := load_error(path))
    assert (problem.line, problem.field) == (2, "prompt")
    assert f"{path}:2: prompt:" in str(error) and "got a number" in problem.message


def test_unknown_field_points_to_metadata(tmp_path):
    path = write_lines(tmp_path, [record("a", source="web")])
    problem = only_problem(error := load_error(path))
    assert (problem.line, problem.field) == (1, "source")
    assert f"{path}:1: source: unknown field" in str(error) and "metadata" in problem.message


def test_non_utf8_bytes_report_offset(tmp_path):
    path = write_lines(tmp_path, [record("a"), b'{"id": "b\xff"}'])
    problem = only_problem(error := load_error(path))
    assert problem.line == 2 and f"{path}:2:" in str(error)
    assert "UTF-8" in problem.message and "byte 9 of the line" in problem.message


def test_duplicate_id_names_both_lines(tmp_path):
    path = write_lines(tmp_path, [record("a"), record("b"), record("a", prompt="other")])
    problem = only_problem(error := load_error(path))
    assert (problem.line, problem.field) == (3, "id")
    assert f"{path}:3: id:" in str(error) and "line 1" in problem.message


def duplicate_content_file(tmp_path):
    same = {"prompt": "same q", "demonstration": "same a", "domain": "math"}
    return write_lines(tmp_path, [record("a", **same), record("b"), record("c", **same)])


def test_duplicate_content_keep_first_drops_and_reports(tmp_path):
    dataset = load_demonstrations(duplicate_content_file(tmp_path))
    assert [r.id for r in dataset.records] == ["a", "b"]
    assert dataset.duplicate_content == (("a", "c"),)
    assert dataset.dropped_ids == ("c",) and dataset.dropped_duplicates == 1


def test_duplicate_content_error_names_lines(tmp_path):
    path = duplicate_content_file(tmp_path)
    problem = only_problem(error := load_error(path, duplicate_content="error"))
    assert problem.line == 3 and f"{path}:3:" in str(error) and "line 1" in problem.message


def test_duplicate_content_keep_all_keeps_and_counts(tmp_path):
    options = LoadOptions(duplicate_content="keep_all")
    dataset = load_demonstrations(duplicate_content_file(tmp_path), options)
    assert [r.id for r in dataset.records] == ["a", "b", "c"]
    assert dataset.duplicate_content == (("a", "c"),) and dataset.dropped_ids == ()


def test_string_and_chat_prompt_with_same_text_are_duplicate_content(tmp_path):
    chat = [{"role": "user", "content": "question a"}]
    same_as_a = record("b", prompt=chat, demonstration="answer a")
    dataset = load_demonstrations(write_lines(tmp_path, [record("a"), same_as_a]))
    assert dataset.duplicate_content == (("a", "b"),)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    problem = only_problem(error := load_error(path))
    assert problem.line is None and str(path) in str(error) and "empty" in problem.message


def test_blank_only_file_is_empty(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_bytes(b"\n   \n\t\r\n\n")
    problem = only_problem(load_error(path))
    assert problem.line is None and "no demonstrations" in problem.message


def test_blank_lines_between_records_are_skipped(tmp_path):
    path = write_lines(tmp_path, ["", record("a"), "   ", record("b"), ""])
    assert [r.id for r in load_demonstrations(path).records] == ["a", "b"]


def test_over_long_line_is_reported_and_rest_still_checked(tmp_path):
    lines = [record("a"), record("b", demonstration="x" * 500), record("c", domain="")]
    path = write_lines(tmp_path, lines)
    error = load_error(path, max_line_bytes=200)
    assert [(p.line, p.field) for p in error.problems] == [(2, None), (3, "domain")]
    assert f"{path}:2:" in str(error) and "max_line_bytes=200" in error.problems[0].message


def test_line_exactly_at_limit_is_accepted(tmp_path):
    line = json.dumps(record("a"))
    path = write_lines(tmp_path, [line])
    assert len(load_demonstrations(path, LoadOptions(max_line_bytes=len(line)))) == 1
    assert load_error(path, max_line_bytes=len(line) - 1).problems[0].line == 1


def test_not_an_object_line(tmp_path):
    path = write_lines(tmp_path, [record("a"), "[1, 2]"])
    problem = only_problem(error := load_error(path))
    assert problem.line == 2 and f"{path}:2:" in str(error) and "JSON object" in problem.message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    problem = only_problem(error := load_error(path))
    assert problem.line is None and str(path) in str(error) and "not found" in problem.message


def test_chat_prompt_must_end_with_user(tmp_path):
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = write_lines(tmp_path, [record("a", prompt=chat)])
    problem = only_problem(error := load_error(path))
    assert (problem.line, problem.field) == (1, "prompt")
    assert f"{path}:1: prompt:" in str(error) and "end with a user message" in problem.message


def test_chat_message_errors_use_indexed_field_path(tmp_path):
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": " "}]
    problem = only_problem(load_error(write_lines(tmp_path, [record("a", prompt=chat)])))
    assert problem.field == "prompt[1].content"


def test_all_problems_in_a_file_are_collected(tmp_path):
    missing = record("c")
    del missing["prompt"]
    lines = [record("a"), "not json", missing, record("d", prompt=5, extra=1), record("a")]
    path = write_lines(tmp_path, lines)
    error = load_error(path)
    found = {(p.line, p.field) for p in error.problems}
    assert found == {(2, None), (3, "prompt"), (4, "prompt"), (4, "extra"), (5, "id")}
    assert all(f"{path}:{line}:" in str(error) for line in (2, 3, 4, 5))


# --- good data ------------------------------------------------------------------------------


def test_good_file_loads_records(tmp_path):
    chat = [{"role": "system", "content": "be exact"}, {"role": "user", "content": "2+2?"}]
    lines = [record("a", metadata={"level": 1}), "", record("b", prompt=chat, domain="arith")]
    path = write_lines(tmp_path, lines)
    dataset = load_demonstrations(path)
    assert len(dataset) == 2 and dataset.source == str(path)
    a, b = dataset.records
    assert (a.id, a.prompt, a.demonstration, a.domain) == ("a", "question a", "answer a", "math")
    assert a.metadata == {"level": 1} and b.metadata == {}
    assert list(b.prompt) == [ChatMessage(**message) for message in chat]
    assert a.prompt_messages() == [{"role": "user", "content": "question a"}]
    assert b.prompt_messages() == chat
    assert dataset.domains == ["arith", "math"]
    assert dataset.duplicate_content == () and dataset.dropped_ids == ()


def test_utf8_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    a, b = (json.dumps(record(i)).encode() for i in "ab")
    path.write_bytes(b"\xef\xbb\xbf" + a + b"\r\n" + b + b"\r\n")
    assert [r.id for r in load_demonstrations(path).records] == ["a", "b"]


# --- content hash ---------------------------------------------------------------------------


def test_hash_stable_under_key_order_whitespace_and_line_order(tmp_path):
    a, b = record("a", metadata={"x": 1, "y": [1, 2]}), record("b")
    first = write_lines(tmp_path, [a, b], "one.jsonl")
    reordered = {key: a[key] for key in reversed(list(a))} | {"metadata": {"y": [1, 2], "x": 1}}
    spaced_b = "\t " + json.dumps(b, separators=(" ,  ", " :\t")) + "   "
    second = write_lines(tmp_path, [spaced_b, json.dumps(reordered, indent=None)], "two.jsonl")
    assert first.read_bytes() != second.read_bytes()
    assert load_demonstrations(first).content_hash == load_demonstrations(second).content_hash


def test_hash_changes_when_content_changes(tmp_path):
    def hash_of(*lines, name):
        return load_demonstrations(write_lines(tmp_path, list(lines), name)).content_hash

    base = hash_of(record("a"), record("b"), name="base.jsonl")
    assert len(base) == 64 and base == hash_of(record("b"), record("a"), name="same.jsonl")
    assert base != hash_of(record("a"), record("b", demonstration="answer b "), name="space.jsonl")
    assert base != hash_of(record("a"), record("b", metadata={"k": 1}), name="meta.jsonl")
    assert base != hash_of(record("a"), record("b", domain="algebra"), name="domain.jsonl")


# --- split ----------------------------------------------------------------------------------


def dataset_of(ids) -> DemoDataset:
    return DemoDataset.from_records(Demonstration(**record(i)) for i in ids)


def ids(dataset: DemoDataset) -> set[str]:
    return {r.id for r in dataset.records}


def test_split_is_deterministic_and_seeded():
    data = dataset_of(f"ex{i}" for i in range(200))
    train, held = data.split(0.3, seed="s")
    train2, held2 = data.split(0.3, seed="s")
    assert ids(train) == ids(train2) and ids(held) == ids(held2)
    assert ids(train) | ids(held) == ids(data) and not ids(train) & ids(held)
    assert ids(held) != ids(data.split(0.3, seed="other")[1])


def test_split_does_not_depend_on_record_order():
    forward = dataset_of(f"ex{i}" for i in range(100))
    backward = dataset_of(f"ex{i}" for i in reversed(range(100)))
    assert forward.split(0.5)[1] == backward.split(0.5)[1]


def test_adding_records_does_not_move_existing_ones():
    small = dataset_of(f"ex{i}" for i in range(100))
    large = dataset_of(f"ex{i}" for i in range(300))
    small_train, small_held = small.split(0.25, seed="k")
    large_train, large_held = large.split(0.25, seed="k")
    assert ids(small_held) <= ids(large_held) and ids(small_train) <= ids(large_train)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.2, 0.5, 0.9])
def test_split_fraction_is_roughly_honored(fraction):
    train, held = dataset_of(f"id-{i}" for i in range(1000)).split(fraction, seed="x")
    assert abs(len(held) / 1000 - fraction) <= 0.05
    assert len(train) + len(held) == 1000


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="heldout_fraction"):
        dataset_of(["a"]).split(fraction)


def test_from_records_rejects_duplicate_ids():
    with pytest.raises(DemoDataError, match="duplicate id 'a'") as caught:
        dataset_of(["a", "b", "a"])
    assert caught.value.problems[0].line == 3


# --- write / round trip ---------------------------------------------------------------------


def test_write_jsonl_round_trip_keeps_hash(tmp_path):
    chat = [{"role": "user", "content": "héllo ✓"}]
    lines = [record("b", metadata={"k": [1, None]}), record("a", prompt=chat)]
    original = load_demonstrations(write_lines(tmp_path, lines))
    out = original.write_jsonl(tmp_path / "sub" / "out.jsonl")
    reloaded = load_demonstrations(out)
    assert reloaded.content_hash == original.content_hash
    assert [r.id for r in reloaded.records] == ["b", "a"]
    assert list((tmp_path / "sub").iterdir()) == [out]  # no temp file left behind


def test_write_jsonl_replaces_existing_file(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old junk\n")
    dataset_of(["a"]).write_jsonl(target)
    assert [r.id for r in load_demonstrations(target).records] == ["a"]


# --- smaller contracts ----------------------------------------------------------------------


def test_error_text_lists_every_problem_one_per_line(tmp_path):
    path = write_lines(tmp_path, [record("a", domain=" "), record("")])
    lines = str(load_error(path)).splitlines()
    assert lines[0].startswith("2 problems")
    assert lines[1:] == [f"{path}:1: domain: must not be empty or whitespace-only",
                         f"{path}:2: id: must not be empty or whitespace-only"]


def test_crlf_line_length_excludes_the_newline(tmp_path):
    line = json.dumps(record("a")).encode()
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(line + b"\r\n" + json.dumps(record("b")).encode() + b"\r\n")
    assert len(load_demonstrations(path, LoadOptions(max_line_bytes=len(line)))) == 2


def test_unpaired_surrogate_is_a_problem_not_a_crash(tmp_path):
    path = write_lines(tmp_path, [record("a", demonstration="bad \ud800 text")])
    problem = only_problem(load_error(path))
    assert problem.line == 1 and "surrogate" in problem.message


def test_directory_instead_of_file(tmp_path):
    problem = only_problem(load_error(tmp_path))
    assert problem.line is None and problem.file == str(tmp_path)


def test_direct_construction_also_rejects_duplicate_ids():
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        DemoDataset(records=(Demonstration(**record("a")), Demonstration(**record("a"))))


@pytest.mark.parametrize("bad", [{"max_line_bytes": 0}, {"duplicate_content": "drop"}, {"x": 1}])
def test_load_options_validate(bad):
    with pytest.raises(ValueError):
        LoadOptions(**bad)
