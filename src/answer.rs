//! Reading "the answer" out of a model's text: one meaning for every user.
//!
//! A workflow's own checks (verify nodes), `vote`, a guarded loop's
//! answer comparison, the loop metrics and every eval scorer read answers
//! through this module, so a check, its guard and its eval never disagree
//! about one text.
//!
//! The rules, each documented where it is defined:
//! - [`number`]: the final number of a text (`\boxed{}` first; signs,
//!   thousands separators, decimals with or without a leading digit,
//!   exponents, currency and percent signs).
//! - [`extract`]: a regex's **last** match, its first participating group
//!   (else the whole match), trimmed. The final answer comes last.
//! - [`Rule`]: how a workflow key reads an answer (`extract` of a vote,
//!   `answer` of a loop's `metrics` and `accept`): a pattern, or `number`
//!   (the numeric scorer's own reading).
//! - [`same`]: two answers are the same when both read as one number and
//!   the numbers are equal, else when their trimmed texts are.
//! - [`mentions`]: a needle occurring at the start of a word.
//! - [`normalize`]: SQuAD's normalisation.
//! - [`json`]: the JSON value in a reply.
//! - [`yes_no`]: a yes or no that survives Markdown and punctuation.
//!
//! **Invariant:** a leaf (only `modeljson` beside it); every
//! function is total (no panic on any text).

use std::sync::LazyLock;

use regex::Regex;

/// A number as written: a sign not glued to a word before it, a currency
/// sign, digits with `,` thousands groups or plain digits, a fraction
/// (also `.5`), an exponent, a percent sign.
static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?x)
        (?P<sign>[-+−])?
        (?:[$€£¥]\s?)?
        (?P<num>
            (?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?   # 1,200.5  1200  3.14
          | \.\d+                                  # .5
        )
        (?P<exp>[eE][-+]?\d+)?
        %?",
    )
    .expect("a valid number pattern")
});

static BOXED: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\\boxed\s*\{").expect("a valid boxed pattern"));

static FRACTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\s*(-)?\\d?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}\s*$")
        .expect("a valid fraction pattern")
});

/// The final number of a text: the last number inside the last
/// `\boxed{…}` when there is one (a LaTeX final answer; `\frac{a}{b}`
/// there reads as a / b), else the last number of the text.
///
/// `1,200` is 1200 (commas only in groups of three: `1,2,3` is three
/// numbers), `.5` is 0.5, `1e3` is 1000, `$18` is 18, `50%` is 50, `-3`
/// is −3 but the `-` of `3-4` is no sign (4). A trailing full stop ends a
/// sentence (`72.` is 72).
pub fn number(text: &str) -> Option<f64> {
    if let Some(inner) = last_boxed(text) {
        if let Some(c) = FRACTION.captures(inner) {
            let (a, b) = (last_number(&c[2])?, last_number(&c[3])?);
            let sign = if c.get(1).is_some() { -1.0 } else { 1.0 };
            return (b != 0.0).then(|| sign * a / b);
        }
        if let Some(n) = last_number(inner) {
            return Some(n);
        }
    }
    last_number(text)
}

/// How a workflow reads the answer out of a text: a regex (see
/// [`extract`]), or `number`, the final number as the numeric scorer reads
/// it ([`number`], written by [`format_number`]), so a workflow and its
/// eval agree on every answer.
#[derive(Debug, Clone)]
pub enum Rule {
    Pattern(Regex),
    Number,
}

impl Rule {
    /// The answer in `text`, if the rule finds one.
    pub fn read(&self, text: &str) -> Option<String> {
        match self {
            Rule::Pattern(re) => extract(re, text).map(str::to_string),
            Rule::Number => number(text).map(format_number),
        }
    }
}

/// A number as one answer's text: whole numbers without a fraction
/// (`18.0` is `18`), others as Rust writes them; so equal numbers give
/// equal texts.
pub fn format_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// The contents of the last `\boxed{…}` (braces balanced).
fn last_boxed(text: &str) -> Option<&str> {
    let start = BOXED.find_iter(text).last()?.end();
    let mut depth = 1;
    for (i, c) in text[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[start..start + i]);
                }
            }
            _ => {}
        }
    }
    None
}

