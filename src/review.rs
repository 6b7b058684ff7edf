//! R3-style review of edits: the difference between a text and its revision
//! as a list of word-level edits (insert, replace, delete) with character
//! spans and an intent label, applying the accepted ones, and remembering the
//! rejected ones so they are not proposed again.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use similar::{ChangeTag, TextDiff};

/// Decides the edits of a `human_review` node: a person at a terminal (the
/// CLI's), a web UI, a queue, a policy. The engine asks it when a node's
/// decisions are `ask` (the default) and the run gives no fixed decisions.
///
/// The future may take as long as a person does: the scheduler keeps
/// running other nodes meanwhile, and dropping the future cancels the
/// review (the run was cancelled or stopped), so an implementation must
/// not hold anything that outlives it.
pub trait Reviewer: Send + Sync {
    /// One decision per edit in `req.edits`, in order: `true` accepts.
    fn review<'a>(
        &'a self,
        req: ReviewRequest<'a>,
    ) -> BoxFuture<'a, Result<Vec<bool>, ReviewError>>;
}

/// What a reviewer is asked to decide.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ReviewRequest<'a> {
    pub node: &'a str,
    pub round: u32,
    /// How many times this node has reviewed, this one included.
    pub depth: u32,
    pub before: &'a str,
    pub after: &'a str,
    /// The proposed edits (never empty): spans into `before`.
    pub edits: &'a [Edit],
}

/// A review that could not be made; the node fails with this message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ReviewError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EditKind {
    Insert,
    Replace,
    Delete,
}

/// One proposed edit. `start..end` are character offsets into the text
/// before the revision (`start == end` for an insert).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Edit {
    pub kind: EditKind,
    pub start: usize,
    pub end: usize,
    pub before: String,
    pub after: String,
    /// R3's edit intentions: `fluency`, `clarity`, `coherence`, `style`, or
    /// `meaning-changed` (see [`intent`]).
    pub intent: String,
}

impl Edit {
    /// Equal as far as a reviewer is concerned (position aside): R3 drops a
    /// proposal equal in (before, after, intent, kind) to a rejected one.
    pub fn same_as(&self, other: &Edit) -> bool {
        self.kind == other.kind
            && self.before == other.before
            && self.after == other.after
            && self.intent == other.intent
    }
}

/// The edits that turn `before` into `after`, word by word; neighbouring
/// changed words (with the spaces between them) form one edit.
pub fn edits(before: &str, after: &str) -> Vec<Edit> {
    // A deadline keeps a huge or adversarial pair from stalling the run;
    // past it the diff is coarser but still exact.
    let diff = TextDiff::configure()
        .timeout(std::time::Duration::from_secs(2))
        .diff_words(before, after);
    let mut out = Vec::new();
    // Character position in `before`.
    let mut pos = 0usize;
    let mut pending: Option<(usize, String, String)> = None;
    let flush = |pending: &mut Option<(usize, String, String)>, out: &mut Vec<Edit>| {
        if let Some((start, del, ins)) = pending.take() {
            let kind = match (del.is_empty(), ins.is_empty()) {
                (true, false) => EditKind::Insert,
                (false, true) => EditKind::Delete,
                _ => EditKind::Replace,
            };
            let end = start + del.chars().count();
            let intent = intent(&del, &ins, kind).to_string();
            out.push(Edit {
                kind,
                start,
                end,
                before: del,
                after: ins,
                intent,
            });
        }
    };
    for change in diff.iter_all_changes() {
        let value = change.value();
        match change.tag() {
            ChangeTag::Equal => {
                // Whitespace between two changes belongs to the edit.
                if let Some((_, del, ins)) = &mut pending
                    && value.trim().is_empty()
                    && !del.is_empty()
                {
                    del.push_str(value);
                    ins.push_str(value);
                    pos += value.chars().count();
                    continue;
                }
                flush(&mut pending, &mut out);
                pos += value.chars().count();
            }
            ChangeTag::Delete => {
                let p = pending.get_or_insert_with(|| (pos, String::new(), String::new()));
                p.1.push_str(value);
                pos += value.chars().count();
            }
            ChangeTag::Insert => {
                let p = pending.get_or_insert_with(|| (pos, String::new(), String::new()));
                p.2.push_str(value);
            }
        }
    }
    flush(&mut pending, &mut out);
    // Whitespace swallowed between changes may leave equal tails: trim them.
    for e in &mut out {
        let common = e
            .before
            .chars()
            .rev()
            .zip(e.after.chars().rev())
            .take_while(|(a, b)| a == b && a.is_whitespace())
            .count();
        if common > 0 && e.before.chars().count() > common && e.after.chars().count() > common {
            e.before = e
                .before
                .chars()
                .take(e.before.chars().count() - common)
                .collect();
            e.after = e
                .after
                .chars()
                .take(e.after.chars().count() - common)
                .collect();
            e.end -= common;
        }
    }
    out
}

