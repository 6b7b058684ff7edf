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

/// A node's result, kept in two forms: JSON for events and summaries, a
/// template value for prompts and conditions.
#[derive(Debug)]
pub struct NodeOutput {
    pub json: serde_json::Value,
    pub value: Value,
    /// The artifact text (`text` field), if the node produced one.
    pub text: Option<String>,
    /// Tokens spent producing it (for per-round accounting).
    pub tokens: u64,
}

impl NodeOutput {
    pub fn new(json: serde_json::Value, tokens: u64) -> NodeOutput {
        let value = Value::from_serialize(&json);
        let text = json
            .get("text")
            .and_then(|t| t.as_str())
            .map(str::to_string);
        NodeOutput {
            json,
            value,
            text,
            tokens,
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
    pub outputs: Vec<Option<Value>>,
    /// Earlier outputs of each node, oldest first.
    pub history: Vec<Value>,
    pub artifact: Option<Value>,
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
            "artifact" => d.artifact.clone(),
            "history" => Some(Value::from_object(History(d.clone()))),
            _ => match d.names.index.get(key) {
                Some(&i) => d.outputs[i].clone(),
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
