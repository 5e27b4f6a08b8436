"""The `sdft-ops` CLI in-process (`sdft_ops.cli.main`) against a real MLflow sqlite store in a
temporary data home, with tiny models: a chain of two `update` commands (a gentle SDFT update
promoted → exit 0, a damaging SFT update rejected → exit 3) runs once per module; the registry
commands (history, promote, rollback), gate, eval, submit, and the error paths (exit 2) build on it.
"""

import contextlib
import io
import json
from pathlib import Path

import pytest
import yaml

from sdft_ops import cli
from sdft_ops.domains import load_shipped
from sdft_ops.registry import PolicyRegistry
from tests.pipeline_helpers import DAMAGING, tiny_base, tiny_config

SUBCOMMANDS = ("demo", "update", "eval", "gate", "promote", "rollback", "history", "verify",
               "submit", "generate")


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one `sdft-ops` command run in-process."""
    capsys.readouterr()  # drop anything printed before
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class Chain:
    """What the module fixture made: paths, and the two update commands' results."""

    def __init__(self, root: Path, home: Path, base: Path, config: Path, bad_config: Path):
        self.root, self.home, self.base, self.config, self.bad_config = root, home, base, config, bad_config
        self.first: tuple[int, str, str] | None = None
        self.second: tuple[int, str, str] | None = None

    def registry(self) -> PolicyRegistry:
        return PolicyRegistry(None, home=self.home)

    def history(self) -> list[tuple[str, str, str | None, str | None]]:
        return [(e.action, e.version, e.from_version, e.to_version) for e in self.registry().history()]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def chain(tmp_path_factory, one_torch_thread):
    """Two `sdft-ops update` commands through the CLI: a good one (promoted), a damaging one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # the store must be the temp home's sqlite
        root = tmp_path_factory.mktemp("cli")
        base = tiny_base(root / "base")
        data = tiny_config(base).model_dump(mode="json")
        config = write_config(root / "update.yaml", data)
        bad = json.loads(json.dumps(data))
        bad["train"].update(DAMAGING)
        bad_config = write_config(root / "damaging.yaml", bad)
        c = Chain(root, root / "home", base, config, bad_config)
        good_demos = load_shipped("tooluse")[0].write_jsonl(root / "tooluse.jsonl")
        bad_demos = load_shipped("knowledge")[0].write_jsonl(root / "knowledge.jsonl")

        def run(*argv):  # capsys is function-scoped: capture by hand here
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main([str(a) for a in argv])
            return code, out.getvalue(), err.getvalue()

        c.first = run("update", good_demos, "--update-id", "u1", "--home", c.home, "--config", config)
        c.second = run("update", bad_demos, "--update-id", "u2", "--home", c.home,
                       "--config", bad_config)
        yield c


# ---------------------------------------------------------------------------- update


def test_good_update_promoted_exit_0(chain):
    code, out, err = chain.first
    assert code == 0, (out, err)
    assert "Gate verdict: ✅ PROMOTE" in out
    assert "version 1: PROMOTED to champion" in out
    assert (chain.home / "updates" / "u1" / "eval_report.json").is_file()


def test_damaging_update_rejected_exit_3(chain):
    code, out, err = chain.second
    assert code == cli.EXIT_REJECTED == 3, (out, err)
    assert "Gate verdict: ❌ REJECT" in out
    assert "version 2: rejected" in out
    assert "drift: max_drop failed" in out
    decision = json.loads((chain.home / "updates" / "u2" / "gate_decision.json").read_text())
    assert decision["promote"] is False
    assert chain.registry().champion_version() == "1"


# ---------------------------------------------------------------------------- registry commands


def test_history_lists_promote_then_reject(chain, capsys):
    code, out, err = run_cli(capsys, "history", "--home", chain.home, "--config", chain.config)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) >= 2, out  # later tests may have appended manual actions
    assert "promote" in lines[0] and "v1" in lines[0] and "champion None → 1" in lines[0]
    assert "reject" in lines[1] and "v2" in lines[1] and "champion 1 → 1" in lines[1]
    assert "u2: " in lines[1] and "drift" in lines[1]  # the reason the gate gave

    code, out, _ = run_cli(capsys, "history", "--json", "--home", chain.home, "--config", chain.config)
    assert code == 0
    entries = json.loads(out)
    assert len(entries) == len(lines)
    assert [(e["seq"], e["action"], e["version"], e["from_version"], e["to_version"])
            for e in entries[:2]] == [(1, "promote", "1", None, "1"), (2, "reject", "2", "1", "1")]


def test_manual_promote_rollback_and_rollback_again(chain, capsys):
    """promote 2 (manual; the gate rejected it, so only with --force) → rollback to 1 → rollback
    again refused; all in one test, since each step depends on the one before."""
    assert chain.registry().champion_version() == "1"
    n = len(chain.history())

    code, out, err = run_cli(capsys, "promote", "2", "--reason", "x", "--home", chain.home,
                             "--config", chain.config)
    assert code == 2 and "gate rejected version 2" in err and "--force" in err  # the gate said no
    code, out, err = run_cli(capsys, "promote", "2", "--reason", "x", "--force", "--home",
                             chain.home, "--config", chain.config)
    assert code == 0, err
    assert "champion: 1 → 2 (manual" in out
    assert chain.registry().champion_version() == "2"
    code, out, _ = run_cli(capsys, "history", "--json", "--home", chain.home, "--config", chain.config)
    entries = json.loads(out)
    assert len(entries) == n + 1
    assert [e["action"] for e in entries[:2]] == ["promote", "reject"]
    assert (entries[-1]["action"], entries[-1]["version"], entries[-1]["from_version"],
            entries[-1]["to_version"], entries[-1]["why"]) == ("manual_promote", "2", "1", "2", "x")
    code, out, _ = run_cli(capsys, "history", "--home", chain.home, "--config", chain.config)
    assert "manual_promote" in out.strip().splitlines()[-1]

    code, out, err = run_cli(capsys, "rollback", "--reason", "y", "--home", chain.home,
                             "--config", chain.config)
    assert code == 0, err
    assert "champion rolled back: 2 → 1" in out
    assert chain.registry().champion_version() == "1"
    assert chain.history()[-1] == ("rollback", "1", "2", "1")
    assert chain.registry().history()[-1].why == "y"

    before = chain.history()
    code, out, err = run_cli(capsys, "rollback", "--reason", "again", "--home", chain.home,
                             "--config", chain.config)
    assert code == 2
    assert err.startswith("sdft-ops: error:")
    assert "no earlier champion to roll back to" in err
    assert chain.registry().champion_version() == "1"
    assert chain.history() == before  # nothing recorded

    code, _, err = run_cli(capsys, "promote", "1", "--reason", "z", "--home", chain.home,
                           "--config", chain.config)
    assert code == 2
    assert "version 1 is already the champion" in err
    assert chain.history() == before


def test_promote_unknown_version_exit_2(chain, capsys):
    code, _, err = run_cli(capsys, "promote", "99", "--reason", "z", "--home", chain.home,
                           "--config", chain.config)
    assert code == 2
    assert "no version '99'" in err


# ---------------------------------------------------------------------------- gate, eval


def test_gate_on_rejected_report_exit_3(chain, capsys):
    report = chain.home / "updates" / "u2" / "eval_report.json"
    code, out, err = run_cli(capsys, "gate", report, "--parent", "1", "--champion", "1",
                             "--home", chain.home, "--config", chain.config)
    assert code == 3, err
    assert "Gate verdict: ❌ REJECT" in out
    assert "Failed:" in out and "- drift: max_drop failed" in out

    code, out, _ = run_cli(capsys, "gate", chain.home / "updates" / "u1" / "eval_report.json",
                           "--parent", "1", "--champion", "1", "--home", chain.home, "--config", chain.config)
    assert code == 0, out
    assert "Gate verdict: ✅ PROMOTE" in out


def test_gate_reads_the_champion_from_the_registry_and_the_parent_from_the_update(chain, capsys):
    """Without --champion the registry's champion counts (it once said "no champion yet" while
    version 1 was champion): u1 was trained from the base model, so re-gating it now is stale."""
    code, out, err = run_cli(capsys, "gate", chain.home / "updates" / "u1" / "eval_report.json",
                             "--home", chain.home, "--config", chain.config)
    assert code == 3, out
    assert "champion 1 (from the registry)" in err and "parent none (base model)" in err
    assert "parent_is_champion failed" in out and "champion is version 1" in out


def test_gate_on_corrupt_report_fails_closed(chain, capsys, tmp_path):
    corrupt = tmp_path / "corrupt_report.json"
    corrupt.write_text('{"model_ref": "x", ')
    code, out, err = run_cli(capsys, "gate", corrupt, "--home", chain.home, "--config", chain.config)
    assert code == 3, err
    assert "❌ REJECT" in out
    assert "report_readable failed" in out
    assert str(corrupt) in out


def test_gate_policy_file_overrides_config(chain, capsys, tmp_path):
    good_report = chain.home / "updates" / "u1" / "eval_report.json"
    strict = tmp_path / "strict_gate.yaml"
    strict.write_text(yaml.safe_dump({"default_rule": {"max_drop": 0.5},
                                      "required_suites": ["drift", "not_scored_suite"]}))
    code, out, err = run_cli(capsys, "gate", good_report, "--policy", strict,
                             "--home", chain.home, "--config", chain.config)
    assert code == 3, err
    assert "- not_scored_suite: required failed" in out

    broken = tmp_path / "broken_gate.yaml"
    broken.write_text("default_rule: [unclosed\n")
    code, out, err = run_cli(capsys, "gate", good_report, "--policy", broken,
                             "--home", chain.home, "--config", chain.config)
    assert code == 2
    assert f"gate policy {broken} is not valid YAML" in err


def test_eval_writes_report(chain, capsys, tmp_path):
    out_file = tmp_path / "r.json"
    code, out, err = run_cli(capsys, "eval", chain.base, "--out", out_file, "--home", chain.home,
                             "--config", chain.config)
    assert code == 0, err
    assert out_file.is_file()
    report = json.loads(out_file.read_text())
    assert report["model_ref"] == str(chain.base)
    assert {"drift", "arc_easy", "domain/tooluse"} <= set(report["results"])
    assert "domain/knowledge" not in report["results"]  # u2 (knowledge) was rejected: not taught
    table = out.split("report written")[0]
    assert f"# Evaluation: `{chain.base}`" in table
    assert "drift" in table and "domain/tooluse" in table
    assert f"report written to {out_file}" in out


def test_eval_against_reference(chain, capsys, tmp_path):
    out_file = tmp_path / "vs_base.json"
    candidate = chain.home / "updates" / "u1" / "model"
    code, out, err = run_cli(capsys, "eval", candidate, "--reference", chain.base, "--out", out_file,
                             "--home", chain.home, "--config", chain.config)
    assert code == 0, err
    report = json.loads(out_file.read_text())
    assert report["model_ref"] == str(candidate) and report["reference_ref"] == str(chain.base)
    drift = report["retention"]["drift"]
    assert drift["difference"] == pytest.approx(drift["candidate_score"] - drift["reference_score"])
    assert drift["difference"] > -0.05  # the promoted update did not damage the drift suite


def test_generate_with_tiny_model(chain, capsys):
    code, out, err = run_cli(capsys, "generate", "-m", chain.base, "-p", "Say hello.",
                             "--max-new-tokens", "4")
    assert code == 0, err
    assert f"model:  {chain.base}" in out and "prompt: Say hello." in out and "answer:" in out


# ---------------------------------------------------------------------------- submit


def test_submit_good_file_copied_to_inbox(capsys, tmp_path):
    demos = load_shipped("triage")[0]
    src = demos.write_jsonl(tmp_path / "week4.jsonl")
    inbox = tmp_path / "inbox"
    code, out, err = run_cli(capsys, "submit", src, "--inbox", inbox)
    assert code == 0, err
    assert (inbox / "week4.jsonl").read_bytes() == src.read_bytes()
    assert f"{len(demos)} demonstrations" in out and str(inbox / "week4.jsonl") in out

    # the same name again is refused: the inbox keeps one file per update
    code, _, err = run_cli(capsys, "submit", src, "--inbox", inbox)
    assert code == 2
    assert "already in the inbox" in err


def test_submit_bad_file_exit_2_names_line(capsys, tmp_path):
    good = load_shipped("triage")[0].write_jsonl(tmp_path / "good.jsonl")
    first = good.read_text().splitlines()[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(first + "\n" + '{"id": "broken", "prompt": \n')
    inbox = tmp_path / "inbox"
    code, out, err = run_cli(capsys, "submit", bad, "--inbox", inbox)
    assert code == 2
    assert f"{bad}:2" in err
    assert not (inbox / "bad.jsonl").exists()


# ---------------------------------------------------------------------------- bad input


def test_update_missing_demos_exit_2(chain, capsys, tmp_path):
    missing = tmp_path / "nope.jsonl"
    code, _, err = run_cli(capsys, "update", missing, "--home", tmp_path / "home2",
                           "--config", chain.config)
    assert code == 2
    assert "file not found" in err and "nope.jsonl" in err


def test_config_with_unknown_key_exit_2(chain, capsys, tmp_path):
    data = yaml.safe_load(chain.config.read_text())
    data["train"]["learnin_rate"] = 1e-4
    bad = write_config(tmp_path / "typo.yaml", data)
    code, _, err = run_cli(capsys, "history", "--home", tmp_path / "home3", "--config", bad)
    assert code == 2
    assert "invalid update config" in err and "learnin_rate" in err


def test_missing_config_file_exit_2(capsys, tmp_path):
    code, _, err = run_cli(capsys, "history", "--home", tmp_path / "h", "--config",
                           tmp_path / "absent.yaml")
    assert code == 2
    assert "config file not found" in err


def test_interrupt_exit_130(monkeypatch, capsys, tmp_path):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_history", interrupted)
    code, _, err = run_cli(capsys, "history", "--home", tmp_path / "h")
    assert code == 130
    assert "interrupted" in err


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help_exits_0(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert f"sdft-ops {command}" in out and "--config" in out


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in SUBCOMMANDS:
        assert command in out
