//! What a predictor receives: the request's input exactly as the client sent it.

use std::any::type_name;

use base64::Engine as _;
use bytes::Bytes;
use serde::de::value::{Error as ValueError, SeqDeserializer};
use serde::de::{DeserializeOwned, Deserializer, Visitor};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::sync::Locked;

/// The input of one prediction.
///
/// A JSON array carries positional arguments (`def predict(*input)` in the original product);
/// any other JSON value is the single argument. Raw bytes (a Kafka message, a decoded file)
/// are one argument; several decoded files are one argument each.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// JSON as the client sent it in `input_params`.
    Json(Value),
    /// Raw bytes: a Kafka message or one decoded file.
    Bytes(Bytes),
    /// Several decoded files, one positional argument each.
    Files(Vec<Bytes>),
}

/// One positional argument, borrowed from an [`Input`].
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    /// A JSON value.
    Json(&'a Value),
    /// Raw bytes.
    Bytes(&'a Bytes),
}

impl Input {
    /// The positional arguments: the items of a JSON array, else the whole input as one.
    pub fn args(&self) -> Vec<Arg<'_>> {
        match self {
            Input::Json(Value::Array(items)) => items.iter().map(Arg::Json).collect(),
            Input::Json(value) => vec![Arg::Json(value)],
            Input::Bytes(bytes) => vec![Arg::Bytes(bytes)],
            Input::Files(files) => files.iter().map(Arg::Bytes).collect(),
        }
    }

    /// How many positional arguments [`Input::args`] would answer, without making them.
    pub fn arg_count(&self) -> usize {
        match self {
            Input::Json(Value::Array(items)) => items.len(),
            Input::Json(_) | Input::Bytes(_) => 1,
            Input::Files(files) => files.len(),
        }
    }

    /// The positional argument at `position`, as [`Input::args`] would answer it, without
    /// making the others: what a typed predict function reads per request.
    pub fn arg(&self, position: usize) -> Option<Arg<'_>> {
        match self {
            Input::Json(Value::Array(items)) => items.get(position).map(Arg::Json),
            Input::Json(value) => (position == 0).then_some(Arg::Json(value)),
            Input::Bytes(bytes) => (position == 0).then_some(Arg::Bytes(bytes)),
            Input::Files(files) => files.get(position).map(Arg::Bytes),
        }
    }

    /// The whole input as one argument (for single-parameter predictors).
    pub fn whole(&self) -> Option<Arg<'_>> {
        match self {
            Input::Json(value) => Some(Arg::Json(value)),
            Input::Bytes(bytes) => Some(Arg::Bytes(bytes)),
            Input::Files(_) => None,
        }
    }

    /// The input as JSON, for logs and records: bytes become a UTF-8 string when they are
    /// text, else a Base64 string.
    pub fn to_json(&self) -> Value {
        match self {
            Input::Json(value) => value.clone(),
            Input::Bytes(bytes) => bytes_to_json(bytes),
            Input::Files(files) => Value::Array(files.iter().map(bytes_to_json).collect()),
        }
    }
}

impl From<Value> for Input {
    fn from(value: Value) -> Self {
        Input::Json(value)
    }
}

impl From<Bytes> for Input {
    fn from(bytes: Bytes) -> Self {
        Input::Bytes(bytes)
    }
}

fn bytes_to_json(bytes: &Bytes) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(text) => Value::String(text.to_owned()),
        Err(_) => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

impl Arg<'_> {
    /// Deserializes this argument as `T`; `position` names it in the error.
    ///
    /// Bytes deserialize directly into byte and string types; otherwise they are parsed as
    /// JSON, so a Kafka message holding JSON feeds a typed predictor too.
    pub fn parse<T: DeserializeOwned>(self, position: usize) -> Result<T> {
        let outcome = match self {
            Arg::Json(value) => T::deserialize(value).map_err(|e| e.to_string()),
            Arg::Bytes(bytes) => T::deserialize(RawBytes(bytes))
                .or_else(|direct| serde_json::from_slice(bytes).map_err(|_| direct))
                .map_err(|e| e.to_string()),
        };
        outcome.map_err(|reason| Error::InvalidArgument {
            position,
            expected: short_type_name::<T>(),
            reason,
        })
    }
}

/// Serves raw bytes to `Bytes`, `Vec<u8>` and (when UTF-8) `String` arguments.
struct RawBytes<'a>(&'a [u8]);

