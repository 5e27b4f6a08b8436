"""Freeze the behavioural-drift reference: the base SmolLM2-135M-Instruct's own greedy answers.

Writes `sdft_ops/resources/eval/drift.jsonl`, one line per generic instruction:
{"id", "prompt", "answer", "provenance": {model, gguf_sha256, date, decoding}}. The drift suite
(`sdft_ops/evaluation/suites_drift.py`) scores a candidate by its mean per-token log-prob of
these answers, so the base model sits at its own maximum-likelihood-ish point and any update
that moves generic behaviour lowers the score.

Run once (about a minute on 2 CPU cores); re-running on the same model gives the same answers:

    SDFT_OPS_HOME=.sdft_ops .venv/bin/python scripts/freeze_drift.py
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from sdft_ops.chat import encode_chat
from sdft_ops.engine.sampling import greedy_generate
from sdft_ops.evaluation.suites_io import resource_path
from sdft_ops.models import DEFAULT_MODEL, ModelSpec, builtin_gguf_path, load_model, sha256_file

MAX_NEW_TOKENS = 64

INSTRUCTIONS = [
    "Give me three tips for staying focused while studying.",
    "What is the capital of Australia?",
    "Explain what a noun is.",
    "How do I boil an egg?",
    "Write a haiku about autumn leaves.",
    "What causes the seasons on Earth?",
    "Suggest a name for a pet goldfish.",
    "How many days are in a leap year?",
    "What is the difference between weather and climate?",
    "Give me a simple recipe for a fruit salad.",
    "Why is the sky blue?",
    "Translate 'good morning' into Spanish.",
    "What are the three primary colors?",
    "Write a one-sentence birthday message for my grandmother.",
    "How do plants get their food?",
    "What is 15 multiplied by 4?",
    "Name three animals that live in the Arctic.",
    "Explain what gravity is in simple terms.",
    "What should I pack for a weekend camping trip?",
    "Describe the taste of a lemon.",
    "How can I improve my handwriting?",
    "What is the largest ocean on Earth?",
    "Give me a fun fact about octopuses.",
    "How do I make a paper airplane?",
    "What does a librarian do?",
    "Write a short thank-you note to a teacher.",
    "What is the boiling point of water in Celsius?",
    "Why do we need to sleep?",
    "List four types of renewable energy.",
    "What is a synonym for 'happy'?",
    "How do I start learning to play the guitar?",
    "What is the tallest mountain in the world?",
    "Explain what a computer virus is.",
    "Give me an idea for a rainy day activity with kids.",
    "What is the main job of the heart?",
    "How do I keep houseplants alive?",
    "What is the plural of 'mouse'?",
    "Write a short motivational quote.",
    "What are the phases of the moon?",
    "How do I politely decline an invitation?",
    "What is photosynthesis?",
    "Name the planets in our solar system.",
    "How can I save money on groceries?",
    "What is the difference between a frog and a toad?",
    "Explain how a rainbow forms.",
    "What is a good way to warm up before running?",
    "Who wrote 'Romeo and Juliet'?",
    "Give me three ideas for a healthy breakfast.",
    "What is the freezing point of water in Fahrenheit?",
    "How do I write a good email subject line?",
    "What does DNA stand for?",
    "Describe a cat in three words.",
    "How do bees help flowers?",
    "What is the longest river in the world?",
    "Give me tips for a job interview.",
    "What is an adjective? Give an example.",
    "How do I clean a cast iron pan?",
    "Why do leaves change color in the fall?",
    "What is the square root of 81?",
    "Suggest a book for a ten-year-old who likes adventure.",
    "How does a refrigerator keep food cold?",
    "What are the benefits of drinking water?",
    "Write a two-line poem about the sea.",
    "What is the difference between a virus and bacteria?",
    "How do I tie a shoelace?",
    "What language is spoken in Brazil?",
    "How can I be a better listener?",
    "What is the speed of light?",
    "Give me a simple definition of democracy.",
    "How many continents are there, and what are they?",
    "What is a good stretching routine for the morning?",
    "Explain what a budget is.",
    "How do birds fly?",
    "Write a short story opening about a lost key.",
    "What is the chemical symbol for gold?",
    "How do I make a cup of green tea?",
    "What are some ways to reduce stress?",
    "Why is exercise important?",
    "What does a thermometer measure?",
    "Give me a riddle and its answer.",
    "How do I remove a coffee stain from a shirt?",
    "What is the smallest prime number?",
    "Explain what recycling means.",
    "What is the capital of Japan?",
    "How can I learn new vocabulary faster?",
    "Describe what a desert is like.",
    "What is the purpose of a seatbelt?",
    "How do I convert kilometers to miles?",
    "What is a verb? Give two examples.",
    "Suggest a weekend hobby I could try.",
    "Why do we have day and night?",
    "What are the ingredients of a basic pancake batter?",
    "How do magnets work?",
    "Write a friendly greeting for a new neighbor.",
    "What is the difference between 'their', 'there' and 'they're'?",
    "How often should I water a cactus?",
    "What is the Great Wall of China?",
    "Give me a tip for remembering people's names.",
    "What is a volcano?",
    "How do I calculate the area of a rectangle?",
    "What is the role of the lungs?",
    "Name three famous painters.",
    "How can I make my bedroom more relaxing?",
    "What is an ecosystem?",
    "Explain what a calendar year is.",
    "What is the opposite of 'ancient'?",
    "How do I write a good thank-you card?",
    "What do pandas eat?",
    "Give me a short summary of what the internet is.",
    "What is a healthy bedtime routine?",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=resource_path("drift.jsonl"))
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    model, tokenizer = load_model(ModelSpec())
    model.eval()
    prompts = [encode_chat(tokenizer, [{"role": "user", "content": text}]) for text in INSTRUCTIONS]
    answers = greedy_generate(model, tokenizer, prompts, MAX_NEW_TOKENS, args.batch_size)  # fp32
    provenance = {
        "model": DEFAULT_MODEL,
        "gguf_sha256": sha256_file(builtin_gguf_path()),
        "date": dt.date.today().isoformat(),
        "decoding": {"method": "greedy", "max_new_tokens": MAX_NEW_TOKENS, "dtype": "float32",
                     "chat_template": True, "batch_size": args.batch_size},
    }
    lines = []
    for i, (text, answer) in enumerate(zip(INSTRUCTIONS, answers), start=1):
        if not answer.strip():
            print(f"skipping drift-{i:03d}: empty answer")
            continue
        record = {"id": f"drift-{i:03d}", "prompt": text, "answer": answer, "provenance": provenance}
        lines.append(json.dumps(record, ensure_ascii=False))
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} records to {args.out}")


if __name__ == "__main__":
    main()
