//! A small JSON Schema subset, enough for app input schemas, reporting errors the way fal apps do
//! (pydantic's `detail` entries: `{"loc": ["body", ...], "msg", "type"}`).
//!
//! Supported keywords: `type` (one name or a list), `properties`, `required`, `additionalProperties`
//! (`false` only), `items`, `minItems`, `maxItems`, `minLength`, `maxLength`, `minimum`, `maximum`,
//! `exclusiveMinimum`, `exclusiveMaximum` (numbers), `enum`. Anything else (`description`, `default`,
//! `title`, `examples`, ...) is ignored, so schemas can carry documentation freely.
//!
//! Why our own: the checks apps need are a dozen keywords, and the messages must be pydantic's, which a
//! general validator crate would not produce.

use runmesh_proto::fal::FieldError;
use serde_json::Value;

/// Errors reported per input at most; a 10 MiB array of wrong items must not produce 10 M entries.
pub const ERRORS_MAX: usize = 50;
/// Nesting depth checked; deeper values are accepted unchecked (schemas here are shallow).
const DEPTH_MAX: usize = 32;

/// Validates `input` against `schema`; an empty list means valid.
pub fn validate(schema: &Value, input: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut loc = vec!["body".to_string()];
    check(schema, input, &mut loc, &mut errors, 0);
    errors
}

fn push(errors: &mut Vec<FieldError>, loc: &[String], msg: String, kind: &str) {
    if errors.len() < ERRORS_MAX {
        errors.push(FieldError {
            loc: loc.to_vec(),
            msg,
            kind: kind.to_string(),
        });
    }
}

fn type_matches(name: &str, v: &Value) -> bool {
    match name {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        "number" => v.is_number(),
        // pydantic accepts 5.0 for an int.
        "integer" => {
            v.is_i64()
                || v.is_u64()
                || v.as_f64()
                    .is_some_and(|f| f.fract() == 0.0 && f.is_finite())
        }
        _ => true,
    }
}

/// pydantic's message and error type for a value of the wrong type.
fn type_error(name: &str) -> (&'static str, &'static str) {
    match name {
        "object" => ("Input should be a valid dictionary", "dict_type"),
        "array" => ("Input should be a valid list", "list_type"),
        "string" => ("Input should be a valid string", "string_type"),
        "boolean" => ("Input should be a valid boolean", "bool_type"),
        "null" => ("Input should be None", "none_required"),
        "number" => ("Input should be a valid number", "float_type"),
        "integer" => ("Input should be a valid integer", "int_type"),
        _ => ("Input has the wrong type", "type_error"),
    }
}