impl<'de> Deserializer<'de> for RawBytes<'_> {
    type Error = ValueError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        visitor.visit_bytes(self.0)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        visitor.visit_seq(SeqDeserializer::new(
            self.0.iter().copied().map(ByteElement),
        ))
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        match std::str::from_utf8(self.0) {
            Ok(text) => visitor.visit_str(text),
            Err(_) => visitor.visit_bytes(self.0),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        self.deserialize_str(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf option unit
        unit_struct newtype_struct tuple tuple_struct map struct enum identifier ignored_any
    }
}

/// One element of raw bytes as a sequence: only a `u8` may take it, so `Vec<u8>` gets the raw
/// bytes while `Vec<f64>` falls back to parsing the bytes as JSON.
struct ByteElement(u8);

impl<'de> serde::de::IntoDeserializer<'de, ValueError> for ByteElement {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> Deserializer<'de> for ByteElement {
    type Error = ValueError;

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, ValueError> {
        Err(serde::de::Error::custom("raw bytes hold only u8 values"))
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ValueError> {
        visitor.visit_u8(self.0)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

/// `alloc::vec::Vec<f64>` → `Vec<f64>`: the type as a user wrote it.
fn short_type_name<T>() -> &'static str {
    let full = type_name::<T>();
    // Leaked once per distinct type, on the error path only; types are finite.
    static NAMES: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<&'static str, &'static str>>,
    > = std::sync::OnceLock::new();
    let mut names = NAMES.get_or_init(Default::default).locked();
    names.entry(full).or_insert_with(|| {
        let mut short = String::with_capacity(full.len());
        let mut segment = String::new();
        for ch in full.chars() {
            if ch.is_alphanumeric() || ch == '_' || ch == ':' {
                segment.push(ch);
            } else {
                short.push_str(segment.rsplit("::").next().unwrap_or(&segment));
                segment.clear();
                short.push(ch);
            }
        }
        short.push_str(segment.rsplit("::").next().unwrap_or(&segment));
        Box::leak(short.into_boxed_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn array_items_are_positional_arguments() {
        let input = Input::Json(json!([1.0, "a"]));
        let args = input.args();
        assert_eq!(args.len(), 2);
        assert_eq!(args[0].parse::<f64>(0).unwrap(), 1.0);
        assert_eq!(args[1].parse::<String>(1).unwrap(), "a");
    }

    #[test]
    fn each_argument_is_read_alone_as_args_answers_it() {
        let inputs = [
            Input::Json(json!([1.0, "a", null])),
            Input::Json(json!("hi")),
            Input::Bytes(Bytes::from_static(b"raw")),
            Input::Files(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]),
        ];
        for input in &inputs {
            let args = input.args();
            assert_eq!(input.arg_count(), args.len());
            for (position, arg) in args.iter().enumerate() {
                let alone = input.arg(position).unwrap();
                assert_eq!(format!("{alone:?}"), format!("{arg:?}"));
            }
            assert!(input.arg(args.len()).is_none());
        }
    }

    #[test]
    fn a_scalar_is_one_argument() {
        assert_eq!(Input::Json(json!("hi")).args().len(), 1);
    }

    #[test]
    fn mismatch_names_position_and_type() {
        let err = Arg::Json(&json!("x")).parse::<Vec<f64>>(2).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("argument 2 must be Vec<f64>"), "{text}");
    }

    #[test]
    fn bytes_parse_as_bytes_string_or_json() {
        let raw = Bytes::from_static(b"[1,2]");
        assert_eq!(Arg::Bytes(&raw).parse::<Bytes>(0).unwrap(), raw);
        assert_eq!(Arg::Bytes(&raw).parse::<String>(0).unwrap(), "[1,2]");
        assert_eq!(
            Arg::Bytes(&raw).parse::<Vec<u8>>(0).unwrap(),
            b"[1,2]".to_vec()
        );
        assert_eq!(
            Arg::Bytes(&raw).parse::<Vec<f64>>(0).unwrap(),
            vec![1.0, 2.0]
        );
    }

    #[test]
    fn binary_bytes_log_as_base64() {
        let input = Input::Bytes(Bytes::from_static(&[0xff, 0x00]));
        assert_eq!(input.to_json(), json!("/wA="));
    }
}
