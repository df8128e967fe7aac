//! What editors send: the `patch` frames of a moves-only or a realistic mixed editing session.
//!
//! Every frame carries its send time (µs since the run started) as field `t` of its first
//! component. Servers relay patches as received, so a peer reads `t` back out of the broadcast
//! and measures sender-to-peer latency without any other bookkeeping.

use std::fmt::Write as _;

/// Which traffic each editor sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Traffic {
    /// Each editor moves one shape it owns: the smallest document patch.
    Moves,
    /// A realistic editing mix: presence cursors (ephemeral), moves of existing shapes, pen
    /// strokes sent as buffer deltas, creates and deletes of shapes.
    Mixed,
}

/// Kinds of request, for the per-kind counts in the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cursor,
    Move,
    Stroke,
    Create,
    Delete,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Cursor,
        Kind::Move,
        Kind::Stroke,
        Kind::Create,
        Kind::Delete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Cursor => "cursor",
            Kind::Move => "move",
            Kind::Stroke => "stroke",
            Kind::Create => "create",
            Kind::Delete => "delete",
        }
    }
}

/// xorshift64*: fast, deterministic per client, good enough to pick traffic.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so neighbouring seeds give unrelated streams; never zero.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A canvas coordinate with one decimal, like a pointer position.
    fn coord(&mut self) -> f64 {
        self.below(20_000) as f64 / 10.0
    }
}

/// Points appended per stroke message: ~33 ms of 120 Hz pointer events.
const POINTS_PER_MESSAGE: usize = 4;
/// Messages per stroke before the pen lifts and a new stroke starts (200 points).
const MESSAGES_PER_STROKE: usize = 50;
/// Shapes each editor creates up front in mixed traffic, and the fewest it keeps.
const START_SHAPES: u32 = 4;

/// One editor's document: the shapes it owns and the stroke it is drawing.
pub struct Editor {
    traffic: Traffic,
    client: String,
    rng: Rng,
    shapes: Vec<u32>,
    next_shape: u32,
    /// Entity id and current length (numbers, 2 per point) of the stroke being drawn.
    stroke: Option<(u32, usize)>,
    next_stroke: u32,
}

impl Editor {
    pub fn new(traffic: Traffic, client: &str, seed: u64) -> Editor {
        Editor {
            traffic,
            client: client.to_owned(),
            rng: Rng::new(seed),
            shapes: Vec::new(),
            next_shape: 0,
            stroke: None,
            next_stroke: 0,
        }
    }

    /// The frame creating the editor's first shapes, sent before measuring starts.
    pub fn setup_frame(&mut self, message_id: &str, stamp: u64) -> String {
        let count = match self.traffic {
            Traffic::Moves => 1,
            Traffic::Mixed => START_SHAPES,
        };
        let mut patch = String::new();
        for _ in 0..count {
            if !patch.is_empty() {
                patch.push(',');
            }
            self.create_components(&mut patch, stamp);
        }
        document_frame(message_id, &patch)
    }

    /// The next request and its kind.
    pub fn next_frame(&mut self, message_id: &str, stamp: u64) -> (String, Kind) {
        let kind = match self.traffic {
            Traffic::Moves => Kind::Move,
            Traffic::Mixed => self.pick_kind(),
        };
        let mut patch = String::with_capacity(160);
        match kind {
            Kind::Cursor => {
                let (x, y) = (self.rng.coord(), self.rng.coord());
                let _ = write!(
                    patch,
                    r#""{}/Cursor":{{"t":{stamp},"x":{x},"y":{y}}}"#,
                    self.client
                );
                return (ephemeral_frame(message_id, &patch), kind);
            }
            Kind::Move => {
                let shape = match self.traffic {
                    Traffic::Moves => 0,
                    Traffic::Mixed => {
                        self.shapes[self.rng.below(self.shapes.len() as u64) as usize]
                    }
                };
                let (x, y) = (self.rng.coord(), self.rng.coord());
                let _ = write!(
                    patch,
                    r#""{}-s{shape}/Position":{{"t":{stamp},"x":{x},"y":{y}}}"#,
                    self.client
                );
            }
            Kind::Create => self.create_components(&mut patch, stamp),
            Kind::Delete => {
                let at = self.rng.below(self.shapes.len() as u64) as usize;
                let shape = self.shapes.swap_remove(at);
                // A real client sends bare tombstones; `t` rides along for latency measurement
                // (the stored tombstone drops it either way).
                let _ = write!(
                    patch,
                    r#""{c}-s{shape}/Shape":{{"_exists":false,"t":{stamp}}},"{c}-s{shape}/Position":{{"_exists":false}}"#,
                    c = self.client
                );
            }
            Kind::Stroke => self.stroke_delta(&mut patch, stamp),
        }
        (document_frame(message_id, &patch), kind)
    }

