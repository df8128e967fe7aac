//! How big stored state is: the length of its JSON encoding and the number of JSON values in it.
//!
//! Both are kept incrementally (a write adds what it writes and subtracts what it replaces), so a
//! limit is checked without re-measuring a document, and an append to a long array costs the
//! values it appends.

use std::io;
use std::ops::{Add, AddAssign};

use serde::Serialize;
use serde_json::Value;

use super::Fields;

/// A size: bytes of compact JSON and JSON values (each scalar, array and object counts one).
/// In memory a value costs about 80 bytes whatever its JSON length, so `values` is what bounds
/// memory for documents of small numbers, and `bytes` what bounds it for long strings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Size {
    pub bytes: usize,
    pub values: usize,
}

impl Size {
    pub const fn new(bytes: usize, values: usize) -> Size {
        Size { bytes, values }
    }

    /// `self - other`, never below zero (a size cannot be negative).
    pub fn minus(self, other: Size) -> Size {
        Size {
            bytes: self.bytes.saturating_sub(other.bytes),
            values: self.values.saturating_sub(other.values),
        }
    }
}

impl Add for Size {
    type Output = Size;
    fn add(self, other: Size) -> Size {
        Size {
            bytes: self.bytes.saturating_add(other.bytes),
            values: self.values.saturating_add(other.values),
        }
    }
}

impl AddAssign for Size {
    fn add_assign(&mut self, other: Size) {
        *self = *self + other;
    }
}

/// What a write did to a size: what it removed and what it added (kept apart, as sizes are
/// unsigned).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    pub removed: Size,
    pub added: Size,
}

impl Change {
    /// `size` after this change.
    pub fn applied_to(self, size: Size) -> Size {
        (size + self.added).minus(self.removed)
    }
}

impl AddAssign for Change {
    fn add_assign(&mut self, other: Change) {
        self.removed += other.removed;
        self.added += other.added;
    }
}

/// Counts the bytes written to it.
struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Length of `value`'s compact JSON encoding, without building it.
fn encoded_len<T: Serialize + ?Sized>(value: &T) -> usize {
    let mut counter = Counter(0);
    // Writing to a counter cannot fail, and strings and numbers always serialize.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// Commas between `n` items.
pub fn separators(n: usize) -> usize {
    n.saturating_sub(1)
}

/// Length of a key as JSON (quoted and escaped).
pub fn key_len(key: &str) -> usize {
    encoded_len(key)
}

/// Size of a JSON value, visiting each of its values once.
pub fn of_value(value: &Value) -> Size {
    super::work::step(1);
    match value {
        Value::Array(items) => {
            let mut size = Size::new(2 + separators(items.len()), 1);
            for item in items {
                size += of_value(item);
            }
            size
        }
        Value::Object(map) => {
            let mut size = Size::new(2 + separators(map.len()), 1);
            for (key, item) in map {
                size += entry(key, item);
            }
            size
        }
        scalar => Size::new(encoded_len(scalar), 1),
    }
}

/// A lower bound of `value`'s size that measures at most `budget` values (and takes them from
/// it): what a check may learn of a stored value without costing more than the request.
pub fn of_value_within(value: &Value, budget: &mut usize) -> Size {
    if *budget == 0 {
        return Size::default();
    }
    *budget -= 1;
    super::work::step(1);
    match value {
        Value::Array(items) => {
            let mut size = Size::new(2, 1);
            for item in items {
                size += of_value_within(item, budget);
            }
            size
        }
        Value::Object(map) => {
            let mut size = Size::new(2, 1);
            for (key, item) in map {
                size += of_value_within(item, budget);
                if *budget == 0 {
                    break;
                }
                size.bytes += key_len(key) + 1;
            }
            size
        }
        scalar => Size::new(encoded_len(scalar), 1),
    }
}

/// Size of one `"name":value` entry of an object.
pub fn entry(name: &str, value: &Value) -> Size {
    Size::new(key_len(name) + 1, 0) + of_value(value)
}

/// Size of an object whose entries measure `entries` in total.
pub fn object(entries: Size, len: usize) -> Size {
    Size::new(2 + separators(len), 0) + entries
}

/// Sum of the entry sizes of `fields` (what [`object`] takes).
pub fn entries(fields: &Fields) -> Size {
    let mut size = Size::default();
    for (name, value) in fields {
        size += entry(name, value);
    }
    size
}

/// Size of a `"key":{fields}` entry whose fields' entries measure `entries`.
pub fn component(key: &str, entries: Size, len: usize) -> Size {
    Size::new(key_len(key) + 1, 0) + object(entries, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            "[a-z\"\\\n\u{1}\u{7f}\u{e9}\u{1F600}]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec(("[a-z\"\u{2}]{0,3}", inner), 0..4)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn count_values(v: &Value) -> usize {
        1 + match v {
            Value::Array(a) => a.iter().map(count_values).sum(),
            Value::Object(m) => m.values().map(count_values).sum(),
            _ => 0,
        }
    }

    proptest! {
        /// The measured size is the length of the JSON serde_json writes, and the value count.
        #[test]
        fn size_is_the_encoding(v in arb_json()) {
            let want = serde_json::to_vec(&v).expect("json").len();
            prop_assert_eq!(of_value(&v), Size::new(want, count_values(&v)));
            if let Value::Object(map) = &v {
                prop_assert_eq!(object(entries(map), map.len()).bytes, want);
            }
        }
    }
}
