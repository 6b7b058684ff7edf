//! Problems found in a workflow file, and how they are shown to a person.
//!
//! Every diagnostic has a stable code (`E0xx`, listed in
//! `docs/workflow-reference.md`), a message, a span, a short label under the
//! offending text and an optional help line. Rendering is plain text in the
//! style of rustc so that it reads well in a terminal and in snapshots.

use std::fmt::Write as _;

use crate::yaml::Span;

/// One problem in a workflow file.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Diagnostic {
    pub code: Code,
    pub message: String,
    /// Where: `line`, `col` (1-based) to `end_line`, `end_col`.
    pub span: Span,
    pub label: String,
    pub help: Option<String>,
    /// Other places that explain this one (e.g. the first definition of a
    /// duplicate), each with its label.
    pub related: Vec<(Span, String)>,
}

impl Diagnostic {
    pub fn new(code: Code, span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            message: message.into(),
            span,
            label: String::new(),
            help: None,
            related: Vec::new(),
        }
    }

    /// Adds a secondary place, shown under the primary one.
    pub fn also(mut self, span: Span, label: impl Into<String>) -> Self {
        self.related.push((span, label.into()));
        self
    }

    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Renders the diagnostic against the source it was found in.
    pub fn render(&self, path: &str, source: &str) -> String {
        let mut out = String::new();
        let level = if self.code.is_warning() {
            "warning"
        } else {
            "error"
        };
        let _ = writeln!(out, "{level}[{}]: {}", self.code.as_str(), self.message);
        let line_no = self.span.line.max(1);
        let _ = writeln!(out, "  --> {}:{}:{}", path, line_no, self.span.col.max(1));
        let lines: Vec<&str> = source.lines().collect();
        let shown = |span: &Span| lines.get(span.line.max(1) as usize - 1).is_some();
        if shown(&self.span) {
            // One gutter width for every line shown.
            let widest = self
                .related
                .iter()
                .map(|(s, _)| s.line)
                .chain([line_no])
                .max()
                .unwrap_or(line_no);
            let pad = " ".repeat(widest.to_string().len());
            let _ = writeln!(out, "{pad} |");
            snippet(&mut out, &pad, &lines, &self.span, '^', &self.label);
            for (span, label) in self.related.iter().filter(|(s, _)| shown(s)) {
                let _ = writeln!(out, "{pad} |");
                snippet(&mut out, &pad, &lines, span, '-', label);
            }
            if let Some(help) = &self.help {
                let _ = writeln!(out, "{pad} = help: {help}");
            }
        } else if let Some(help) = &self.help {
            let _ = writeln!(out, "   = help: {help}");
        }
        out
    }
}

/// One source line with `mark`s under the span and the label after them.
fn snippet(out: &mut String, pad: &str, lines: &[&str], span: &Span, mark: char, label: &str) {
    let line_no = span.line.max(1);
    let text = clip(lines[line_no as usize - 1], 160);
    let start = (span.col.max(1) - 1) as usize;
    let width = if span.end_line != span.line {
        text.chars().count().saturating_sub(start).max(1)
    } else {
        span.end_col.saturating_sub(span.col).max(1) as usize
    };
    let width = width.min(text.chars().count().saturating_sub(start).max(1));
    let _ = writeln!(out, "{line_no:>w$} | {text}", w = pad.len());
    let marks = format!("{}{}", " ".repeat(start), mark.to_string().repeat(width));
    if label.is_empty() {
        let _ = writeln!(out, "{pad} | {marks}");
    } else {
        let _ = writeln!(out, "{pad} | {marks} {label}");
    }
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(max).collect();
        s.push('…');
        s
    }
}

