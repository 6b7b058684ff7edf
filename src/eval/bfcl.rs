//! BFCL's AST check for one call (the `simple` and `multiple` categories of
//! the Berkeley Function Calling Leaderboard), written from its published
//! rules: the call names the expected function, gives every parameter the
//! function requires, no parameter the ground truth does not know, each of
//! the declared type, and each value one of the allowed ones. A parameter
//! may be left out when its allowed values include the empty string.
//!
//! Values compare as BFCL compares them: strings without case, spaces and
//! the characters `,./-_*^` (and `'` read as `"`); an integer where a float
//! is declared is accepted, a float where an integer is declared is not;
//! lists element by element; dicts key by key against their own allowed
//! values.

use serde_json::{Map, Value};

use super::call;

/// Scores `output` (its first JSON object, a call) against `expected`
/// (`[{name: {parameter: [allowed values]}}]`, any one of them may match),
/// with the declared types from `functions` (BFCL's function list) when
/// given: whether the call passes, and what decided it. An error says what
/// is wrong with `expected` (the data, not the output).
pub fn check(
    expected: &Value,
    functions: Option<&Value>,
    output: &str,
) -> Result<(bool, String), String> {
    let calls = expected
        .as_array()
        .filter(|c| !c.is_empty())
        .ok_or("is not a non-empty list of calls")?;
    let Some(got) = call::first_object(output) else {
        return Ok((false, "no JSON call in the output".into()));
    };
    let name = call::name(&got);
    let params = call::params(&got);
    let mut first_failure = None;
    for call in calls {
        let (want_name, allowed) = call
            .as_object()
            .filter(|c| c.len() == 1)
            .and_then(|c| c.iter().next())
            .and_then(|(n, a)| Some((n, a.as_object()?)))
            .filter(|(_, a)| a.values().all(Value::is_array))
            .ok_or_else(|| {
                format!("has a call that is not `{{name: {{parameter: [values]}}}}`: {call}")
            })?;
        let outcome = match (&name, &params) {
            (Some(n), _) if !same_name(n, want_name) => {
                Err(format!("called `{n}`, expected `{want_name}`"))
            }
            (None, _) => Err("the call has no `name`".to_string()),
            (_, None) => Err("the call's parameters are not a JSON object".to_string()),
            (Some(_), Some(p)) => match_params(p, allowed, declared(functions, want_name)),
        };
        match outcome {
            Ok(()) => return Ok((true, "the call matches".into())),
            Err(e) => {
                first_failure.get_or_insert(e);
            }
        }
    }
    Ok((
        false,
        first_failure.unwrap_or_else(|| "no call matches".into()),
    ))
}

/// Names match exactly, or with dots written as underscores (function
/// names such as `math.factorial` are not valid identifiers in every API).
fn same_name(got: &str, want: &str) -> bool {
    got == want || got.replace('.', "_") == want.replace('.', "_")
}

/// The function's declared parameters (`parameters.properties`) and the
/// required ones, when `functions` describes it.
struct Declared<'a> {
    properties: Option<&'a Map<String, Value>>,
    required: Vec<&'a str>,
}

fn declared<'a>(functions: Option<&'a Value>, name: &str) -> Declared<'a> {
    let function = functions
        .and_then(Value::as_array)
        .and_then(|fs| {
            fs.iter()
                .find(|f| f.get("name").and_then(Value::as_str) == Some(name))
        })
        .and_then(|f| f.get("parameters"));
    Declared {
        properties: function
            .and_then(|p| p.get("properties"))
            .and_then(Value::as_object),
        required: function
            .and_then(|p| p.get("required"))
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default(),
    }
}

