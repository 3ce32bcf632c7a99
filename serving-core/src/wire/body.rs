//! A predict body parsed in one pass: the `input_params` of a wrapping object is kept as it is
//! read, without building the object around it (a map node and a key per request).

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// The input a body carries: `input_params` when the body is an object with that key (the
/// last one, if repeated), else the whole body. Deserialize a body into it (or call
/// [`parse_body`](super::parse_body)).
#[derive(Debug, Clone, PartialEq)]
pub struct Unwrapped(pub Value);

impl<'de> de::Deserialize<'de> for Unwrapped {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(Unwrap).map(Unwrapped)
    }
}

/// Builds the top-level value as `serde_json::Value` would, except for the wrapper.
struct Unwrap;

impl<'de> Visitor<'de> for Unwrap {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut params = None;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Other(key)
                    if key == RAW_VALUE_TOKEN && object.is_empty() && params.is_none() =>
                {
                    return raw_value(&mut map);
                }
                Key::InputParams => params = Some(map.next_value::<Value>()?),
                Key::Other(key) => {
                    object.insert(key, map.next_value::<Value>()?);
                }
            }
        }
        Ok(params.unwrap_or(Value::Object(object)))
    }
}

/// The key that makes `serde_json::Value` read an object as the JSON text of its one string
/// value (serde_json's `raw_value` feature, which axum enables for every crate in the build).
/// Found by fuzzing: read as a plain object instead, such a body became an input that logged
/// as JSON another reader of the log would parse differently, or not at all.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// The body `{RAW_VALUE_TOKEN: "text"}`, read as `serde_json::Value` reads it: the value of
/// `text` parsed as JSON, then unwrapped like any body.
fn raw_value<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Value, A::Error> {
    let text: String = map.next_value()?;
    match serde_json::from_str::<Value>(&text).map_err(de::Error::custom)? {
        Value::Object(mut object) if object.contains_key("input_params") => {
            Ok(object.remove("input_params").unwrap_or_default())
        }
        other => Ok(other),
    }
}

/// An object key, allocated only when it is not `input_params`.
enum Key {
    InputParams,
    Other(String),
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_str<E>(self, v: &str) -> Result<Key, E> {
                Ok(if v == "input_params" {
                    Key::InputParams
                } else {
                    Key::Other(v.to_owned())
                })
            }

            fn visit_string<E>(self, v: String) -> Result<Key, E> {
                Ok(if v == "input_params" {
                    Key::InputParams
                } else {
                    Key::Other(v)
                })
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the body means, said the simple way: parse it whole, then unwrap.
    fn reference(body: &str) -> Value {
        match serde_json::from_str::<Value>(body).unwrap() {
            Value::Object(mut object) if object.contains_key("input_params") => {
                object.remove("input_params").unwrap()
            }
            other => other,
        }
    }

    #[test]
    fn unwraps_exactly_like_parsing_whole() {
        let bodies = [
            r#"{"input_params": [5.1, 3.5, 1.4, 0.2]}"#,
            r#"{"input_params": {"a": [1, {"b": null}]}, "other": true}"#,
            r#"{"other": "x", "input_params": "aGk="}"#,
            r#"{"input_params": 1, "input_params": 2}"#,
            r#"{"in\u0070ut_params": -3}"#,
            r#"{"a": 1, "a": 2, "b": [1.5e300, -0, 18446744073709551615]}"#,
            r#"{}"#,
            r#"[1, "two", [3.0], {"input_params": 4}]"#,
            r#""just a string""#,
            "12.5",
            "null",
            "false",
            r#"{"$serde_json::private::RawValue": "[1, 2]"}"#,
            r#"{"$serde_json::private::RawValue": "{\"input_params\": 5}"}"#,
            r#"{"a": 1, "$serde_json::private::RawValue": "[1, 2]"}"#,
        ];
        for body in bodies {
            let parsed = serde_json::from_str::<Unwrapped>(body).unwrap().0;
            assert_eq!(parsed, reference(body), "{body}");
        }
    }

    #[test]
    fn refuses_what_json_refuses() {
        let raw_not_json = r#"{"$serde_json::private::RawValue": " 33VQ59teinput_p"}"#;
        let raw_then_more = r#"{"$serde_json::private::RawValue": "1", "a": 2}"#;
        let refused = ["{", r#"{"input_params": }"#, "[1,]", "nul", r#"{"a" 1}"#];
        for body in refused.into_iter().chain([raw_not_json, raw_then_more]) {
            assert!(serde_json::from_str::<Unwrapped>(body).is_err(), "{body}");
        }
        let deep = "[".repeat(10_000);
        assert!(serde_json::from_str::<Unwrapped>(&deep).is_err());
    }
}
