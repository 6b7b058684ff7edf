#!/usr/bin/env python3
"""A `command:` scorer for revisions with a reference (scripts/r3-texts.py):
reads {inputs: {document}, answer (the reference), output} on stdin and
prints {"score", "passed", "feedback"}. score = the share of the word-level
distance between the document and the reference that the revision removed
(0 when it is no closer, negative values clipped); passed = the revision is
the reference (whitespace aside)."""
import difflib
import json
import sys


def distance(a, b):
    a, b = a.split(), b.split()
    ops = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    return sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in ops if tag != "equal")


v = json.load(sys.stdin)
reference = str(v.get("answer") or "")
document = str((v.get("inputs") or {}).get("document") or "")
output = str(v.get("output") or "")
before, after = distance(document, reference), distance(output, reference)
score = 0.0 if before == 0 else max(0.0, (before - after) / before)
print(json.dumps({
    "score": round(score, 4),
    "passed": " ".join(output.split()) == " ".join(reference.split()),
    "feedback": f"word distance to the reference: {before} before, {after} after",
}))