fn match_params(
    got: &Map<String, Value>,
    allowed: &Map<String, Value>,
    declared: Declared<'_>,
) -> Result<(), String> {
    for name in &declared.required {
        if !got.contains_key(*name) {
            return Err(format!("the required parameter `{name}` is missing"));
        }
    }
    for (name, value) in got {
        let Some(values) = allowed.get(name) else {
            return Err(format!("unexpected parameter `{name}`"));
        };
        let schema = declared.properties.and_then(|p| p.get(name));
        if let Some(ty) = schema.and_then(|s| s.get("type")).and_then(Value::as_str)
            && !of_type(value, ty)
        {
            return Err(format!("`{name}` should be of type {ty}, got {value}"));
        }
        let values = values.as_array().map(Vec::as_slice).unwrap_or_default();
        if !values.iter().any(|a| matches(value, a, schema)) {
            return Err(format!(
                "`{name}` = {value} is not one of the allowed values {}",
                Value::Array(values.to_vec())
            ));
        }
    }
    for (name, values) in allowed {
        let optional = values
            .as_array()
            .is_some_and(|v| v.iter().any(|a| a.as_str() == Some("")));
        if !got.contains_key(name) && !optional {
            return Err(format!("the parameter `{name}` is missing"));
        }
    }
    Ok(())
}

/// Whether `value` has the declared BFCL type (`integer`, `float`,
/// `string`, `boolean`, `array`, `tuple`, `dict`; others are not checked).
fn of_type(value: &Value, ty: &str) -> bool {
    match ty {
        "integer" => value.is_i64() || value.is_u64(),
        "float" | "number" => value.is_number(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "array" | "tuple" => value.is_array(),
        "dict" | "object" => value.is_object(),
        _ => true,
    }
}

/// BFCL's string comparison: without case, spaces and `,./-_*^`, with `'`
/// read as `"`.
fn standard(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, ' ' | ',' | '.' | '/' | '-' | '_' | '*' | '^'))
        .flat_map(char::to_lowercase)
        .map(|c| if c == '\'' { '"' } else { c })
        .collect()
}

