#!/usr/bin/env python3
"""A `command:` scorer for revisions with a reference (scripts/r3-texts.py):
reads {inputs: {document}, answer (the reference), output} on stdin and
prints {"score", "passed", "feedback"}. score = (before − after) / max(before,
after), before and after being the word-level distances of the document and
of the revision to the reference: the share of the distance the revision
removed when it came closer, and minus the share of its own distance it added
when it moved away (an accept-everything arm's harm shows; nothing is
clipped); passed = the revision is the reference (whitespace aside)."""
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
score = 0.0 if max(before, after) == 0 else (before - after) / max(before, after)
print(json.dumps({
    "score": round(score, 4),
    "passed": " ".join(output.split()) == " ".join(reference.split()),
    "feedback": f"word distance to the reference: {before} before, {after} after",
}))