fn check(
    schema: &Value,
    v: &Value,
    loc: &mut Vec<String>,
    errors: &mut Vec<FieldError>,
    depth: usize,
) {
    if depth > DEPTH_MAX || errors.len() >= ERRORS_MAX {
        return;
    }
    let Some(s) = schema.as_object() else {
        return;
    };
    match s.get("type") {
        Some(Value::String(t)) if !type_matches(t, v) => {
            let (msg, kind) = type_error(t);
            push(errors, loc, msg.to_string(), kind);
            return;
        }
        Some(Value::Array(ts)) => {
            let names: Vec<&str> = ts.iter().filter_map(Value::as_str).collect();
            if !names.is_empty() && !names.iter().any(|t| type_matches(t, v)) {
                // With `["x", "null"]` (an optional field) the useful message is the one for x.
                let main = names.iter().find(|t| **t != "null").unwrap_or(&names[0]);
                let (msg, kind) = type_error(main);
                push(errors, loc, msg.to_string(), kind);
                return;
            }
        }
        _ => {}
    }
    if let Some(Value::Array(options)) = s.get("enum") {
        if !options.contains(v) {
            let shown: Vec<String> = options.iter().map(show_literal).collect();
            let msg = match shown.len() {
                0 => "Input should be one of no values".to_string(),
                1 => format!("Input should be {}", shown[0]),
                n => format!(
                    "Input should be {} or {}",
                    shown[..n - 1].join(", "),
                    shown[n - 1]
                ),
            };
            push(errors, loc, msg, "literal_error");
            return;
        }
    }
    match v {
        Value::Object(obj) => {
            let props = s.get("properties").and_then(Value::as_object);
            if let Some(Value::Array(required)) = s.get("required") {
                for name in required.iter().filter_map(Value::as_str) {
                    if obj.get(name).is_none() {
                        loc.push(name.to_string());
                        push(errors, loc, "Field required".to_string(), "missing");
                        loc.pop();
                    }
                }
            }
            let extra_forbidden = s.get("additionalProperties") == Some(&Value::Bool(false));
            for (name, value) in obj {
                loc.push(name.clone());
                match props.and_then(|p| p.get(name)) {
                    Some(sub) => check(sub, value, loc, errors, depth + 1),
                    None if extra_forbidden => push(
                        errors,
                        loc,
                        "Extra inputs are not permitted".to_string(),
                        "extra_forbidden",
                    ),
                    None => {}
                }
                loc.pop();
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(min) = s.get("minItems").and_then(Value::as_u64) {
                if n < min {
                    let msg = format!(
                        "List should have at least {min} item{} after validation, not {n}",
                        plural(min)
                    );
                    push(errors, loc, msg, "too_short");
                }
            }
            if let Some(max) = s.get("maxItems").and_then(Value::as_u64) {
                if n > max {
                    let msg = format!(
                        "List should have at most {max} item{} after validation, not {n}",
                        plural(max)
                    );
                    push(errors, loc, msg, "too_long");
                }
            }
            if let Some(item_schema) = s.get("items") {
                for (i, item) in items.iter().enumerate() {
                    if errors.len() >= ERRORS_MAX {
                        break;
                    }
                    loc.push(i.to_string());
                    check(item_schema, item, loc, errors, depth + 1);
                    loc.pop();
                }
            }
        }
        Value::String(text) => {
            let n = text.chars().count() as u64;
            if let Some(min) = s.get("minLength").and_then(Value::as_u64) {
                if n < min {
                    let msg = format!("String should have at least {min} character{}", plural(min));
                    push(errors, loc, msg, "string_too_short");
                }
            }
            if let Some(max) = s.get("maxLength").and_then(Value::as_u64) {
                if n > max {
                    let msg = format!("String should have at most {max} character{}", plural(max));
                    push(errors, loc, msg, "string_too_long");
                }
            }
        }
        Value::Number(num) => {
            let Some(x) = num.as_f64() else { return };
            let bound = |k: &str| s.get(k).and_then(Value::as_f64);
            let show = |k: &str| s.get(k).map(Value::to_string).unwrap_or_default();
            if bound("minimum").is_some_and(|m| x < m) {
                let msg = format!(
                    "Input should be greater than or equal to {}",
                    show("minimum")
                );
                push(errors, loc, msg, "greater_than_equal");
            } else if bound("exclusiveMinimum").is_some_and(|m| x <= m) {
                let msg = format!("Input should be greater than {}", show("exclusiveMinimum"));
                push(errors, loc, msg, "greater_than");
            }
            if bound("maximum").is_some_and(|m| x > m) {
                let msg = format!("Input should be less than or equal to {}", show("maximum"));
                push(errors, loc, msg, "less_than_equal");
            } else if bound("exclusiveMaximum").is_some_and(|m| x >= m) {
                let msg = format!("Input should be less than {}", show("exclusiveMaximum"));
                push(errors, loc, msg, "less_than");
            }
        }
        _ => {}
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn show_literal(v: &Value) -> String {
    match v {
        Value::String(s) => format!("'{s}'"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn errs(schema: &Value, input: Value) -> Vec<String> {
        validate(schema, &input)
            .into_iter()
            .map(|e| format!("{}:{}", e.loc.join("."), e.kind))
            .collect()
    }

    fn texts_schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "texts": {"type": "array", "minItems": 1, "maxItems": 3,
                          "items": {"type": "string", "minLength": 1}},
                "n": {"type": "integer", "minimum": 1, "maximum": 10},
                "t": {"type": ["number", "null"], "exclusiveMinimum": 0},
                "mode": {"enum": ["a", "b"]}
            },
            "required": ["texts"],
            "additionalProperties": false
        })
    }

    #[test]
    fn valid_inputs_pass() {
        let s = texts_schema();
        assert!(errs(&s, json!({"texts": ["x"]})).is_empty());
        assert!(errs(
            &s,
            json!({"texts": ["x", "y"], "n": 5.0, "t": null, "mode": "b"})
        )
        .is_empty());
    }

    #[test]
    fn errors_name_the_field_like_pydantic() {
        let s = texts_schema();
        assert_eq!(errs(&s, json!({})), ["body.texts:missing"]);
        assert_eq!(errs(&s, json!({"texts": "x"})), ["body.texts:list_type"]);
        assert_eq!(errs(&s, json!({"texts": []})), ["body.texts:too_short"]);
        assert_eq!(
            errs(&s, json!({"texts": ["a", "b", "c", "d"]})),
            ["body.texts:too_long"]
        );
        assert_eq!(
            errs(&s, json!({"texts": ["a", 3, ""]})),
            ["body.texts.1:string_type", "body.texts.2:string_too_short"]
        );
        assert_eq!(
            errs(
                &s,
                json!({"texts": ["a"], "n": 0, "t": 0, "mode": "c", "zz": 1})
            ),
            [
                "body.mode:literal_error",
                "body.n:greater_than_equal",
                "body.t:greater_than",
                "body.zz:extra_forbidden"
            ]
        );
        assert_eq!(
            errs(&s, json!({"texts": ["a"], "n": 1.5})),
            ["body.n:int_type"]
        );
        assert_eq!(
            errs(&s, json!({"texts": ["a"], "t": "x"})),
            ["body.t:float_type"]
        );
        let e = validate(&s, &json!({"texts": []}));
        assert_eq!(
            e[0].msg,
            "List should have at least 1 item after validation, not 0"
        );
        let e = validate(&s, &json!({"texts": ["a"], "mode": 1}));
        assert_eq!(e[0].msg, "Input should be 'a' or 'b'");
    }

    #[test]
    fn error_count_is_bounded() {
        let s = json!({"type": "array", "items": {"type": "string"}});
        let input = Value::Array(vec![json!(1); 10_000]);
        assert_eq!(validate(&s, &input).len(), ERRORS_MAX);
    }

    #[test]
    fn unknown_keywords_are_ignored() {
        let s = json!({"type": "object", "description": "x", "properties": {"a": {"default": 3, "title": "A"}}});
        assert!(errs(&s, json!({"a": "anything"})).is_empty());
    }
}