fn last_number(text: &str) -> Option<f64> {
    NUMBER
        .captures_iter(text)
        .filter_map(|c| read_number(text, &c))
        .last()
}

fn read_number(text: &str, c: &regex::Captures) -> Option<f64> {
    let num = c.name("num")?;
    // A digit glued to letters before it is part of a word (`x2`, `H2O`).
    let before = text[..c.get(0)?.start()].chars().next_back();
    if before.is_some_and(|b| b.is_alphanumeric() || b == '_') && c.name("sign").is_none() {
        return None;
    }
    let negative = match c.name("sign") {
        // `3-4`, `a-1`: a hyphen after a word is no sign.
        Some(s) if matches!(s.as_str(), "-" | "−") => !before.is_some_and(char::is_alphanumeric),
        _ => false,
    };
    let mut digits = num.as_str().replace(',', "");
    if let Some(e) = c.name("exp") {
        digits.push_str(e.as_str());
    }
    let v: f64 = digits.parse().ok()?;
    v.is_finite().then_some(if negative { -v } else { v })
}

/// The number a whole answer is, if it is one and nothing else (`72`,
/// `$1,200`, `\boxed{72}`, `50%`); `None` for `72 apples` or text.
pub fn as_number(answer: &str) -> Option<f64> {
    let t = answer.trim();
    let t = last_boxed(t)
        .filter(|_| t.starts_with("\\boxed"))
        .unwrap_or(t)
        .trim();
    let t = t.strip_suffix('.').unwrap_or(t);
    let c = NUMBER.captures(t)?;
    (c.get(0)?.as_str().len() == t.len())
        .then(|| read_number(t, &c))
        .flatten()
}

/// Whether two numbers are the same answer: within `tolerance`, or, at
/// zero tolerance, equal up to floating-point rounding.
pub fn numbers_match(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance.max(1e-9 * a.abs().max(b.abs()).max(1.0))
}

/// Whether two answers are the same: as numbers when both are one number
/// ([`as_number`]), else as trimmed, non-empty texts.
pub fn same(a: &str, b: &str) -> bool {
    match (as_number(a), as_number(b)) {
        (Some(x), Some(y)) => numbers_match(x, y, 0.0),
        _ => !a.trim().is_empty() && a.trim() == b.trim(),
    }
}

/// The answer a pattern picks out of a text: its **last** match (the final
/// answer comes last), the first group that took part in it (patterns
/// with alternatives), else the whole match; trimmed. `None` without a
/// match.
pub fn extract<'t>(pattern: &Regex, text: &'t str) -> Option<&'t str> {
    let c = pattern.captures_iter(text).last()?;
    c.iter()
        .skip(1)
        .flatten()
        .next()
        .or_else(|| c.get(0))
        .map(|m| m.as_str().trim())
}

/// Whether `text` mentions `needle`: it occurs starting at a word boundary
/// ("test" is in "tests" and "testing", not in "attest"). An empty needle
/// is mentioned everywhere.
pub fn mentions(text: &str, needle: &str, ignore_case: bool) -> bool {
    if needle.is_empty() {
        return true;
    }
    let (text, needle) = if ignore_case {
        (text.to_lowercase(), needle.to_lowercase())
    } else {
        (text.to_string(), needle.to_string())
    };
    text.match_indices(&needle).any(|(i, _)| {
        !text[..i]
            .chars()
            .next_back()
            .is_some_and(char::is_alphanumeric)
    })
}

/// SQuAD's answer normalisation: lower case, punctuation and the articles
/// a/an/the dropped, whitespace folded.
pub fn normalize(s: &str) -> String {
    let no_punct: String = s
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() {
                c
            } else {
                ' '
            }
        })
        .collect();
    no_punct
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The JSON value in a model's reply: the whole reply, a fenced block, or
/// the outermost `{...}` / `[...]`; LaTeX backslashes in strings repaired
/// (`modeljson`).
pub fn json(text: &str) -> Option<serde_json::Value> {
    let t = text.trim();
    if let Some(v) = crate::modeljson::parse(t) {
        return Some(v);
    }
    if let Some(start) = t.find("```") {
        let body = &t[start + 3..];
        let body = body.strip_prefix("json").unwrap_or(body);
        if let Some(end) = body.find("```") {
            if let Some(v) = crate::modeljson::parse(body[..end].trim()) {
                return Some(v);
            }
        }
    }
    for (open, close) in [('{', '}'), ('[', ']')] {
        if let (Some(a), Some(b)) = (t.find(open), t.rfind(close)) {
            if a < b {
                if let Some(v) = crate::modeljson::parse(&t[a..=b]) {
                    return Some(v);
                }
            }
        }
    }
    None
}

