//! A YAML tree that remembers where every value came from.
//!
//! The workflow loader needs two things serde-based YAML crates do not give
//! together: the position of *every* node (so that it can report all problems
//! at once, each with `line:col`), and hard limits that make hostile input
//! cheap to reject. This module builds that tree from `saphyr-parser` events.
//!
//! **Invariant:** parsing never panics and never does more than
//! [`Limits::max_nodes`] node allocations, whatever the input: alias bombs,
//! deep nesting and huge files all end in a [`YamlError`] quickly.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, Span as RawSpan};

/// A position range in the source, 1-based lines and columns (in characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Span {
    pub line: u32,
    pub col: u32,
    pub end_line: u32,
    pub end_col: u32,
}

impl Span {
    fn from_raw(raw: &RawSpan) -> Span {
        Span {
            line: raw.start.line() as u32,
            col: raw.start.col() as u32 + 1,
            end_line: raw.end.line() as u32,
            end_col: raw.end.col() as u32 + 1,
        }
    }

    /// A zero-width span at a point.
    pub fn point(line: u32, col: u32) -> Span {
        Span {
            line,
            col,
            end_line: line,
            end_col: col,
        }
    }
}

/// A YAML value with its span.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub span: Span,
    pub value: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// The YAML type name used in error messages ("a mapping", "a string").
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// Converts to JSON (for schemas, defaults and free-form settings).
    /// Map keys that are not strings are rendered as their YAML text.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| {
                        let key = match &k.value {
                            Value::Str(s) => s.clone(),
                            other => scalar_text(other),
                        };
                        (key, v.to_json())
                    })
                    .collect(),
            ),
        }
    }

    /// Looks up a key in a mapping node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(&k.value, Value::Str(s) if s == key))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Str(s) => s.clone(),
        Value::Seq(_) => "[list]".into(),
        Value::Map(_) => "{mapping}".into(),
    }
}

/// Resource limits for parsing untrusted YAML.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted input, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted nesting of lists and mappings.
    pub max_depth: usize,
    /// Most nodes the tree may hold, counting every alias expansion.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 1 << 20,
            max_depth: 64,
            max_nodes: 200_000,
        }
    }
}

/// Why a YAML document could not be turned into a tree.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct YamlError {
    pub message: String,
    pub span: Span,
    /// A stable short reason, used for the diagnostic code.
    pub kind: YamlErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YamlErrorKind {
    Syntax,
    /// A key written twice in one mapping; the span is the first one's.
    DuplicateKey(Span),
    TooLarge,
    TooDeep,
    TooManyNodes,
    Empty,
    MultipleDocuments,
}

/// Parses one YAML document into a [`Node`] tree.
pub fn parse(source: &str, limits: Limits) -> Result<Node, YamlError> {
    if source.len() > limits.max_bytes {
        return Err(YamlError {
            message: format!(
                "the file is {} bytes; the limit is {} bytes",
                source.len(),
                limits.max_bytes
            ),
            span: Span::point(1, 1),
            kind: YamlErrorKind::TooLarge,
        });
    }
    Builder {
        limits,
        nodes: 0,
        anchors: HashMap::new(),
        stack: Vec::new(),
        root: None,
        docs: 0,
    }
    .run(source)
}

enum Frame {
    Seq {
        start: Span,
        anchor: usize,
        items: Vec<Node>,
    },
    /// `merged[i]` marks entries that came from a `<<` merge key.
    Map {
        start: Span,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        merged: Vec<bool>,
        key: Option<Node>,
    },
}

struct Builder {
    limits: Limits,
    nodes: usize,
    anchors: HashMap<usize, (Node, usize)>,
    stack: Vec<Frame>,
    root: Option<Node>,
    docs: usize,
}

impl Builder {
    fn run(mut self, source: &str) -> Result<Node, YamlError> {
        let mut last_span = Span::point(1, 1);
        for item in Parser::new_from_str(source) {
            let (event, raw) = item.map_err(|e| YamlError {
                message: e.info().to_string(),
                span: Span::point(e.marker().line() as u32, e.marker().col() as u32 + 1),
                kind: YamlErrorKind::Syntax,
            })?;
            let span = Span::from_raw(&raw);
            last_span = span;
            self.event(event, span)?;
        }
        self.root.ok_or(YamlError {
            message: "the document is empty".into(),
            span: last_span,
            kind: YamlErrorKind::Empty,
        })
    }