/// Renders a list of diagnostics, separated by blank lines, with a count.
pub fn render_all(diagnostics: &[Diagnostic], path: &str, source: &str) -> String {
    let mut out = String::new();
    for d in diagnostics {
        out.push_str(&d.render(path, source));
        out.push('\n');
    }
    let warnings = diagnostics.iter().filter(|d| d.code.is_warning()).count();
    let errors = diagnostics.len() - warnings;
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let summary = match (errors, warnings) {
        (_, 0) => count(errors, "error"),
        (0, _) => count(warnings, "warning"),
        _ => format!("{}, {}", count(errors, "error"), count(warnings, "warning")),
    };
    let _ = writeln!(out, "{path}: {summary}");
    out
}

macro_rules! codes {
    ($($variant:ident = $code:literal: $doc:literal,)*) => {
        /// Stable diagnostic codes. Never renumber: users search for them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
        pub enum Code { $(#[doc = $doc] $variant,)* }

        impl Code {
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code,)* }
            }
            pub fn description(self) -> &'static str {
                match self { $(Code::$variant => $doc,)* }
            }
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// `W…` codes are warnings: the workflow loads, and they are shown.
            pub fn is_warning(self) -> bool {
                self.as_str().starts_with('W')
            }
        }
    };
}

codes! {
    Io = "E001": "the file cannot be read",
    NotUtf8 = "E002": "the file is not UTF-8 text",
    YamlSyntax = "E003": "YAML syntax error",
    YamlLimit = "E004": "the file exceeds a parser limit (size, depth or alias expansion)",
    Empty = "E005": "the file holds no workflow",
    UnknownKey = "E010": "a key that the format does not define",
    WrongType = "E011": "a value of the wrong type",
    MissingKey = "E012": "a required key is missing",
    BadVersion = "E013": "unsupported or missing `version`",
    InvalidValue = "E014": "a value outside its allowed range or set",
    DuplicateId = "E020": "two nodes, inputs, models or loops share a name",
    UnknownNode = "E021": "a reference to a node that does not exist",
    UnknownModel = "E022": "a node names a model that is not declared",
    Unreachable = "E023": "a node cannot be reached from any start node",
    UnboundedCycle = "E024": "a cycle of edges with no loop (no stop rule)",
    BadLoop = "E025": "a loop whose back edge does not close a cycle, or whose body is malformed",
    NoStart = "E026": "a start node that has an incoming edge",
    MissingPrompt = "E030": "a prompt file that does not exist or cannot be read",
    TemplateSyntax = "E031": "a template that does not parse",
    UnknownVariable = "E032": "a template or condition variable that no input or upstream node provides",
    InvalidCondition = "E033": "a condition expression that does not parse",
    BadCalibration = "E034": "a calibration file that cannot be read, holds no valid calibration, or was fitted for another node",
    BadBudget = "E040": "a budget limit that makes no sense",
    BadOutput = "E050": "an output that names nothing usable",
    BadSchema = "E060": "an invalid JSON Schema",
    BadRegex = "E061": "an invalid regular expression",
    BadModelSpec = "E070": "a model spec string that cannot be parsed",
    ReplyMayNotFit = "W001": "a structured reply whose schema allows (or requires) more than `max_tokens` can hold",
    ModelSuppliedAtRun = "W002": "a model declared without a `spec`: whoever runs the workflow supplies it",
}

/// The closest candidate by edit distance, if it is close enough.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        .filter(|(d, c)| *d <= (name.len().max(c.len()) / 3).max(1) && *d > 0)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_excerpt_label_and_help() {
        let src = "edges:\n  - from: draft\n    to: critque\n";
        let d = Diagnostic::new(
            Code::UnknownNode,
            Span {
                line: 3,
                col: 9,
                end_line: 3,
                end_col: 16,
            },
            "edge target `critque` is not a defined node",
        )
        .label("unknown node")
        .help("did you mean `critique`?");
        let text = d.render("w.yaml", src);
        assert_eq!(
            text,
            "error[E021]: edge target `critque` is not a defined node\n  --> w.yaml:3:9\n  |\n3 |     to: critque\n  |         ^^^^^^^ unknown node\n  = help: did you mean `critique`?\n"
        );
    }

    #[test]
    fn codes_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            assert!(seen.insert(c.as_str()), "duplicate code {}", c.as_str());
        }
    }
}
