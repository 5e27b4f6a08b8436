"""`sdft-ops` command line: every step of a domain update, and the registry's history.

  sdft-ops demo [--chain F]            the main job: the gated update chain on SmolLM2
  sdft-ops update DEMOS.jsonl          train → eval → gate → register → promote if it passes
  sdft-ops eval MODEL                  score a model folder on the configured suites
  sdft-ops gate REPORT.json            apply the gate policy to an eval report
  sdft-ops promote VERSION --reason .. manual promotion (recorded as such; --force for a
                                       version the gate rejected)
  sdft-ops rollback --reason ..        champion → the previously promoted version (recorded)
  sdft-ops history                     every promotion / rejection / rollback, oldest first
  sdft-ops verify VERSION              a version's recorded weights hash against its files
  sdft-ops submit DEMOS.jsonl          validate a demo file and drop it in the Dagster inbox
  sdft-ops generate -p TEXT            greedy answer from a model

Exit codes: 0 success (a promoted update, a passing gate, a verified version), 3 the gate
rejected, 2 bad input or a failed step (the message says what to fix), 1 a version's files do
not match its hash, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from sdft_ops.models import DEFAULT_MODEL, ModelSpec
from sdft_ops.tracking_recovery import tracking_calls

SAMPLE_PROMPT = "In one sentence, why do language models forget old skills when fine-tuned?"
DEFAULT_CONFIG = "configs/update.yaml"
EXIT_REJECTED = 3


def _config(args: argparse.Namespace):
    from sdft_ops.settings import UpdateConfig

    path = Path(args.config)
    if not path.is_file():
        if args.config != DEFAULT_CONFIG:
            raise FileNotFoundError(f"config file not found: {path}")
        return UpdateConfig()  # built-in defaults when the repo's config is not at hand
    return UpdateConfig.from_yaml(path)


def _registry(args, cfg):
    from sdft_ops.registry import PolicyRegistry

    return PolicyRegistry.from_config(cfg, args.home)


def _cmd_generate(args) -> int:
    from sdft_ops.chat import generate_text
    from sdft_ops.models import load_model

    started = time.perf_counter()
    model, tokenizer = load_model(ModelSpec(name_or_path=args.model, device=args.device))
    loaded = time.perf_counter()
    answer = generate_text(model, tokenizer, [{"role": "user", "content": args.prompt}],
                           args.max_new_tokens)
    print(f"model:  {args.model}  (loaded in {loaded - started:.1f}s)")
    print(f"prompt: {args.prompt}")
    print(f"answer: {answer}")
    return 0


def _cmd_update(args) -> int:
    from sdft_ops.home import data_home
    from sdft_ops.data import load_demonstrations
    from sdft_ops.pipeline import run_update
    from sdft_ops.registry import PolicyRegistry

    cfg = _config(args)
    outcome = run_update(load_demonstrations(args.demos), cfg, update_id=args.update_id, home=args.home)
    print(outcome.decision.to_markdown())
    # report what the registry says now, not what this process meant to do
    champion = PolicyRegistry.from_config(cfg, data_home(args.home)).champion_version()
    promoted = outcome.promoted and champion == outcome.version
    if outcome.promoted and not promoted:
        print(f"\nversion {outcome.version} passed the gate, but the champion is version "
              f"{champion}: another promotion won the race; re-run the update on the new champion")
        return EXIT_REJECTED
    print(f"\nversion {outcome.version}: {'PROMOTED to champion' if promoted else 'rejected'}"
          f"  (MLflow run {outcome.run_id})")
    return 0 if promoted else EXIT_REJECTED


def _cmd_eval(args) -> int:
    from sdft_ops.evaluation.report import build_report
    from sdft_ops.home import data_home
    from sdft_ops.evaluation.battery import score_model, suites_for

    cfg = _config(args)
    home = data_home(args.home)
    suites = suites_for(cfg, home)
    results = score_model(args.model, f"path:{Path(args.model).resolve()}", suites, cfg, home)
    reference = None
    if args.reference:
        reference = score_model(args.reference, f"path:{Path(args.reference).resolve()}", suites,
                                cfg, home)
    report = build_report(args.model, results, reference_ref=args.reference,
                          reference_results=reference, seed=cfg.eval.seed, n_boot=cfg.eval.n_boot)
    print(report.to_markdown())
    if args.out:
        print(f"report written to {report.save(args.out)}")
    return 0


def _cmd_gate(args) -> int:
    from sdft_ops.gate import GatePolicy, decide_from_file
    from sdft_ops.update_state import UpdateState

    cfg = _config(args)
    policy = GatePolicy.from_yaml(args.policy) if args.policy else cfg.gate
    # defaults: the update's own record beside the report, and the registry's champion
    state_file = Path(args.report).parent / "state.json"
    state = UpdateState.model_validate_json(state_file.read_text()) if state_file.is_file() else None
    parent = args.parent if args.parent is not None else (
        state.parent.version if state and state.parent else None)
    domain = args.domain or (state.domain if state else None)
    champion = args.champion if args.champion is not None else _registry(args, cfg).champion_version()
    print(f"gate: parent {parent or 'none (base model)'}, champion {champion or 'none yet'}"
          f"{'' if args.champion is not None else ' (from the registry)'}, domain {domain}",
          file=sys.stderr)
    decision = decide_from_file(args.report, policy, parent_version=parent,
                                champion_version=champion, new_domain=domain)
    if state is not None and state.version is not None:  # the report must be the version's
        from sdft_ops.version_identity import identity_check, with_identity

        tags = _registry(args, cfg).get_version(state.version).tags
        decision = with_identity(decision, identity_check(Path(args.report), state.version, tags))
    print(decision.to_markdown())
    return 0 if decision.promote else EXIT_REJECTED


def _cmd_promote(args) -> int:
    from sdft_ops.registry import TAG_GATE_REASONS, TAG_GATE_VERDICT

    registry = _registry(args, _config(args))
    tags = registry.get_version(args.version).tags
    if tags.get(TAG_GATE_VERDICT) == "reject" and not args.force:
        reasons = " ".join(tags.get(TAG_GATE_REASONS, "no reasons recorded").split())
        raise ValueError(f"the gate rejected version {args.version} ({reasons[:200]}); pass "
                         "--force to promote it anyway (recorded as manual_promote)")
    entry = registry.promote(args.version, args.reason, manual=True)
    print(f"champion: {entry.from_version} → {entry.to_version} (manual, by {entry.who})")
    return 0


def _cmd_rollback(args) -> int:
    entry = _registry(args, _config(args)).rollback(args.reason)
    print(f"champion rolled back: {entry.from_version} → {entry.to_version}")
    return 0


def _cmd_history(args) -> int:
    entries = _registry(args, _config(args)).history()
    if args.json:
        print(json.dumps([e.model_dump(mode="json") for e in entries], indent=1))
        return 0
    if not entries:
        print("no promotions, rejections or rollbacks recorded yet")
    for e in entries:
        print(f"{e.when}  {e.action:<15} v{e.version:<4} champion {e.from_version} → "
              f"{e.to_version}  by {e.who}: {e.why}")
    return 0


def _cmd_verify(args) -> int:
    from sdft_ops.version_identity import verify_version

    ok, line = verify_version(_registry(args, _config(args)), args.version)
    print(line)
    return 0 if ok else 1


def _cmd_submit(args) -> int:
    from sdft_ops.data import load_demonstrations

    dataset = load_demonstrations(args.demos)  # raises with file:line:field on bad input
    inbox = Path(args.inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    dest = inbox / Path(args.demos).name
    if dest.exists():
        raise FileExistsError(f"{dest} is already in the inbox; rename the file for a new update")
    shutil.copyfile(args.demos, dest)
    print(f"{len(dataset)} demonstrations ({dataset.domains}), hash {dataset.content_hash[:12]}, "
          f"queued at {dest}; the Dagster inbox sensor turns it into a partition")
    return 0


def _cmd_demo(args) -> int:
    from sdft_ops.demo import run_demo

    return run_demo(args.chain, home=args.home)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdft-ops", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=DEFAULT_CONFIG, help="update config YAML")
    common.add_argument("--home", default=None, help="data home (default $SDFT_OPS_HOME)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_text):
        p = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = add("demo", _cmd_demo, "the main job: safety, two domain updates and a rushed one, gated")
    p.add_argument("--chain", default=None, help="demo chain YAML (default configs/demo_chain.yaml)")
    p = add("update", _cmd_update, "train, evaluate, gate, register and maybe promote one update")
    p.add_argument("demos", help="demonstrations JSONL")
    p.add_argument("--update-id", default=None)
    p = add("eval", _cmd_eval, "score a model folder on the configured suites")
    p.add_argument("model", help="model folder (safetensors) or hub id")
    p.add_argument("--reference", help="a second model to compute retention against")
    p.add_argument("--out", help="write the EvalReport JSON here")
    p = add("gate", _cmd_gate, "apply the gate policy to an eval report JSON")
    p.add_argument("report")
    p.add_argument("--policy", help="gate policy YAML (default: the config's gate)")
    p.add_argument("--parent", default=None, help="the candidate's parent version (default: "
                   "from the update's state.json beside the report)")
    p.add_argument("--champion", default=None, help="the current champion version (default: "
                   "the registry's)")
    p.add_argument("--domain", default=None, help="the domain this update teaches (judged by "
                   "domain_rule; other domain/* suites by earlier_domain_rule)")
    p = add("promote", _cmd_promote, "manually promote a registered version to champion; a "
            "version the gate rejected is refused unless --force")
    p.add_argument("version")
    p.add_argument("--reason", required=True)
    p.add_argument("--force", action="store_true", help="promote even a version the gate rejected")
    p = add("rollback", _cmd_rollback, "move champion back to the previous promoted version")
    p.add_argument("--reason", required=True)
    p = add("history", _cmd_history, "promotions, rejections and rollbacks, oldest first")
    p.add_argument("--json", action="store_true")
    p = add("verify", _cmd_verify, "check a registered version's weights against its recorded hash")
    p.add_argument("version")
    p = add("submit", _cmd_submit, "validate a demo file and queue it in the Dagster inbox")
    p.add_argument("demos")
    p.add_argument("--inbox", default="inbox", help="the folder the inbox sensor watches")
    p = add("generate", _cmd_generate, "greedy answer to one prompt")
    p.add_argument("-p", "--prompt", default=SAMPLE_PROMPT)
    p.add_argument("-m", "--model", default=DEFAULT_MODEL, help="built-in name, hub id or folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-new-tokens", type=int, default=64)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with tracking_calls():  # bounded MLflow timeouts; a tracking failure in one line
            return args.func(args)
    except KeyboardInterrupt:
        print("sdft-ops: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 — expected failures become exit 2 with the message
        expected = (ValueError, OSError, ModuleNotFoundError, RuntimeError, KeyError)
        if not isinstance(e, expected) and not type(e).__module__.startswith("mlflow"):
            raise  # a bug: keep the traceback
        print(f"sdft-ops: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
