//! A tool call in a model's reply: the first JSON object, its name and
//! its parameters, in the forms the tool scorers accept.

use serde_json::Value;

/// The first JSON object in a text (a reply may wrap it in prose or fences).
pub(super) fn first_object(text: &str) -> Option<serde_json::Map<String, Value>> {
    for (i, _) in text.match_indices('{') {
        let mut stream = serde_json::Deserializer::from_str(&text[i..]).into_iter::<Value>();
        if let Some(Ok(Value::Object(o))) = stream.next() {
            return Some(o);
        }
    }
    None
}

/// A tool call's name (`api_name` or `name`).
pub(super) fn name(call: &serde_json::Map<String, Value>) -> Option<String> {
    call.get("api_name")
        .or_else(|| call.get("name"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// A tool call's parameters (`parameters` or `arguments`): an object, or a
/// JSON object in a string (OpenAI's `arguments`).
pub(super) fn params(
    call: &serde_json::Map<String, Value>,
) -> Option<serde_json::Map<String, Value>> {
    match call.get("parameters").or_else(|| call.get("arguments"))? {
        Value::Object(m) => Some(m.clone()),
        Value::String(s) => match serde_json::from_str(s) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        },
        _ => None,
    }
}
