//! What templates and conditions see: a lazy view of the run state.
//!
//! The scheduler keeps an immutable [`ScopeData`] snapshot that it rebuilds
//! only after a node finishes; each running node wraps it in a [`NodeScope`]
//! with its own round and loop. Lookups are by name, so building a context
//! costs a few reference-count increments, not a copy of the state.

use std::collections::HashMap;
use std::sync::Arc;

use minijinja::Value;
use minijinja::value::{Enumerator, Object, ObjectRepr};

/// A node's result, kept in three forms: JSON for events, logs and
/// summaries, a template value for prompts and conditions (both the same
/// document), and a typed form the engine reads ([`Typed`]), never a JSON
/// field looked up by name.
#[derive(Debug)]
pub struct NodeOutput {
    pub json: Arc<serde_json::Value>,
    pub value: Value,
    /// What the engine reads: verdicts, samples, vectors, review state.
    pub typed: Typed,
    /// The artifact text (`text` field), if the node produced one.
    pub text: Option<String>,
    /// Tokens spent producing it (for per-round accounting).
    pub tokens: u64,
    /// A model node's conversation: the messages it sent and its reply, for
    /// nodes that `continue` it.
    pub conversation: Option<Arc<Vec<crate::backend::Message>>>,
}

impl NodeOutput {
    pub fn new(json: serde_json::Value, tokens: u64) -> NodeOutput {
        let json = Arc::new(json);
        let value = match *json {
            serde_json::Value::Object(_) => Value::from_object(JsonObject(json.clone())),
            _ => json_value(&json),
        };
        let text = json
            .get("text")
            .and_then(|t| t.as_str())
            .map(str::to_string);
        NodeOutput {
            json,
            value,
            typed: Typed::Plain,
            text,
            tokens,
            conversation: None,
        }
    }

    /// Attaches the typed form the engine reads.
    pub fn with_typed(mut self, typed: Typed) -> NodeOutput {
        self.typed = typed;
        self
    }

    /// Keeps the conversation that produced this output.
    pub fn with_conversation(mut self, messages: Vec<crate::backend::Message>) -> NodeOutput {
        self.conversation = Some(Arc::new(messages));
        self
    }
}

/// The typed part of a node's output, by kind. Its JSON form (the same
/// facts, under the field names documented in the reference) is what
/// templates and logs see.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Typed {
    /// Nothing the engine reads beyond `NodeOutput::text` (a model node's
    /// one sample; select, vote, extract, tool, cluster).
    #[default]
    Plain,
    /// A model node's replies when it drew several, one text per sample.
    Samples(Arc<[String]>),
    /// The verdict of a verify node, or of an execute node (all tests
    /// passed, pass rate).
    Verdict(Verdict),
    /// An embed node's vectors, one per item.
    Embeddings(Arc<Vec<Vec<f32>>>),
    /// A human review node's state: reviews so far and the edits rejected
    /// (never proposed again).
    Review {
        depth: u32,
        rejected: Arc<[crate::review::Edit]>,
    },
}

/// A verdict: whether the artifact passed, and a score in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Verdict {
    pub passed: bool,
    pub score: f64,
}

impl Typed {
    /// The verdict of a verify or execute node.
    pub fn verdict(&self) -> Option<Verdict> {
        match self {
            Typed::Verdict(v) => Some(*v),
            _ => None,
        }
    }
}

/// Names of the nodes, shared by every snapshot.
#[derive(Debug)]
pub struct Names {
    pub index: HashMap<Arc<str>, usize>,
    pub ids: Vec<Arc<str>>,
}

/// An immutable snapshot of the run state.
#[derive(Debug)]
pub struct ScopeData {
    pub names: Arc<Names>,
    pub inputs: Value,
    /// Each node's latest output (with its conversation, for `continue`).
    pub outputs: Vec<Option<Arc<NodeOutput>>>,
    /// Earlier outputs of each node, oldest first.
    pub history: Vec<Value>,
    /// The current artifact: the latest output candidate (its text, its
    /// template value, and the conversation that produced it).
    pub artifact: Option<Arc<NodeOutput>>,
}