/// A reply's yes or no: its first word, past Markdown and punctuation
/// (`**Yes**`, `Yes.`, `# No`, `> yes,`, `"No"`). `None` when the first
/// word is neither.
pub fn yes_no(text: &str) -> Option<bool> {
    let first = text
        .split(|c: char| !c.is_alphanumeric())
        .find(|w| !w.is_empty())?
        .to_lowercase();
    match first.as_str() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// The hard cases of [`number`] are one table in `tests/it/answers.rs`,
/// run through this module and through every user of it.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_reads_a_pattern_or_the_scorers_number() {
        let text = r"The answer is: 7. Final: \boxed{18.0}";
        let pattern = Rule::Pattern(Regex::new(r"answer is:?\s*(\d+)").unwrap());
        assert_eq!(pattern.read(text).as_deref(), Some("7"));
        assert_eq!(Rule::Number.read(text).as_deref(), Some("18"));
        assert_eq!(Rule::Number.read("no digits"), None);
    }

    #[test]
    fn a_whole_answer_is_a_number_or_not() {
        for (text, want) in [
            ("72", Some(72.0)),
            (" $1,200 ", Some(1200.0)),
            ("\\boxed{72}", Some(72.0)),
            ("50%", Some(50.0)),
            ("72.", Some(72.0)),
            (".5", Some(0.5)),
            ("72 apples", None),
            ("seventy-two", None),
            ("", None),
        ] {
            assert_eq!(as_number(text), want, "{text:?}");
        }
        assert!(same("1,200", "1200"));
        assert!(same("\\boxed{72}", "72"));
        assert!(same("0.5", ".5"));
        assert!(!same("72", "73"));
        assert!(same("Paris", " Paris "));
        assert!(!same("", ""));
        assert!(numbers_match(0.1 + 0.2, 0.3, 0.0));
        assert!(numbers_match(10.0, 10.4, 0.5));
    }

    #[test]
    fn a_pattern_takes_the_last_match_and_its_first_group() {
        let re = Regex::new(r"answer is (\d+)|#### (\d+)").unwrap();
        assert_eq!(
            extract(&re, "the answer is 3, no, the answer is 4"),
            Some("4")
        );
        assert_eq!(extract(&re, "work... #### 18"), Some("18"));
        assert_eq!(extract(&Regex::new(r"\d+").unwrap(), "1 then 2"), Some("2"));
        assert_eq!(extract(&re, "nothing"), None);
    }

    #[test]
    fn mentions_start_at_a_word() {
        assert!(mentions("Green Tests keep watch", "test", true));
        assert!(mentions("testing, testing", "test", true));
        assert!(!mentions("I attest to it", "test", true));
        assert!(!mentions("Green Tests", "test", false));
        assert!(mentions("(test)", "test", false));
        assert!(mentions(
            &normalize("The Eiffel Tower!"),
            &normalize("eiffel"),
            false
        ));
        assert!(!mentions(
            &normalize("teleiffel"),
            &normalize("eiffel"),
            false
        ));
    }

    #[test]
    fn yes_and_no_survive_markdown_and_punctuation() {
        for (text, want) in [
            ("Yes", Some(true)),
            ("**Yes**, it is right.", Some(true)),
            ("Yes.", Some(true)),
            ("# No", Some(false)),
            ("> no, because", Some(false)),
            ("\"No\"", Some(false)),
            ("Nope", None),
            ("Yesterday", None),
            ("", None),
        ] {
            assert_eq!(yes_no(text), want, "{text:?}");
        }
    }

    #[test]
    fn json_is_found_in_prose() {
        assert_eq!(
            json("Sure!\n```json\n{\"a\": 1}\n```"),
            Some(serde_json::json!({"a": 1}))
        );
        assert_eq!(
            json("Here: {\"a\": [1]} ok"),
            Some(serde_json::json!({"a": [1]}))
        );
        assert_eq!(json("none"), None);
    }
}
