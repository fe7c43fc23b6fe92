//! Typed, null-tolerant access to the fields of a JSON config object, shared by the config
//! parsers of every model family: errors name the file and the field's dotted path.

use serde_json::{Map, Value};

use super::ConfigError;

/// Typed access to one JSON object; errors name the field by its dotted path and the file.
/// A `null` value counts as absent, as HF writes `null` for unset optionals.
#[derive(Clone)]
pub(crate) struct Fields<'a> {
    obj: &'a Map<String, Value>,
    prefix: String,
    origin: &'a str,
}

impl<'a> Fields<'a> {
    pub(crate) fn root(value: &'a Value, origin: &'a str) -> Result<Self, ConfigError> {
        match value {
            Value::Object(obj) => Ok(Fields {
                obj,
                prefix: String::new(),
                origin,
            }),
            other => Err(ConfigError::FieldType {
                origin: origin.to_string(),
                field: "(top level)".into(),
                expected: "an object",
                found: describe(other),
            }),
        }
    }

    pub(crate) fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    pub(crate) fn missing(&self, key: &str) -> ConfigError {
        ConfigError::MissingField {
            origin: self.origin.to_string(),
            field: self.path(key),
        }
    }

    pub(crate) fn wrong_type(&self, key: &str, expected: &'static str, found: &Value) -> ConfigError {
        ConfigError::FieldType {
            origin: self.origin.to_string(),
            field: self.path(key),
            expected,
            found: describe(found),
        }
    }

    pub(crate) fn bad_value(&self, key: &str, value: &str, valid: &str) -> ConfigError {
        ConfigError::FieldValue {
            origin: self.origin.to_string(),
            field: self.path(key),
            value: format!("{value:?}"),
            valid: valid.to_string(),
        }
    }

    pub(crate) fn usize_opt(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        let Some(value) = self.get(key) else { return Ok(None) };
        match value.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) => Ok(Some(n)),
            None => Err(self.wrong_type(key, "a non-negative integer", value)),
        }
    }

    pub(crate) fn usize_req(&self, key: &str) -> Result<usize, ConfigError> {
        self.usize_opt(key)?.ok_or_else(|| self.missing(key))
    }

    pub(crate) fn f64_opt(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        let Some(value) = self.get(key) else { return Ok(None) };
        value
            .as_f64()
            .map(Some)
            .ok_or_else(|| self.wrong_type(key, "a number", value))
    }

    pub(crate) fn f64_req(&self, key: &str) -> Result<f64, ConfigError> {
        self.f64_opt(key)?.ok_or_else(|| self.missing(key))
    }

    pub(crate) fn bool_opt(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        let Some(value) = self.get(key) else { return Ok(None) };
        value
            .as_bool()
            .map(Some)
            .ok_or_else(|| self.wrong_type(key, "true or false", value))
    }

    pub(crate) fn str_opt(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        let Some(value) = self.get(key) else { return Ok(None) };
        value
            .as_str()
            .map(Some)
            .ok_or_else(|| self.wrong_type(key, "a string", value))
    }

    pub(crate) fn obj_opt(&self, key: &str) -> Result<Option<Fields<'a>>, ConfigError> {
        let Some(value) = self.get(key) else { return Ok(None) };
        match value {
            Value::Object(obj) => Ok(Some(Fields {
                obj,
                prefix: self.path(key),
                origin: self.origin,
            })),
            other => Err(self.wrong_type(key, "an object", other)),
        }
    }

    pub(crate) fn obj_req(&self, key: &str) -> Result<Fields<'a>, ConfigError> {
        self.obj_opt(key)?.ok_or_else(|| self.missing(key))
    }

    pub(crate) fn token_opt(&self, key: &str) -> Result<Option<u32>, ConfigError> {
        let Some(value) = self.get(key) else { return Ok(None) };
        match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(id) => Ok(Some(id)),
            None => Err(self.wrong_type(key, "a token id (integer below 2^32)", value)),
        }
    }

    pub(crate) fn token_req(&self, key: &str) -> Result<u32, ConfigError> {
        self.token_opt(key)?.ok_or_else(|| self.missing(key))
    }

    /// A single id or a list of ids (HF allows both for `eos_token_id`).
    pub(crate) fn token_list_opt(&self, key: &str) -> Result<Option<Vec<u32>>, ConfigError> {
        let Some(value) = self.get(key) else { return Ok(None) };
        let as_id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        let ids = match value {
            Value::Array(items) => items.iter().map(as_id).collect::<Option<Vec<u32>>>(),
            single => as_id(single).map(|id| vec![id]),
        };
        ids.map(Some)
            .ok_or_else(|| self.wrong_type(key, "a token id or a list of token ids", value))
    }

    pub(crate) fn mrope_section_opt(&self) -> Result<Option<[usize; 3]>, ConfigError> {
        let key = "mrope_section";
        let Some(value) = self.get(key) else { return Ok(None) };
        let parsed = value.as_array().and_then(|items| {
            let nums: Option<Vec<usize>> = items
                .iter()
                .map(|v| v.as_u64().and_then(|n| usize::try_from(n).ok()))
                .collect();
            <[usize; 3]>::try_from(nums?).ok()
        });
        parsed
            .map(Some)
            .ok_or_else(|| self.wrong_type(key, "a list of 3 non-negative integers", value))
    }
}