/// A heuristic intent label (R3 uses a trained classifier): numbers or
/// negations changed → `meaning-changed`; only punctuation, case or
/// whitespace → `fluency`; spelling, inflection or grammatical-word swaps
/// (`teh`→`the`, `finish`→`finished`, `was`→`were`) → `fluency`; a
/// deletion → `clarity`; an insertion → `coherence`; other rewording →
/// `style`.
pub fn intent(before: &str, after: &str, kind: EditKind) -> &'static str {
    let words =
        |s: &str| -> Vec<String> { s.split_whitespace().map(|w| w.to_lowercase()).collect() };
    let meaning = |s: &str| -> Vec<String> {
        words(s)
            .into_iter()
            .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_string())
            .filter(|w| {
                w.chars().any(|c| c.is_ascii_digit())
                    || ["not", "no", "never", "none", "nothing", "cannot"].contains(&w.as_str())
                    || w.ends_with("n't")
            })
            .collect()
    };
    if meaning(before) != meaning(after) {
        return "meaning-changed";
    }
    let letters = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect()
    };
    let (lb, la) = (letters(before), letters(after));
    if lb == la {
        return "fluency";
    }
    match kind {
        EditKind::Delete => "clarity",
        EditKind::Insert => "coherence",
        EditKind::Replace => {
            let (wb, wa) = (words(before), words(after));
            // Same words up to inflection, spelling, or a grammatical word.
            let grammatical = wb.len() == wa.len()
                && wb.iter().zip(&wa).all(|(b, a)| {
                    let (b, a) = (letters(b), letters(a));
                    let shared = b.chars().zip(a.chars()).take_while(|(x, y)| x == y).count();
                    b == a
                        || (FUNCTION_WORDS.contains(&b.as_str())
                            && FUNCTION_WORDS.contains(&a.as_str()))
                        || shared >= 3.min(b.len()).min(a.len()).max(1)
                            && shared * 2 >= b.len().min(a.len())
                        || strsim::damerau_levenshtein(&b, &a) <= 2
                });
            if grammatical { "fluency" } else { "style" }
        }
    }
}

/// Articles, auxiliaries, pronouns and prepositions: swapping one for another
/// is a grammar (fluency) edit.
const FUNCTION_WORDS: &[&str] = &[
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "being", "am", "has", "have",
    "had", "do", "does", "did", "will", "would", "can", "could", "shall", "should", "may", "might",
    "must", "i", "me", "my", "he", "him", "his", "she", "her", "it", "its", "we", "us", "our",
    "they", "them", "their", "this", "that", "these", "those", "in", "on", "at", "of", "for", "to",
    "from", "with", "by", "as", "and", "or", "but", "which", "who", "whom",
];

/// Applies the edits whose `accepted` flag is true, in character order.
/// Edits must not overlap (those from [`edits`] never do).
pub fn apply(before: &str, edits: &[Edit], accepted: &[bool]) -> String {
    let chars: Vec<char> = before.chars().collect();
    let mut chosen: Vec<&Edit> = edits
        .iter()
        .zip(accepted)
        .filter(|(_, a)| **a)
        .map(|(e, _)| e)
        .collect();
    chosen.sort_by_key(|e| (e.start, e.end));
    let mut out = String::with_capacity(before.len());
    let mut at = 0;
    for e in chosen {
        if e.start < at || e.end > chars.len() {
            continue;
        }
        out.extend(&chars[at..e.start]);
        out.push_str(&e.after);
        at = e.end;
    }
    out.extend(&chars[at.min(chars.len())..]);
    out
}

/// A simulated reviewer for evals over texts with a known good version
/// (the item's reference answer): it accepts an edit when applying that
/// edit alone brings the text closer to the reference, word by word, and
/// rejects it otherwise. What a careful person with the reference in mind
/// would do; `redraft eval --review reference`.
#[derive(Debug, Clone)]
pub struct ReferenceReviewer {
    pub reference: String,
}

impl ReferenceReviewer {
    /// One decision per edit, each judged on its own against `before`.
    pub fn decide(&self, before: &str, edits: &[Edit]) -> Vec<bool> {
        let base = word_distance(before, &self.reference);
        edits
            .iter()
            .map(|e| {
                let alone = apply(before, std::slice::from_ref(e), &[true]);
                word_distance(&alone, &self.reference) < base
            })
            .collect()
    }
}

