//! Recovery: a stored snapshot plus the log entries written after it, rebuilt into a document.
//!
//! Storage hands over bytes; this decides what they mean. Each log entry is the document patches
//! (a JSON array, as received) of the request that moved the clock to the entry's seq.
//! - Entries at or below the snapshot's clock are skipped: a crash between writing a fold's
//!   snapshot and trimming its log leaves them behind, harmlessly.
//! - An entry that does not continue the clock is an error: storage keeps a room's log gapless
//!   (it drops what follows a failed append), so a gap means something acked is missing.
//! - Limits hold as for a live room: the snapshot is counted before it is read, and every entry
//!   is checked before it is applied, so a stored room over the limits is refused without being
//!   built past them.

use serde_json::Value;

use super::{Document, LimitError, Limits, SnapshotError};

/// Why a stored room could not be rebuilt.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("log entry {seq} is not a JSON array of patches: {source}")]
    Entry {
        seq: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("log entry {found} follows clock {clock}: an entry is missing")]
    Gap { clock: u64, found: u64 },
    #[error("log entry {seq} is over a limit: {source}")]
    OverLimit {
        seq: u64,
        #[source]
        source: LimitError,
    },
}

/// A rebuilt document.
#[derive(Debug)]
pub struct Replayed {
    pub doc: Document,
    /// Log entries applied on top of the snapshot.
    pub applied: usize,
}

/// Rebuilds a document from its snapshot (if any) and the log entries `(seq, patches)` in seq
/// order. `None` when there is neither.
pub fn replay<'a>(
    snapshot: Option<&[u8]>,
    log: impl IntoIterator<Item = (u64, &'a [u8])>,
    limits: &Limits,
) -> Result<Option<Replayed>, ReplayError> {
    let mut doc = snapshot
        .map(|bytes| Document::decode_snapshot_within(bytes, limits))
        .transpose()?;
    let replay_limits = limits.for_replay();
    let mut applied = 0;
    for (seq, bytes) in log {
        let current = doc.get_or_insert_with(Document::default);
        if seq <= current.clock() {
            continue;
        }
        if seq != current.clock() + 1 {
            return Err(ReplayError::Gap {
                clock: current.clock(),
                found: seq,
            });
        }
        let patches: Vec<Value> =
            serde_json::from_slice(bytes).map_err(|source| ReplayError::Entry { seq, source })?;
        current
            .check(&patches, &replay_limits)
            .map_err(|source| ReplayError::OverLimit { seq, source })?;
        current.apply(&patches, &replay_limits);
        applied += 1;
    }
    Ok(doc.map(|doc| Replayed { doc, applied }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(seq: u64, patches: Value) -> (u64, Vec<u8>) {
        (seq, patches.to_string().into_bytes())
    }

    fn run(snapshot: Option<&Document>, log: &[(u64, Vec<u8>)]) -> Replayed {
        let bytes = snapshot.map(Document::encode_snapshot);
        replay(
            bytes.as_deref(),
            log.iter().map(|(s, b)| (*s, b.as_slice())),
            &Limits::default(),
        )
        .expect("replays")
        .expect("a document")
    }

    /// Snapshot plus log equals the document that wrote them; entries the snapshot already
    /// holds (a fold whose log trim was lost) are skipped, not applied twice.
    #[test]
    fn snapshot_plus_log_rebuilds_the_document_skipping_folded_entries() {
        let limits = Limits::default();
        let writes = [
            json!([{"a/S": {"_exists": true, "x": 1}}]),
            json!([{"a/S": {"x": 2}}]),
            json!([{"b/S": {"_exists": true}}]),
        ];
        let mut doc = Document::default();
        let mut log = Vec::new();
        let mut folded = None;
        for (i, w) in writes.iter().enumerate() {
            let clock = doc.apply(w.as_array().expect("array"), &limits);
            log.push(entry(clock, w.clone()));
            if i == 1 {
                folded = Some(doc.clone());
            }
        }
        let rebuilt = run(folded.as_ref(), &log);
        assert_eq!(rebuilt.doc, doc);
        assert_eq!(rebuilt.applied, 1);
        assert_eq!(run(None, &log).doc, doc, "the log alone");
    }

    /// An entry that skips a clock value is an error, not silently skipped.
    #[test]
    fn a_gap_is_an_error() {
        let log = [
            entry(1, json!([{"a/S": {"_exists": true}}])),
            entry(3, json!([{"a/S": {"x": 3}}])),
        ];
        let result = replay(
            None,
            log.iter().map(|(s, b)| (*s, b.as_slice())),
            &Limits::default(),
        );
        assert!(matches!(
            result,
            Err(ReplayError::Gap { clock: 1, found: 3 })
        ));
    }

    /// Neither snapshot nor log: no document. An unreadable entry is an error, not skipped.
    #[test]
    fn nothing_stored_is_none_and_garbage_is_an_error() {
        assert!(replay(None, [], &Limits::default()).expect("ok").is_none());
        assert!(matches!(
            replay(None, [(1, &b"{nope"[..])], &Limits::default()),
            Err(ReplayError::Entry { seq: 1, .. })
        ));
    }
}
