//! Buffer deltas: compact updates of numeric arrays (pen strokes, point lists).
//!
//! `{"__buf":1,"len":L,"runs":[[offset,[v,...]],...]}` means: a new array of length `L` that keeps
//! the old array's first `min(old.len, L)` values, zero-fills the rest, then writes each run's values
//! from `offset`, ignoring indices outside `0..L`. Applying a delta twice gives the same array.

use serde_json::{Map, Value};

/// A parsed, validated buffer delta borrowing the runs from the patch value.
#[derive(Debug)]
pub struct BufferDelta<'a> {
    pub len: usize,
    pub runs: Vec<(i64, &'a [Value])>,
}

/// Why a value that claims to be a buffer delta is not a valid one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BufferDeltaError {
    #[error("buffer delta `len` must be a non-negative integer")]
    BadLen,
    #[error("buffer delta `len` {len} exceeds the limit of {max}")]
    TooLong { len: u64, max: usize },
    #[error("buffer delta `runs` must be an array of [offset, [numbers]] pairs")]
    BadRuns,
}

/// True when `value` is marked as a buffer delta (`"__buf": 1`), valid or not.
pub fn is_marked(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.get("__buf").and_then(Value::as_f64) == Some(1.0),
        _ => false,
    }
}

impl<'a> BufferDelta<'a> {
    /// Parses a value marked as a buffer delta. `max_len` bounds the array it may create, so a tiny
    /// frame cannot ask for a huge allocation.
    pub fn parse(map: &'a Map<String, Value>, max_len: usize) -> Result<Self, BufferDeltaError> {
        let len = map
            .get("len")
            .and_then(super::whole_number)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or(BufferDeltaError::BadLen)?;
        if len > max_len as u64 {
            return Err(BufferDeltaError::TooLong { len, max: max_len });
        }
        let runs = map
            .get("runs")
            .and_then(Value::as_array)
            .ok_or(BufferDeltaError::BadRuns)?;
        let runs = runs
            .iter()
            .map(|run| match run.as_array().map(Vec::as_slice) {
                Some([offset, Value::Array(values)]) if values.iter().all(Value::is_number) => {
                    let offset = super::whole_number(offset).ok_or(BufferDeltaError::BadRuns)?;
                    Ok((offset, values.as_slice()))
                }
                _ => Err(BufferDeltaError::BadRuns),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BufferDelta {
            len: len as usize,
            runs,
        })
    }

    /// The array this delta produces on top of `base` (anything but an array counts as empty).
    pub fn materialize(&self, base: Option<&Value>) -> Value {
        let base: &[Value] = match base {
            Some(Value::Array(items)) => items,
            _ => &[],
        };
        let carry = base.len().min(self.len);
        let mut out = Vec::with_capacity(self.len);
        out.extend_from_slice(&base[..carry]);
        let mut out = Value::Array(out);
        self.materialize_into(&mut out);
        out
    }

    /// Applies the delta to `target` in place: the same result as
    /// `*target = self.materialize(Some(target))`, without copying the values it keeps (an
    /// append to a long stroke costs the values it carries, not the stroke's length).
    pub fn materialize_into(&self, target: &mut Value) {
        if !target.is_array() {
            *target = Value::Array(Vec::with_capacity(self.len));
        }
        let Value::Array(out) = target else {
            unreachable!("just made an array")
        };
        out.truncate(self.len);
        out.resize(self.len, Value::from(0));
        for &(offset, values) in &self.runs {
            for (j, v) in values.iter().enumerate() {
                let idx = offset.saturating_add(j as i64);
                if idx >= 0 && (idx as u64) < self.len as u64 {
                    out[idx as usize] = v.clone();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// Materializes `delta` on `base` both ways (a new array, and in place) and checks that they
    /// agree.
    fn apply(base: Option<Value>, delta: Value) -> Value {
        let map = delta.as_object().expect("delta is an object");
        let delta = BufferDelta::parse(map, 1 << 20).expect("valid delta");
        let new = delta.materialize(base.as_ref());
        let mut in_place = base.unwrap_or(Value::Null);
        delta.materialize_into(&mut in_place);
        assert_eq!(in_place, new, "materialize_into agrees with materialize");
        new
    }

    /// Growing, shrinking and out-of-range runs follow the reference rules.
    #[test]
    fn materializes_like_the_reference() {
        let grown = apply(
            Some(json!([1, 2])),
            json!({"__buf":1,"len":4,"runs":[[3,[9]]]}),
        );
        assert_eq!(grown, json!([1, 2, 0, 9]));
        let shrunk = apply(
            Some(json!([1, 2, 3])),
            json!({"__buf":1,"len":2,"runs":[[-1,[7,8]],[1,[5,6,7]]]}),
        );
        assert_eq!(shrunk, json!([8, 5]));
        let from_string = apply(Some(json!("abc")), json!({"__buf":1,"len":2,"runs":[]}));
        assert_eq!(from_string, json!([0, 0]));
        let float_numbers = apply(None, json!({"__buf":1.0,"len":2.0,"runs":[[1.0,[3]]]}));
        assert_eq!(float_numbers, json!([0, 3]));
    }

    /// Malformed deltas and oversized lengths are refused with a reason.
    #[test]
    fn rejects_malformed_deltas() {
        let cases = [
            (
                json!({"__buf":1,"len":-1,"runs":[]}),
                BufferDeltaError::BadLen,
            ),
            (
                json!({"__buf":1,"len":1.5,"runs":[]}),
                BufferDeltaError::BadLen,
            ),
            (
                json!({"__buf":1,"len":2,"runs":{}}),
                BufferDeltaError::BadRuns,
            ),
            (
                json!({"__buf":1,"len":2,"runs":[[0]]}),
                BufferDeltaError::BadRuns,
            ),
            (
                json!({"__buf":1,"len":2,"runs":[[0,["x"]]]}),
                BufferDeltaError::BadRuns,
            ),
            (
                json!({"__buf":1,"len":2,"runs":[[0.5,[1]]]}),
                BufferDeltaError::BadRuns,
            ),
            (
                json!({"__buf":1,"len":11,"runs":[]}),
                BufferDeltaError::TooLong { len: 11, max: 10 },
            ),
        ];
        for (delta, want) in cases {
            let err = BufferDelta::parse(delta.as_object().expect("object"), 10).unwrap_err();
            assert_eq!(err, want, "{delta}");
        }
    }

    proptest! {
        /// Materialization agrees with a direct model: copy, zero-fill, then overwrite in range.
        #[test]
        fn matches_simple_model(
            base in proptest::collection::vec(-100i64..100, 0..20),
            len in 0usize..24,
            runs in proptest::collection::vec((-5i64..30, proptest::collection::vec(-100i64..100, 0..6)), 0..5),
        ) {
            let mut model: Vec<i64> = (0..len).map(|i| base.get(i).copied().unwrap_or(0)).collect();
            for (offset, values) in &runs {
                for (j, v) in values.iter().enumerate() {
                    let idx = offset + j as i64;
                    if idx >= 0 && (idx as usize) < len { model[idx as usize] = *v; }
                }
            }
            let delta = json!({"__buf": 1, "len": len, "runs": runs.iter().map(|(o, v)| json!([o, v])).collect::<Vec<_>>()});
            let once = apply(Some(json!(base)), delta.clone());
            prop_assert_eq!(&once, &json!(model));
            // Re-delivery is harmless: applying the same delta again changes nothing.
            prop_assert_eq!(apply(Some(once.clone()), delta), once);
        }
    }
}
