"""sdft_ops.data's rules beyond JSON types: domain names and paths, parse limits, blank text, chat
role order; each breach a problem naming file, line and field."""

from __future__ import annotations


import pytest

from sdft_ops.data import Demonstration, load_demonstrations
from sdft_ops.home import inside
from tests.data_helpers import load_error, only_problem, record, write_lines


# --- domain names and paths -----------------------------------------------------------------


@pytest.mark.parametrize("domain", ["../../escaped", "..", "a..b", "a/b", "a\\b", "/etc", ".hidden",
                                    "-x", "Math", "tool use", "x" * 65, "naïve", "a\x00b"])
def test_domain_must_be_an_identifier(tmp_path, domain):
    path = write_lines(tmp_path, [record("a"), record("b", domain=domain)])
    error = load_error(path)
    problem = only_problem(error)
    assert (problem.line, problem.field) == (2, "domain")
    assert str(error).startswith(f"{path}:2: domain: ") and "\n" not in str(error)
    assert "not a domain name" in problem.message
    with pytest.raises(ValueError, match="not a domain name"):
        Demonstration(**record("b", domain=domain))


@pytest.mark.parametrize("domain", ["tooluse", "a", "0", "med.v2", "my_domain-3", "x" * 64])
def test_good_domain_names_load(tmp_path, domain):
    assert load_demonstrations(write_lines(tmp_path, [record("a", domain=domain)])).domains == [domain]


def test_inside_keeps_paths_under_root(tmp_path):
    assert inside(tmp_path, "domains", "tooluse.json") == (tmp_path / "domains" / "tooluse.json").resolve()
    for parts in (("..", "x"), ("domains", "../../x.json"), ("/etc/passwd",)):
        with pytest.raises(ValueError, match="outside"):
            inside(tmp_path / "home", *parts)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "link").symlink_to(tmp_path.parent)
    with pytest.raises(ValueError, match="outside"):
        inside(tmp_path / "home", "link", "x.json")


# --- parse limits and blank text ------------------------------------------------------------


PREFIX = '{"id": "b", "prompt": "q", "demonstration": "a", "domain": "math", "metadata": '


@pytest.mark.parametrize("line, message", [
    (PREFIX + "[" * 100_000 + "]" * 100_000 + "}", "nested deeper than 64"),
    (PREFIX + '{"k": ' * 65 + "1" + "}" * 65 + "}", "nested deeper than 64"),
    (PREFIX + '{"n": ' + "9" * 5000 + "}}", "5000 digits"),
    (PREFIX + '{"n": -' + "1" * 101 + "}}", "101 digits"),
    (PREFIX + '{"n": NaN}}', "NaN is not valid JSON"),
    (PREFIX + '{"n": -Infinity}}', "-Infinity is not valid JSON"),
    (PREFIX + '{"n": 1e999}}', "overflows a float"),
])
def test_parse_limits_are_problems_with_file_and_line(tmp_path, line, message):
    path = write_lines(tmp_path, [record("a"), line])
    problem = only_problem(error := load_error(path))
    assert problem.line == 2 and message in problem.message
    assert str(error).startswith(f"{path}:2: ")


def test_nesting_at_the_limit_and_brackets_inside_strings_are_fine(tmp_path):
    deep = PREFIX + '{"k": ' * 63 + "1" + "}" * 63 + "}"
    brackets = record("c", demonstration="[[[{{{" * 1000 + '\\"' + "]" * 100)
    dataset = load_demonstrations(write_lines(tmp_path, [record("a"), deep, brackets]))
    assert [r.id for r in dataset.records] == ["a", "b", "c"]


def test_file_size_limit(tmp_path):
    path = write_lines(tmp_path, [record("a"), record("b")])
    problem = only_problem(load_error(path, max_file_bytes=10))
    assert problem.line is None and "max_file_bytes=10" in problem.message


@pytest.mark.parametrize("text", ["\x00", "\u202e", "\u200b\u200b", "\u00a0\u3000", "\ufeff",
                                  "\x1b\x7f", "\u2028\u2029", "\u3164", "\u2060 \u200d"])
@pytest.mark.parametrize("field", ["prompt", "demonstration", "id", "domain"])
def test_invisible_only_text_is_blank(tmp_path, text, field):
    bad = record("b")
    bad[field] = text
    path = write_lines(tmp_path, [record("a"), bad])
    problem = only_problem(load_error(path))
    assert (problem.line, problem.field) == (2, field)
    if field != "domain":  # a domain is also not an identifier; either message is right
        assert "invisible" in problem.message or "whitespace-only" in problem.message


def test_invisible_only_chat_content_is_blank(tmp_path):
    chat = [{"role": "user", "content": "\u200b\x00"}]
    problem = only_problem(load_error(write_lines(tmp_path, [record("a", prompt=chat)])))
    assert problem.field == "prompt[0].content" and "U+200B" in problem.message


def test_text_with_one_visible_character_is_not_blank(tmp_path):
    dataset = load_demonstrations(write_lines(tmp_path, [record("a", demonstration="\u200bx\u202e")]))
    assert dataset.records[0].demonstration == "\u200bx\u202e"


# --- chat role order ------------------------------------------------------------------------


def chat_of(*roles):
    return [{"role": role, "content": f"turn {i}"} for i, role in enumerate(roles)]


@pytest.mark.parametrize("roles, index", [
    (("user", "user"), 1),
    (("system", "system", "user"), 1),
    (("assistant", "user"), 0),
    (("system", "assistant", "user"), 1),
    (("user", "assistant", "assistant", "user"), 2),
    (("user", "system", "user"), 1),
    (("user", "assistant", "system", "assistant", "user"), 2),
])
def test_chat_roles_must_alternate(tmp_path, roles, index):
    path = write_lines(tmp_path, [record("a", prompt=chat_of(*roles))])
    problem = only_problem(error := load_error(path))
    assert (problem.line, problem.field) == (1, "prompt")
    assert f"message [{index}] has role" in problem.message and "alternating" in problem.message
    assert "\n" not in str(error)


@pytest.mark.parametrize("roles", [("user",), ("system", "user"), ("user", "assistant", "user"),
                                   ("system", "user", "assistant", "user", "assistant", "user")])
def test_well_ordered_chats_load(tmp_path, roles):
    dataset = load_demonstrations(write_lines(tmp_path, [record("a", prompt=chat_of(*roles))]))
    assert [m["role"] for m in dataset.records[0].prompt_messages()] == list(roles)


def test_chat_ending_with_system_or_assistant_still_says_end_with_user(tmp_path):
    for roles in (("system",), ("user", "assistant"), ("system", "user", "assistant")):
        problem = only_problem(load_error(write_lines(tmp_path, [record("a", prompt=chat_of(*roles))])))
        assert "end with a user message" in problem.message
