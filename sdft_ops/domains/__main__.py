"""`python -m sdft_ops.domains [--out DIR] [--seed N] [--check]`: write (or check) the
domain files; by default the shipped ones in `sdft_ops/resources/domains/`."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from sdft_ops.domains import DOMAINS, shipped_dir, write_domain_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdft_ops.domains",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=shipped_dir(), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the files in --out differ from the code's")
    args = parser.parse_args(argv)
    if args.seed != 0 and args.out.resolve() == shipped_dir():
        parser.error("the shipped files are seed 0; pass --out DIR to write another seed")
    if not args.check:
        for path in write_domain_files(args.out, args.seed):
            print(f"wrote {path} ({sum(1 for _ in path.open(encoding='utf-8'))} lines)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        stale = [path.name for path in write_domain_files(tmp, args.seed)
                 if not (args.out / path.name).is_file()
                 or (args.out / path.name).read_bytes() != path.read_bytes()]
    if stale:
        print(f"out of date in {args.out}: {', '.join(stale)}; regenerate with "
              "`python -m sdft_ops.domains`", file=sys.stderr)
        return 1
    print(f"{len(DOMAINS)} domains up to date in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