    fn count(&mut self, n: usize, span: Span) -> Result<(), YamlError> {
        self.nodes += n;
        if self.nodes > self.limits.max_nodes {
            return Err(YamlError {
                message: format!(
                    "the document expands to more than {} values (alias expansion counts); \
                     refusing to build it",
                    self.limits.max_nodes
                ),
                span,
                kind: YamlErrorKind::TooManyNodes,
            });
        }
        Ok(())
    }

    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), YamlError> {
        match event {
            Event::DocumentStart(_) => {
                self.docs += 1;
                if self.docs > 1 {
                    return Err(YamlError {
                        message: "expected one YAML document, found a second one".into(),
                        span,
                        kind: YamlErrorKind::MultipleDocuments,
                    });
                }
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.count(1, span)?;
                let is_str_tag = tag.as_ref().is_some_and(|t| t.suffix == "str");
                let value = if style == ScalarStyle::Plain && !is_str_tag {
                    resolve_plain(&text)
                } else {
                    Value::Str(text.into_owned())
                };
                self.push(Node { span, value }, anchor)?;
            }
            Event::SequenceStart(anchor, _) => {
                self.open(span)?;
                self.stack.push(Frame::Seq {
                    start: span,
                    anchor,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(anchor, _) => {
                self.open(span)?;
                self.stack.push(Frame::Map {
                    start: span,
                    anchor,
                    entries: Vec::new(),
                    merged: Vec::new(),
                    key: None,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match self.stack.pop() {
                    Some(Frame::Seq {
                        start,
                        anchor,
                        items,
                    }) => (
                        Node {
                            span: merge(start, span),
                            value: Value::Seq(items),
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        start,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Node {
                            span: merge(start, span),
                            value: Value::Map(entries),
                        },
                        anchor,
                    ),
                    None => return Ok(()),
                };
                self.push(node, anchor)?;
            }
            Event::Alias(id) => {
                let Some((node, size)) = self.anchors.get(&id) else {
                    return Err(YamlError {
                        message: "alias refers to an unknown anchor".into(),
                        span,
                        kind: YamlErrorKind::Syntax,
                    });
                };
                let (mut node, size) = (node.clone(), *size);
                self.count(size, span)?;
                node.span = span;
                self.push(node, 0)?;
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentEnd | Event::Nothing => {}
        }
        Ok(())
    }

    fn open(&mut self, span: Span) -> Result<(), YamlError> {
        self.count(1, span)?;
        if self.stack.len() >= self.limits.max_depth {
            return Err(YamlError {
                message: format!("nesting is deeper than {} levels", self.limits.max_depth),
                span,
                kind: YamlErrorKind::TooDeep,
            });
        }
        Ok(())
    }

    fn push(&mut self, node: Node, anchor: usize) -> Result<(), YamlError> {
        if anchor != 0 {
            let size = tree_size(&node);
            self.anchors.insert(anchor, (node.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map {
                entries,
                merged,
                key,
                ..
            }) => match key.take() {
                None => *key = Some(node),
                Some(k) => insert_entry(entries, merged, k, node)?,
            },
        }
        Ok(())
    }
}

/// Adds a mapping entry, expanding YAML merge keys (`<<: *defaults`):
/// merged entries never override keys written explicitly, and a key written
/// twice is an error.
fn insert_entry(
    entries: &mut Vec<(Node, Node)>,
    merged: &mut Vec<bool>,
    key: Node,
    value: Node,
) -> Result<(), YamlError> {
    let is_merge = matches!(&key.value, Value::Str(s) if s == "<<");
    let sources: Vec<Node> = match value.value {
        Value::Map(_) if is_merge => vec![value],
        Value::Seq(items) if is_merge && items.iter().all(|i| matches!(i.value, Value::Map(_))) => {
            items
        }
        value_kind => {
            let value = Node {
                span: value.span,
                value: value_kind,
            };
            match entries.iter().position(|(e, _)| e.value == key.value) {
                Some(i) if merged[i] => {
                    entries[i] = (key, value);
                    merged[i] = false;
                }
                Some(i) => {
                    return Err(YamlError {
                        message: format!(
                            "duplicate key `{}` in a mapping",
                            scalar_text(&key.value)
                        ),
                        span: key.span,
                        kind: YamlErrorKind::DuplicateKey(entries[i].0.span),
                    });
                }
                None => {
                    entries.push((key, value));
                    merged.push(false);
                }
            }
            return Ok(());
        }
    };
    for source in sources {
        if let Value::Map(more) = source.value {
            for (k, v) in more {
                if !entries.iter().any(|(e, _)| e.value == k.value) {
                    entries.push((k, v));
                    merged.push(true);
                }
            }
        }
    }
    Ok(())
}

fn tree_size(node: &Node) -> usize {
    match &node.value {
        Value::Seq(items) => 1 + items.iter().map(tree_size).sum::<usize>(),
        Value::Map(entries) => {
            1 + entries
                .iter()
                .map(|(k, v)| tree_size(k) + tree_size(v))
                .sum::<usize>()
        }
        _ => 1,
    }
}

fn merge(start: Span, end: Span) -> Span {
    Span {
        line: start.line,
        col: start.col,
        end_line: end.end_line,
        end_col: end.end_col,
    }
}

/// Resolves a plain scalar with the YAML 1.2 core schema.
fn resolve_plain(text: &str) -> Value {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = text.parse::<i64>() {
            return Value::Int(i);
        }
    }
    if let Some(hex) = text.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Value::Int(i);
        }
    }
    if let Some(oct) = text.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Value::Int(i);
        }
    }
    let looks_float = !digits.is_empty()
        && digits.bytes().any(|b| b.is_ascii_digit())
        && digits
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'));
    if looks_float {
        if let Ok(f) = text.parse::<f64>() {
            return Value::Float(f);
        }
    }
    Value::Str(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Node, YamlError> {
        parse(s, Limits::default())
    }

    #[test]
    fn scalars_resolve_with_the_core_schema() {
        let node = p("a: 1\nb: 1.5\nc: true\nd: ~\ne: '1'\nf: hello\ng: 1e3\nh: -7").unwrap();
        let get = |k: &str| node.get(k).unwrap().value.clone();
        assert_eq!(get("a"), Value::Int(1));
        assert_eq!(get("b"), Value::Float(1.5));
        assert_eq!(get("c"), Value::Bool(true));
        assert_eq!(get("d"), Value::Null);
        assert_eq!(get("e"), Value::Str("1".into()));
        assert_eq!(get("f"), Value::Str("hello".into()));
        assert_eq!(get("g"), Value::Float(1000.0));
        assert_eq!(get("h"), Value::Int(-7));
        assert_eq!(
            p("x: infinity").unwrap().get("x").unwrap().value,
            Value::Str("infinity".into())
        );
    }

    #[test]
    fn spans_are_one_based() {
        let node = p("a:\n  b: hello\n").unwrap();
        let b = node.get("a").unwrap().get("b").unwrap();
        assert_eq!((b.span.line, b.span.col), (2, 6));
        assert_eq!(b.span.end_col, 11);
    }

    #[test]
    fn merge_keys_do_not_override_explicit_keys() {
        let node = p("d: &d {x: 1, y: 2}\ne:\n  <<: *d\n  y: 3\n").unwrap();
        let e = node.get("e").unwrap();
        assert_eq!(e.get("x").unwrap().value, Value::Int(1));
        assert_eq!(e.get("y").unwrap().value, Value::Int(3));
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = p("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert!(err.message.contains("duplicate key `a`"), "{err:?}");
        assert_eq!(err.span.line, 3);
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut s = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = format!("*a{}", i - 1);
            s += &format!("a{i}: &a{i} [{}]\n", [prev.as_str(); 9].join(", "));
        }
        let err = p(&s).unwrap_err();
        assert_eq!(err.kind, YamlErrorKind::TooManyNodes);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let s = "[".repeat(10_000);
        let err = p(&s).unwrap_err();
        assert!(
            matches!(err.kind, YamlErrorKind::TooDeep | YamlErrorKind::Syntax),
            "{err:?}"
        );
    }

    #[test]
    fn empty_and_multi_document_inputs_are_errors() {
        assert_eq!(p("").unwrap_err().kind, YamlErrorKind::Empty);
        assert_eq!(
            p("# only a comment\n").unwrap_err().kind,
            YamlErrorKind::Empty
        );
        assert_eq!(
            p("a: 1\n---\nb: 2\n").unwrap_err().kind,
            YamlErrorKind::MultipleDocuments
        );
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = p("a: [1, 2\nb: 3\n").unwrap_err();
        assert_eq!(err.kind, YamlErrorKind::Syntax);
        assert!(err.span.line >= 1);
    }
}
