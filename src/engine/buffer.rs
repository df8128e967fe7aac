//! Buffer deltas: compact updates of numeric arrays (pen strokes, point lists).
//!
//! `{"__buf":1,"len":L,"runs":[[offset,[v,...]],...]}` means: a new array of length `L` that keeps
//! the old array's first `min(old.len, L)` values, zero-fills the rest, then writes each run's values
//! from `offset`, ignoring indices outside `0..L`. Applying a delta twice gives the same array.

use serde_json::{Map, Value};

use super::size::{self, Change, Size};

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
    /// Returns how the size of `target` changed, measured the same way (only what is dropped,
    /// overwritten or added is measured).
    pub fn materialize_into(&self, target: &mut Value) -> Change {
        let mut change = Change::default();
        if !target.is_array() {
            change.removed = size::of_value(target);
            change.added = Size::new(2, 1);
            *target = Value::Array(Vec::with_capacity(self.len));
        }
        let Value::Array(out) = target else {
            unreachable!("just made an array")
        };
        let old_len = out.len();
        for dropped in out.get(self.len..).unwrap_or_default() {
            change.removed += size::of_value(dropped);
        }
        out.truncate(self.len);
        // Each zero is one byte and one value.
        let zeros = self.len - out.len();
        super::work::step(zeros);
        change.added += Size::new(zeros, zeros);
        out.resize(self.len, Value::from(0));
        let (old_commas, new_commas) = (size::separators(old_len), size::separators(self.len));
        change.added.bytes += new_commas.saturating_sub(old_commas);
        change.removed.bytes += old_commas.saturating_sub(new_commas);
        for &(offset, values) in &self.runs {
            for (j, v) in values.iter().enumerate() {
                let idx = offset.saturating_add(j as i64);
                if idx >= 0 && (idx as u64) < self.len as u64 {
                    let slot = &mut out[idx as usize];
                    change.removed += size::of_value(slot);
                    change.added += size::of_value(v);
                    *slot = v.clone();
                }
            }
        }
        change
    }

    /// Values this delta creates on top of a stored array of `stored_len` values: the elements
    /// beyond it and every value its runs carry (an upper bound, known before materializing).
    pub fn values_created(&self, stored_len: usize) -> usize {
        let carried: usize = self.runs.iter().map(|(_, values)| values.len()).sum();
        self.len.saturating_sub(stored_len).saturating_add(carried)
    }

    /// An upper bound of how much this delta can grow a stored array of `stored_len` values:
    /// zeros (the smallest values) beyond it, plus each carried value and its comma.
    pub fn growth_bound(&self, stored_len: usize) -> Size {
        let zeros = self.len.saturating_sub(stored_len);
        let mut bound = Size::new(2 + 2 * zeros, 1 + zeros);
        for (_, values) in &self.runs {
            for v in *values {
                bound += size::of_value(v) + Size::new(1, 0);
            }
        }
        bound
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
        let before = size::of_value(&in_place);
        let change = delta.materialize_into(&mut in_place);
        assert_eq!(in_place, new, "materialize_into agrees with materialize");
        assert_eq!(
            change.applied_to(before),
            size::of_value(&new),
            "the change is the size difference"
        );
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