impl Reviewer for ReferenceReviewer {
    fn review<'a>(
        &'a self,
        req: ReviewRequest<'a>,
    ) -> BoxFuture<'a, Result<Vec<bool>, ReviewError>> {
        let decisions = self.decide(req.before, req.edits);
        Box::pin(async move { Ok(decisions) })
    }
}

/// Words inserted or deleted to turn `a` into `b` (a word diff's changes).
pub fn word_distance(a: &str, b: &str) -> usize {
    TextDiff::configure()
        .timeout(std::time::Duration::from_secs(2))
        .diff_words(a, b)
        .iter_all_changes()
        .filter(|c| c.tag() != ChangeTag::Equal && !c.value().trim().is_empty())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_reviewer_accepts_only_edits_toward_the_reference() {
        let before = "The results was good, and we has finish the work on time.";
        let after = "The results were good, and we have finished the work early.";
        let reference = "The results were good, and we have finished the work on time.";
        let proposed = edits(before, after);
        let r = ReferenceReviewer {
            reference: reference.into(),
        };
        let decisions = r.decide(before, &proposed);
        let by_text: Vec<(&str, bool)> = proposed
            .iter()
            .map(|e| e.after.trim())
            .zip(decisions.iter().copied())
            .collect();
        // Grammar fixes in, the meaning change ("on time" → "early") out.
        assert!(by_text.contains(&("were", true)), "{by_text:?}");
        assert!(by_text.contains(&("early.", false)), "{by_text:?}");
        assert_eq!(
            apply(before, &proposed, &decisions),
            reference,
            "{by_text:?}"
        );
        assert_eq!(word_distance(reference, reference), 0);
    }

    #[test]
    fn word_level_edits_with_spans() {
        let before = "The cat sat on teh mat. It was happy.";
        let after = "The cat sat on the mat. It was very happy.";
        let e = edits(before, after);
        assert_eq!(e.len(), 2, "{e:#?}");
        assert_eq!(e[0].kind, EditKind::Replace);
        assert_eq!((e[0].before.as_str(), e[0].after.as_str()), ("teh", "the"));
        assert_eq!(&before[e[0].start..e[0].end], "teh");
        assert_eq!(e[0].intent, "fluency");
        assert_eq!(e[1].kind, EditKind::Insert);
        assert_eq!(e[1].after.trim(), "very");
        assert_eq!(e[1].intent, "coherence");
    }

    #[test]
    fn applying_all_gives_the_revision_and_none_the_original() {
        let cases = [
            ("a b c d", "a x c"),
            ("one two three", "zero one two three four"),
            (
                "Refactor the code. Tests pass.",
                "Refactor code carefully. All tests pass!",
            ),
            ("", "new text"),
            ("old text", ""),
            ("naïve café ok", "naive café fine"),
        ];
        for (before, after) in cases {
            let e = edits(before, after);
            assert_eq!(
                apply(before, &e, &vec![true; e.len()]),
                after,
                "{before:?} → {after:?}: {e:#?}"
            );
            assert_eq!(apply(before, &e, &vec![false; e.len()]), before);
        }
    }

    #[test]
    fn partial_acceptance_applies_only_the_chosen() {
        let before = "I has an apple and a orange.";
        let after = "I have an apple and an orange.";
        let e = edits(before, after);
        assert_eq!(e.len(), 2, "{e:#?}");
        let decisions: Vec<bool> = e.iter().map(|x| x.before == "has").collect();
        assert_eq!(
            apply(before, &e, &decisions),
            "I have an apple and a orange."
        );
        // Neighbouring changed words form one edit.
        let e = edits("I has a apple.", "I have an apple.");
        assert_eq!(
            (e.len(), e[0].before.as_str(), e[0].after.as_str()),
            (1, "has a", "have an")
        );
    }

    #[test]
    fn intents() {
        assert_eq!(
            intent("3 apples", "4 apples", EditKind::Replace),
            "meaning-changed"
        );
        assert_eq!(intent("is", "is not", EditKind::Replace), "meaning-changed");
        assert_eq!(intent("hello,", "Hello.", EditKind::Replace), "fluency");
        assert_eq!(intent("very", "", EditKind::Delete), "clarity");
        assert_eq!(intent("", "however", EditKind::Insert), "coherence");
        assert_eq!(intent("big", "enormous", EditKind::Replace), "style");
        assert_eq!(intent("was", "were", EditKind::Replace), "fluency");
        assert_eq!(
            intent("has finish", "have finished", EditKind::Replace),
            "fluency"
        );
        assert_eq!(intent("quick", "rapid", EditKind::Replace), "style");
    }
}
