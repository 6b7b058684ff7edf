//! JSON as models write it: LaTeX inside strings.
//!
//! A critique of a math answer writes `"\frac{1}{2}"` in a JSON string. To
//! a JSON parser `\f` is a form feed, so the text reaches the next prompt as
//! a control character followed by `rac{1}{2}`; `\sqrt`, `\(` or `\cdot`
//! are not JSON escapes at all and make the whole reply invalid. Before
//! parsing, backslashes inside strings are repaired: an invalid escape keeps
//! its backslash (`\sqrt` → `\\sqrt`), and a valid one that starts a known
//! LaTeX command (`\frac`, `\beta`, `\nabla`, `\right`, `\times`, …) does too.
//! Escapes that mean what JSON says (`\n` before other text, `\"`, `\\`,
//! `\u00e9`) are left alone.

/// LaTeX commands whose first letter makes a valid JSON escape
/// (`\b`, `\f`, `\n`, `\r`, `\t`): written by a model, they are LaTeX.
const LATEX: &[&str] = &[
    "backslash",
    "bar",
    "begin",
    "beta",
    "big",
    "bigcap",
    "bigcup",
    "bigg",
    "bigl",
    "bigoplus",
    "bigr",
    "binom",
    "blacksquare",
    "bm",
    "bmod",
    "boldsymbol",
    "bot",
    "bowtie",
    "boxed",
    "breve",
    "bullet",
    "fbox",
    "flat",
    "footnote",
    "forall",
    "frac",
    "frown",
    "nabla",
    "natural",
    "ne",
    "nearrow",
    "neg",
    "neq",
    "newline",
    "ngeq",
    "ni",
    "nleq",
    "nmid",
    "noindent",
    "nolimits",
    "not",
    "notin",
    "nu",
    "nwarrow",
    "rangle",
    "rbrace",
    "rbrack",
    "rceil",
    "rfloor",
    "rho",
    "right",
    "rightarrow",
    "rm",
    "rvert",
    "tan",
    "tanh",
    "tau",
    "tbinom",
    "text",
    "textbf",
    "textit",
    "textrm",
    "textstyle",
    "texttt",
    "tfrac",
    "therefore",
    "theta",
    "tilde",
    "times",
    "to",
    "top",
    "triangle",
    "triangleq",
];

/// `text` with the backslashes inside JSON strings repaired (see the module
/// docs). Text outside strings is unchanged.
pub fn repair_escapes(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains('\\') {
        return std::borrow::Cow::Borrowed(text);
    }
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 8);
    let mut in_string = false;
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                in_string = !in_string;
                i += 1;
            }
            b'\\' if in_string => {
                let next = b.get(i + 1).copied();
                let keep = match next {
                    Some(b'"' | b'\\' | b'/') => true,
                    Some(b'u') => b
                        .get(i + 2..i + 6)
                        .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)),
                    Some(b'b' | b'f' | b'n' | b'r' | b't') => {
                        let word: String = text[i + 1..]
                            .chars()
                            .take_while(char::is_ascii_alphabetic)
                            .collect();
                        !LATEX.contains(&word.as_str())
                    }
                    _ => false,
                };
                if keep {
                    i += 2;
                } else {
                    // A literal backslash: the LaTeX (or whatever) stays as written.
                    out.push_str(&text[copied..=i]);
                    out.push('\\');
                    i += 1;
                    copied = i;
                }
            }
            _ => i += 1,
        }
    }
    if copied == 0 {
        return std::borrow::Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    std::borrow::Cow::Owned(out)
}

/// Parses JSON a model wrote, escapes repaired.
pub fn parse(text: &str) -> Option<serde_json::Value> {
    serde_json::from_str(&repair_escapes(text)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feedback(raw: &str) -> String {
        parse(raw).unwrap()["feedback"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn latex_in_model_written_json_survives() {
        // Valid JSON escapes that are LaTeX: kept as LaTeX.
        assert_eq!(
            feedback(
                r#"{"feedback": "use \frac{1}{2} and \beta, \nabla f, \right) \times \theta"}"#
            ),
            r"use \frac{1}{2} and \beta, \nabla f, \right) \times \theta"
        );
        // Invalid escapes: kept, and the reply parses at all.
        assert_eq!(
            feedback(r#"{"feedback": "\sqrt{2} \cdot \( x \) \le 3"}"#),
            r"\sqrt{2} \cdot \( x \) \le 3"
        );
        // Real escapes still mean what JSON says.
        assert_eq!(
            feedback(r#"{"feedback": "line\nnext\tcol \"q\" \\ \u00e9 a/b \/"}"#),
            "line\nnext\tcol \"q\" \\ é a/b /"
        );
        // A newline before a word that is not a command stays a newline.
        assert_eq!(feedback(r#"{"feedback": "one\nuse two"}"#), "one\nuse two");
        // Outside strings nothing changes; a `\` there is still invalid JSON.
        assert!(parse(r#"{"a": 1} \frac"#).is_none());
        assert_eq!(repair_escapes(r#"{"a": "plain"}"#), r#"{"a": "plain"}"#);
    }
}