impl<'a> Fields<'a> {
    /// One non-negative integer for both entries, or a list of one or two (ERNIE's per-modality
    /// `[text, vision]` fields); a one-entry list counts for both.
    pub(crate) fn usize_pair_opt(&self, key: &str) -> Result<Option<[usize; 2]>, ConfigError> {
        let Some(value) = self.get(key) else { return Ok(None) };
        let as_usize = |v: &Value| v.as_u64().and_then(|n| usize::try_from(n).ok());
        let pair = match value {
            Value::Array(items) => match items.as_slice() {
                [one] => as_usize(one).map(|n| [n, n]),
                [a, b] => as_usize(a).zip(as_usize(b)).map(|(a, b)| [a, b]),
                _ => None,
            },
            single => as_usize(single).map(|n| [n, n]),
        };
        pair.map(Some)
            .ok_or_else(|| self.wrong_type(key, "a non-negative integer or a list of two", value))
    }

    /// A list of strings (`architectures`, `mlp_layer_types`).
    pub(crate) fn str_list_opt(&self, key: &str) -> Result<Option<Vec<&'a str>>, ConfigError> {
        let Some(value) = self.get(key) else { return Ok(None) };
        let list = value
            .as_array()
            .and_then(|items| items.iter().map(Value::as_str).collect::<Option<Vec<_>>>());
        list.map(Some)
            .ok_or_else(|| self.wrong_type(key, "a list of strings", value))
    }

    /// A `Fields` error for a value of the right type that breaks a rule.
    pub(crate) fn invalid(&self, key: &str, reason: String) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.to_string(),
            field: self.path(key),
            reason,
        }
    }
}

/// Short description of a JSON value for "found ..." in messages.
pub(crate) fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// The checks every model config shares, each error naming `origin` and the field: counts
/// that must be positive, numbers that must be positive and finite, and query heads that
/// must be a multiple of KV heads.
pub(crate) fn check_shared_rules(
    origin: &str,
    positive: &[(&str, usize)],
    positive_finite: &[(&str, f64)],
    (heads, kv_heads): (usize, usize),
) -> Result<(), ConfigError> {
    let invalid = |field: &str, reason: String| ConfigError::Invalid {
        origin: origin.to_string(),
        field: field.to_string(),
        reason,
    };
    for &(field, value) in positive {
        if value == 0 {
            return Err(invalid(field, "must be positive, found 0".into()));
        }
    }
    for &(field, value) in positive_finite {
        if !(value.is_finite() && value > 0.0) {
            return Err(invalid(field, format!("must be a positive number, found {value}")));
        }
    }
    if heads % kv_heads != 0 {
        return Err(invalid(
            "num_attention_heads",
            format!("({heads}) must be a multiple of num_key_value_heads ({kv_heads})"),
        ));
    }
    Ok(())
}
