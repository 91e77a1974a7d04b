//! A YAML document as a JSON value, refusing a key given twice in one mapping. serde_json's
//! own map keeps the last of two equal keys without a word, so a job file with `retry:` twice
//! would silently lose the first; here it is an error at the second, with its line.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// A document read by [`Deserialize`] into a [`Value`], duplicate keys refused.
pub(super) struct StrictValue(pub Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // As serde_json does: JSON has no NaN or infinity.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
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

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        StrictValue::deserialize(d).map(|v| v.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                return Err(de::Error::custom(format!(
                    "the key `{key}` is given twice in one mapping"
                )));
            }
            let StrictValue(value) = map.next_value()?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Value, serde_yaml::Error> {
        serde_yaml::from_str::<StrictValue>(text).map(|v| v.0)
    }

    #[test]
    fn reads_what_serde_json_reads_and_refuses_a_repeated_key() {
        let text = "a: 1\nb: [x, 2.5, true, null]\nc: {d: -3}\n";
        assert_eq!(
            read(text).unwrap(),
            serde_yaml::from_str::<Value>(text).unwrap()
        );
        let e = read("spec:\n  retry: {maxAttempts: 2}\n  retry: {maxAttempts: 5}\n").unwrap_err();
        assert!(
            e.to_string().contains("the key `retry` is given twice"),
            "{e}"
        );
        // The line is that of the mapping holding the key twice.
        assert_eq!(e.location().map(|l| l.line()), Some(2), "{e}");
        // The same key in two mappings is fine.
        assert!(read("a: {k: 1}\nb: {k: 2}\n").is_ok());
    }
}