/// Whether `got` is the allowed value `want` (`schema`: the parameter's
/// declaration, for the type of numbers and of list items).
fn matches(got: &Value, want: &Value, schema: Option<&Value>) -> bool {
    let ty = schema.and_then(|s| s.get("type")).and_then(Value::as_str);
    match (got, want) {
        (Value::String(g), Value::String(w)) => standard(g) == standard(w),
        (Value::Number(g), Value::Number(w)) => {
            if ty == Some("integer") && !(g.is_i64() || g.is_u64()) {
                return false;
            }
            match (g.as_f64(), w.as_f64()) {
                (Some(g), Some(w)) => g == w || (g - w).abs() <= 1e-9 * w.abs().max(1.0),
                _ => false,
            }
        }
        (Value::Array(g), Value::Array(w)) => {
            let items = schema.and_then(|s| s.get("items"));
            g.len() == w.len() && g.iter().zip(w).all(|(g, w)| matches(g, w, items))
        }
        (Value::Object(g), Value::Object(w)) => {
            let fields = schema
                .and_then(|s| s.get("properties"))
                .and_then(Value::as_object);
            let field_ok = |(k, v): (&String, &Value)| {
                w.get(k).and_then(Value::as_array).is_some_and(|allowed| {
                    allowed
                        .iter()
                        .any(|a| matches(v, a, fields.and_then(|f| f.get(k))))
                })
            };
            let missing_ok = |(k, allowed): (&String, &Value)| {
                g.contains_key(k)
                    || allowed
                        .as_array()
                        .is_some_and(|a| a.iter().any(|a| a.as_str() == Some("")))
            };
            g.iter().all(field_ok) && w.iter().all(missing_ok)
        }
        (g, w) => g == w,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn triangle() -> (Value, Value) {
        let functions = json!([{
            "name": "calculate_triangle_area",
            "parameters": {"type": "dict", "properties": {
                "base": {"type": "integer"}, "height": {"type": "integer"},
                "unit": {"type": "string"}, "scale": {"type": "float"},
                "sides": {"type": "array", "items": {"type": "integer"}}},
                "required": ["base", "height"]}
        }]);
        let expected = json!([{"calculate_triangle_area": {
            "base": [10], "height": [5], "unit": ["units", ""], "scale": [2.0, ""], "sides": [[3, 4], ""]}}]);
        (functions, expected)
    }

    fn score(output: &str) -> (bool, String) {
        let (f, e) = triangle();
        check(&e, Some(&f), output).unwrap()
    }

    #[test]
    fn the_published_rules_decide_each_call() {
        let cases = [
            (
                r#"{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5}}"#,
                true,
                "the call matches",
            ),
            // Parameters as a string (OpenAI's `arguments`), `api_name`, optional ones given.
            (
                r#"{"api_name": "calculate_triangle_area", "parameters": "{\"base\": 10, \"height\": 5, \"unit\": \"Units\", \"scale\": 2, \"sides\": [3, 4]}"}"#,
                true,
                "matches",
            ),
            (
                r#"{"name": "calculate_triangle_area", "arguments": {"base": 10}}"#,
                false,
                "required parameter `height` is missing",
            ),
            (
                r#"{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 6}}"#,
                false,
                "`height` = 6 is not one of",
            ),
            (
                r#"{"name": "calculate_triangle_area", "arguments": {"base": "10", "height": 5}}"#,
                false,
                "`base` should be of type integer",
            ),
            (
                r#"{"name": "calculate_triangle_area", "arguments": {"base": 10.0, "height": 5}}"#,
                false,
                "type integer",
            ),
            (
                r#"{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, "color": "red"}}"#,
                false,
                "unexpected parameter `color`",
            ),
            (
                r#"{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, "sides": [4, 3]}}"#,
                false,
                "`sides`",
            ),
            (
                r#"{"name": "area", "arguments": {"base": 10, "height": 5}}"#,
                false,
                "called `area`",
            ),
            (
                r#"{"name": "calculate_triangle_area", "arguments": "base=10"}"#,
                false,
                "not a JSON object",
            ),
            ("I cannot help with that.", false, "no JSON call"),
        ];
        for (output, passed, feedback) in cases {
            let s = score(output);
            assert_eq!(s.0, passed, "{output}: {s:?}");
            assert!(s.1.contains(feedback), "{output}: {s:?}");
        }
    }

    #[test]
    fn strings_dicts_and_names_compare_as_bfcl_does() {
        assert_eq!(standard("New York, NY"), standard("new-york ny"));
        assert_ne!(standard("Paris"), standard("London"));
        let expected = json!([{"math.hypot": {"point": [{"x": [3], "label": ["A point", ""]}]}}]);
        let ok = check(
            &expected,
            None,
            r#"{"name": "math_hypot", "arguments": {"point": {"x": 3, "label": "a_point"}}}"#,
        )
        .unwrap();
        assert!(ok.0, "{ok:?}");
        let bad = check(
            &expected,
            None,
            r#"{"name": "math.hypot", "arguments": {"point": {"x": 3, "y": 4}}}"#,
        )
        .unwrap();
        assert!(!bad.0);
        // Without declared types a float equal to the integer is accepted.
        let loose = check(
            &expected,
            None,
            r#"{"name": "math.hypot", "arguments": {"point": {"x": 3.0}}}"#,
        )
        .unwrap();
        assert!(loose.0, "{loose:?}");
    }

    #[test]
    fn any_allowed_call_passes_and_bad_ground_truth_is_an_error() {
        let expected = json!([{"a": {"x": [1]}}, {"b": {"y": [2]}}]);
        assert!(
            check(&expected, None, r#"{"name": "b", "arguments": {"y": 2}}"#)
                .unwrap()
                .0
        );
        let miss = check(&expected, None, r#"{"name": "c", "arguments": {}}"#).unwrap();
        assert!(miss.1.contains("called `c`, expected `a`"), "{miss:?}");
        for bad in [
            json!([]),
            json!({"a": {}}),
            json!([{"a": {}, "b": {}}]),
            json!([{"a": [1]}]),
        ] {
            assert!(
                check(&bad, None, r#"{"name": "a", "arguments": {}}"#).is_err(),
                "{bad}"
            );
        }
        let not_list = json!([{"a": {"x": 1}}]);
        assert!(check(&not_list, None, r#"{"name": "a", "arguments": {"x": 1}}"#).is_err());
    }
}