/// What one node (or condition) sees.
#[derive(Debug)]
pub struct NodeScope {
    pub data: Arc<ScopeData>,
    pub round: u32,
    /// `{id, round, max_rounds, last}` of the innermost loop, if any.
    pub loop_info: Option<Value>,
    /// An extra binding: `sample` in select expressions, `target` in judges.
    pub extra: Option<(&'static str, Value)>,
}

impl NodeScope {
    pub fn into_value(self) -> Value {
        Value::from_object(self)
    }
}

impl Object for NodeScope {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        if let Some((name, v)) = &self.extra {
            if *name == key {
                return Some(v.clone());
            }
        }
        let d = &self.data;
        match key {
            "inputs" => Some(d.inputs.clone()),
            "round" => Some(Value::from(self.round)),
            "loop" => self.loop_info.clone(),
            "artifact" => d.artifact.as_ref().map(|a| a.value.clone()),
            "history" => Some(Value::from_object(History(d.clone()))),
            _ => match d.names.index.get(key) {
                Some(&i) => d.outputs[i].as_ref().map(|o| o.value.clone()),
                None => d.inputs.get_attr(key).ok().filter(|v| !v.is_undefined()),
            },
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let mut keys: Vec<Value> = ["inputs", "round", "history"]
            .iter()
            .map(|k| Value::from(*k))
            .collect();
        if self.loop_info.is_some() {
            keys.push(Value::from("loop"));
        }
        if self.data.artifact.is_some() {
            keys.push(Value::from("artifact"));
        }
        for (i, id) in self.data.names.ids.iter().enumerate() {
            if self.data.outputs[i].is_some() {
                keys.push(Value::from(id.as_ref()));
            }
        }
        Enumerator::Values(keys)
    }
}

/// `history.<node>`: the node's earlier outputs (empty list if none).
#[derive(Debug)]
struct History(Arc<ScopeData>);

impl Object for History {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let i = *self.0.names.index.get(key.as_str()?)?;
        Some(self.0.history[i].clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(
            self.0
                .names
                .ids
                .iter()
                .map(|id| Value::from(id.as_ref()))
                .collect(),
        )
    }
}

/// A JSON object seen by templates; fields are converted when read, so a
/// node output costs nothing until a template looks inside it.
#[derive(Debug)]
struct JsonObject(Arc<serde_json::Value>);

impl JsonObject {
    fn map(&self) -> &serde_json::Map<String, serde_json::Value> {
        self.0.as_object().expect("built from an object")
    }
}

impl Object for JsonObject {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.map().get(key.as_str()?).map(json_value)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Values(self.map().keys().map(|k| Value::from(k.as_str())).collect())
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.map().len())
    }
}

/// Converts JSON to a template value directly (cheaper than going through
/// serde, which matters on the per-node hot path).
pub fn json_value(json: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match json {
        J::Null => Value::from(()),
        J::Bool(b) => Value::from(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(u)) => Value::from(u),
            _ => Value::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::from(s.as_str()),
        J::Array(items) => items.iter().map(json_value).collect(),
        J::Object(map) => map
            .iter()
            .map(|(k, v)| (k.as_str(), json_value(v)))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_value_matches_serde_conversion() {
        let json = serde_json::json!({
            "text": "a", "n": 3, "big": u64::MAX, "f": 0.5, "ok": true, "none": null,
            "list": [1, "two", [3]], "nested": { "score": 7 }
        });
        assert_eq!(
            json_value(&json).to_string(),
            Value::from_serialize(&json).to_string()
        );
    }

    #[test]
    fn node_outputs_read_like_maps() {
        let out = NodeOutput::new(
            serde_json::json!({"text": "hi", "score": 3, "data": {"k": [1, 2]}}),
            0,
        );
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        let r = env
            .render_str(
                "{{ o.text }} {{ o.score + 1 }} {{ o.data.k | length }} {{ o | length }} {{ o | list | sort | join(',') }} {{ o | tojson }}",
                minijinja::context! { o => out.value.clone() },
            )
            .unwrap();
        assert_eq!(
            r,
            r#"hi 4 2 3 data,score,text {"data":{"k":[1,2]},"score":3,"text":"hi"}"#
        );
        assert!(
            env.render_str("{{ o.missing }}", minijinja::context! { o => out.value })
                .is_err()
        );
    }
}