    /// Mixed traffic: 30% cursors, 40% moves, 15% stroke points, 10% creates, 5% deletes
    /// (a delete of the last few shapes becomes a create, so every editor keeps shapes to move).
    fn pick_kind(&mut self) -> Kind {
        match self.rng.below(100) {
            0..=29 => Kind::Cursor,
            30..=69 => Kind::Move,
            70..=84 => Kind::Stroke,
            85..=94 => Kind::Create,
            _ if self.shapes.len() as u32 > START_SHAPES => Kind::Delete,
            _ => Kind::Create,
        }
    }

    /// A new rectangle: its Shape and Position components.
    fn create_components(&mut self, patch: &mut String, stamp: u64) {
        let shape = self.next_shape;
        self.next_shape += 1;
        self.shapes.push(shape);
        let (x, y) = (self.rng.coord(), self.rng.coord());
        let (w, h) = (20 + self.rng.below(200), 20 + self.rng.below(200));
        let fill = self.rng.below(0xFF_FFFF);
        let _ = write!(
            patch,
            r##""{c}-s{shape}/Shape":{{"_exists":true,"t":{stamp},"kind":"rect","w":{w},"h":{h},"fill":"#{fill:06x}","stroke":"#222222","strokeWidth":2,"opacity":1}},"{c}-s{shape}/Position":{{"_exists":true,"x":{x},"y":{y},"rotation":0,"z":{shape}}}"##,
            c = self.client
        );
    }

    /// The next few points of the current pen stroke as a buffer delta (only the new run travels;
    /// the server materializes the whole array). Starts a new stroke entity when needed.
    fn stroke_delta(&mut self, patch: &mut String, stamp: u64) {
        let (id, len, fresh) = match self.stroke {
            Some((id, len)) if len < 2 * POINTS_PER_MESSAGE * MESSAGES_PER_STROKE => {
                (id, len, false)
            }
            _ => {
                let id = self.next_stroke;
                self.next_stroke += 1;
                (id, 0, true)
            }
        };
        let new_len = len + 2 * POINTS_PER_MESSAGE;
        self.stroke = Some((id, new_len));
        let mut run = String::with_capacity(64);
        for i in 0..2 * POINTS_PER_MESSAGE {
            if i > 0 {
                run.push(',');
            }
            let _ = write!(run, "{}", self.rng.coord());
        }
        let points = format!(r#"{{"__buf":1,"len":{new_len},"runs":[[{len},[{run}]]]}}"#);
        let c = &self.client;
        if fresh {
            let _ = write!(
                patch,
                r##""{c}-p{id}/Stroke":{{"_exists":true,"t":{stamp},"color":"#1e1e1e","width":2,"points":{points}}}"##
            );
        } else {
            let _ = write!(
                patch,
                r#""{c}-p{id}/Stroke":{{"t":{stamp},"points":{points}}}"#
            );
        }
    }
}

fn document_frame(message_id: &str, patch: &str) -> String {
    format!(r#"{{"type":"patch","messageId":"{message_id}","documentPatches":[{{{patch}}}]}}"#)
}

fn ephemeral_frame(message_id: &str, patch: &str) -> String {
    format!(r#"{{"type":"patch","messageId":"{message_id}","ephemeralPatches":[{{{patch}}}]}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Every generated frame is valid JSON of the protocol's shape, with `t` in its first component.
    #[test]
    fn frames_are_valid_and_stamped() {
        let mut editor = Editor::new(Traffic::Mixed, "c1", 7);
        let setup: Value = serde_json::from_str(&editor.setup_frame("0", 5)).expect("json");
        assert_eq!(
            setup["documentPatches"][0].as_object().map(|m| m.len()),
            Some(8)
        );
        let mut seen = std::collections::HashSet::new();
        for seq in 1..2000u64 {
            let (frame, kind) = editor.next_frame(&seq.to_string(), 1000 + seq);
            seen.insert(kind.name());
            let v: Value = serde_json::from_str(&frame).expect("json");
            assert_eq!(v["type"], "patch");
            let list = if kind == Kind::Cursor {
                &v["ephemeralPatches"]
            } else {
                &v["documentPatches"]
            };
            let first = list[0].as_object().and_then(|m| m.values().next());
            assert_eq!(first.and_then(|c| c["t"].as_u64()), Some(1000 + seq));
            assert_eq!(crate::client::stamp_of(&frame), Some(1000 + seq));
        }
        assert_eq!(seen.len(), Kind::ALL.len());
    }
}
