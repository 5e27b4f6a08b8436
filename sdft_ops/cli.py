"""`sdft-ops` command line.

  sdft-ops demo                 the main job on the embedded default model
  sdft-ops generate -p TEXT     greedy answer from a model (default: the embedded SmolLM2)
"""

from __future__ import annotations

import argparse
import sys
import time

from sdft_ops.models import DEFAULT_MODEL, ModelSpec

SAMPLE_PROMPT = "In one sentence, why do language models forget old skills when fine-tuned?"


def _cmd_generate(args: argparse.Namespace) -> int:
    from sdft_ops.chat import generate_text
    from sdft_ops.models import load_model

    started = time.perf_counter()
    model, tokenizer = load_model(ModelSpec(name_or_path=args.model, device=args.device))
    loaded = time.perf_counter()
    answer = generate_text(
        model, tokenizer, [{"role": "user", "content": args.prompt}], args.max_new_tokens
    )
    print(f"model:  {args.model}  (loaded in {loaded - started:.1f}s)")
    print(f"prompt: {args.prompt}")
    print(f"answer: {answer}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdft-ops", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="greedy answer to one prompt")
    gen.add_argument("-p", "--prompt", default=SAMPLE_PROMPT)
    gen.add_argument("-m", "--model", default=DEFAULT_MODEL, help="built-in name, hub id or folder")
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.set_defaults(func=_cmd_generate)

    demo = sub.add_parser("demo", help="the main job on the embedded default model")
    demo.set_defaults(func=_cmd_generate, prompt=SAMPLE_PROMPT, model=DEFAULT_MODEL,
                      device="cpu", max_new_tokens=64)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, ModuleNotFoundError) as e:
        print(f"sdft-ops: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
