//! `gen_trace`: writes `benches/data/trace.jsonl`, the recorded editing trace the criterion benches
//! (`benches/engine.rs`, `benches/frames.rs`) replay.
//!
//! ```text
//! cargo run --example gen_trace                       # writes benches/data/trace.jsonl
//! cargo run --example gen_trace -- /tmp/trace.jsonl   # or anywhere else
//! ```
//!
//! The output is deterministic (a fixed-seed xorshift64*, no `rand`), so regenerating gives the
//! same bytes; change `SEED`, `FRAMES` or the client mix below to record a different trace.
//!
//! Each line is one client -> server frame as a canvas-store 2.0 client sends it, tagged with who
//! sent it: `{"room":"<roomId>","client":"<clientId>","frame":{...}}` (the frame object is the exact
//! text a decoder sees). What it models:
//! - 20 clients in 3 rooms (9, 7 and 4 clients); client and entity ids are UUIDs, `messageId` is
//!   `<clientId>-<n>`, as the npm client sends them. Clients have different activity levels.
//! - Every client joins with `reconnect` (`lastTimestamp` 0, `protocolVersion` 2). Now and then a
//!   client drops off for a while, keeps editing offline, and comes back with a `reconnect` carrying
//!   the room clock it had seen and its offline edits as `documentPatches`.
//! - Editing is a sequence of gestures interleaved across clients, one 33 ms batch per frame:
//!   cursor moves (ephemeral `<clientId>/Cursor` patches, the most common frame), drags of one or
//!   several shapes (`x`/`y` writes to `<id>/Block`, plus the cursor), pen strokes (a `<id>/Stroke`
//!   created with a buffer delta, then grown by append deltas `{"__buf":1,"len":L,"runs":[[o,[..]]]}`),
//!   shape creates with several fields (a `Block`, often with a `Text`), typing into a `Text`,
//!   resizes and recolors, deletes (`{"_exists":false}` for every component of the entity),
//!   selections (ephemeral, created and deleted), camera moves (`SINGLETON/Camera`) and pastes of
//!   many shapes in one frame.
//! - The recorded trace (5,800 frames, about 1.9 MB) is 39% cursor-only frames, 24% moves, 18%
//!   stroke appends, 5% typing, 3% selections, 4% creates (shapes, strokes, texts, pastes), 1.6%
//!   deletes, 3% resizes/recolors/camera, and 42 reconnects (20 joins, 22 resumes with offline
//!   edits). Replayed, it leaves design-review at clock 1545 with 305 live components,
//!   sprint-board at 1427 with 232, whiteboard at 370 with 72.
//! - The generator tracks each room's clock (+1 per frame with document patches) so that
//!   `lastTimestamp` values of reconnects are ones the server really handed out.

use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::{json, Map, Value};

const SEED: u64 = 0x5eed_cafe_f00d_0005;
/// Frames to record (the file stays well under 2 MB).
const FRAMES: usize = 5_800;
/// Clients per room.
const ROOMS: [(&str, usize); 3] = [("design-review", 9), ("sprint-board", 7), ("whiteboard", 4)];

/// xorshift64* (Vigna): tiny, fast, deterministic; plenty for picking what a client does next.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }

    /// A canvas coordinate: half-pixel steps, as pointer events on a HiDPI screen give.
    fn coord(&mut self, max: usize) -> f64 {
        self.below(max * 2) as f64 / 2.0
    }

    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
    }
}

/// A number as JavaScript prints it: `318`, not `318.0`.
fn num(v: f64) -> Value {
    if v.fract() == 0.0 {
        Value::from(v as i64)
    } else {
        Value::from(v)
    }
}

const TAGS: [&str; 5] = ["rect", "ellipse", "sticky", "diamond", "arrow"];
const COLORS: [&str; 6] = [
    "#1e1e1e", "#e03131", "#2f9e44", "#1971c2", "#f08c00", "#ffd43b",
];
const WORDS: [&str; 16] = [
    "plan", "the", "launch", "review", "api", "draft", "owner", "ship", "todo", "blocked",
    "design", "sync", "notes", "q3", "metrics", "retro",
];

struct Shape {
    id: String,
    x: f64,
    y: f64,
    text: Option<String>,
}

#[derive(Default)]
struct Room {
    id: &'static str,
    /// The server's clock: +1 per request with document patches.
    clock: u64,
    shapes: Vec<Shape>,
    strokes: Vec<String>,
}

enum Gesture {
    Idle,
    Hover {
        left: usize,
    },
    Drag {
        shapes: Vec<usize>,
        left: usize,
        dx: f64,
        dy: f64,
    },
    Draw {
        key: String,
        len: usize,
        left: usize,
        x: f64,
        y: f64,
    },
    Type {
        shape: usize,
        left: usize,
    },
}

struct Client {
    id: String,
    room: usize,
    /// Relative activity: how often this client is the one sending the next frame.
    weight: usize,
    sent: u64,
    joined: bool,
    /// Steps left offline (0: online).
    offline: usize,
    /// Room clock this client has seen (its resume cursor).
    seen: u64,
    /// Edits made while offline, sent with the next `reconnect`.
    buffer: Vec<Value>,
    cursor: bool,
    selection: bool,
    gesture: Gesture,
}

struct Gen {
    rng: Rng,
    rooms: Vec<Room>,
    clients: Vec<Client>,
    out: String,
    frames: usize,
}

fn patch_of(entries: Vec<(String, Value)>) -> Value {
    Value::Object(entries.into_iter().collect::<Map<_, _>>())
}

impl Gen {
    fn new() -> Gen {
        let mut rng = Rng(SEED);
        let mut rooms = Vec::new();
        let mut clients = Vec::new();
        for (r, (id, n)) in ROOMS.iter().enumerate() {
            rooms.push(Room {
                id,
                ..Room::default()
            });
            for _ in 0..*n {
                let weight = [1, 1, 2, 3, 5][rng.below(5)];
                clients.push(Client {
                    id: rng.uuid(),
                    room: r,
                    weight,
                    sent: 0,
                    joined: false,
                    offline: 0,
                    seen: 0,
                    buffer: Vec::new(),
                    cursor: false,
                    selection: false,
                    gesture: Gesture::Idle,
                });
            }
        }
        Gen {
            rng,
            rooms,
            clients,
            out: String::new(),
            frames: 0,
        }
    }

    fn pick_client(&mut self) -> usize {
        let total: usize = self.clients.iter().map(|c| c.weight).sum();
        let mut at = self.rng.below(total);
        for (i, c) in self.clients.iter().enumerate() {
            if at < c.weight {
                return i;
            }
            at -= c.weight;
        }
        unreachable!("weights sum to total")
    }

    fn emit(&mut self, c: usize, frame: Value) {
        let client = &self.clients[c];
        let line = json!({"room": self.rooms[client.room].id, "client": client.id, "frame": frame});
        let _ = writeln!(self.out, "{line}");
        self.frames += 1;
    }

    /// Sends a `patch` frame; a frame with document patches advances the room clock, and every
    /// online client of the room has seen it once it is acked/broadcast.
    fn send_patch(&mut self, c: usize, doc: Vec<(String, Value)>, eph: Vec<(String, Value)>) {
        let client = &mut self.clients[c];
        client.sent += 1;
        let mut frame = Map::new();
        frame.insert("type".into(), json!("patch"));
        frame.insert(
            "messageId".into(),
            json!(format!("{}-{}", client.id, client.sent)),
        );
        let room = client.room;
        if !doc.is_empty() {
            frame.insert("documentPatches".into(), json!([patch_of(doc)]));
            self.advance(room);
        }
        if !eph.is_empty() {
            frame.insert("ephemeralPatches".into(), json!([patch_of(eph)]));
        }
        self.emit(c, Value::Object(frame));
    }

    /// One request with document patches: the room clock advances, and every online client of
    /// the room sees the new value (in its ack or in the broadcast).
    fn advance(&mut self, room: usize) {
        self.rooms[room].clock += 1;
        let clock = self.rooms[room].clock;
        for other in self.clients.iter_mut() {
            if other.room == room && other.joined && other.offline == 0 {
                other.seen = clock;
            }
        }
    }

    fn send_reconnect(&mut self, c: usize) {
        let client = &mut self.clients[c];
        let mut frame = Map::new();
        frame.insert("type".into(), json!("reconnect"));
        frame.insert("lastTimestamp".into(), json!(client.seen));
        frame.insert("protocolVersion".into(), json!(2));
        let buffer = std::mem::take(&mut client.buffer);
        client.joined = true;
        client.cursor = false;
        client.selection = false;
        let room = client.room;
        if !buffer.is_empty() {
            frame.insert("documentPatches".into(), Value::Array(buffer));
            self.advance(room);
        }
        // The reply brings the client up to date.
        self.clients[c].seen = self.rooms[room].clock;
        self.emit(c, Value::Object(frame));
    }

    fn cursor(&mut self, c: usize, x: f64, y: f64) -> (String, Value) {
        let client = &mut self.clients[c];
        let key = format!("{}/Cursor", client.id);
        let value = if client.cursor {
            json!({"position": [num(x), num(y)]})
        } else {
            client.cursor = true;
            json!({"_exists": true, "_version": null, "position": [num(x), num(y)], "name": format!("user-{}", &client.id[..4])})
        };
        (key, value)
    }

    fn new_shape(&mut self, room: usize, out: &mut Vec<(String, Value)>) {
        let id = self.rng.uuid();
        let (x, y) = (self.rng.coord(4000), self.rng.coord(3000));
        let tag = TAGS[self.rng.below(TAGS.len())];
        out.push((
            format!("{id}/Block"),
            json!({
                "_exists": true, "_version": null, "tag": tag,
                "x": num(x), "y": num(y),
                "w": self.rng.range(40, 400), "h": self.rng.range(40, 300),
                "rotation": 0, "color": COLORS[self.rng.below(COLORS.len())],
            }),
        ));
        let text = if tag == "sticky" || self.rng.chance(0.4) {
            let n = self.rng.range(1, 5);
            let content = self.words(n);
            out.push((
                format!("{id}/Text"),
                json!({"_exists": true, "_version": null, "content": content, "fontSize": 16}),
            ));
            Some(content)
        } else {
            None
        };
        self.rooms[room].shapes.push(Shape { id, x, y, text });
    }

    fn words(&mut self, n: usize) -> String {
        let mut s = String::new();
        for i in 0..n {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(WORDS[self.rng.below(WORDS.len())]);
        }
        s
    }

    /// `n` stroke points (x, y pairs) starting near `(x, y)`: a wobbly pen line.
    fn points(&mut self, n: usize, x: &mut f64, y: &mut f64) -> Vec<Value> {
        let mut values = Vec::with_capacity(n * 2);
        for _ in 0..n {
            *x = (*x + self.rng.coord(12) - 6.0).max(0.0);
            *y = (*y + self.rng.coord(12) - 6.0).max(0.0);
            values.push(num(*x));
            values.push(num(*y));
        }
        values
    }

    /// One step of client `c`: the next frame of its gesture, or a new one.
    fn step(&mut self, c: usize) {
        let room = self.clients[c].room;
        if !self.clients[c].joined {
            return self.send_reconnect(c);
        }
        if self.clients[c].offline > 0 {
            self.clients[c].offline -= 1;
            if self.clients[c].offline == 0 {
                return self.send_reconnect(c);
            }
            // Offline edits: moves of existing shapes, batched into the next reconnect.
            if !self.rooms[room].shapes.is_empty() && self.rng.chance(0.3) {
                let s = self.rng.below(self.rooms[room].shapes.len());
                let (x, y) = (self.rng.coord(4000), self.rng.coord(3000));
                let shape = &mut self.rooms[room].shapes[s];
                (shape.x, shape.y) = (x, y);
                let patch = patch_of(vec![(
                    format!("{}/Block", shape.id),
                    json!({"x": num(x), "y": num(y)}),
                )]);
                self.clients[c].buffer.push(patch);
            }
            return;
        }
        match std::mem::replace(&mut self.clients[c].gesture, Gesture::Idle) {
            Gesture::Idle => self.start(c, room),
            Gesture::Hover { left } => {
                let (x, y) = (self.rng.coord(4000), self.rng.coord(3000));
                let eph = vec![self.cursor(c, x, y)];
                self.send_patch(c, Vec::new(), eph);
                if left > 1 {
                    self.clients[c].gesture = Gesture::Hover { left: left - 1 };
                }
            }
            Gesture::Drag {
                shapes,
                left,
                dx,
                dy,
            } => {
                let mut doc = Vec::new();
                let (mut cx, mut cy) = (0.0, 0.0);
                for &s in &shapes {
                    let Some(shape) = self.rooms[room].shapes.get_mut(s) else {
                        continue;
                    };
                    shape.x = (shape.x + dx).max(0.0);
                    shape.y = (shape.y + dy).max(0.0);
                    (cx, cy) = (shape.x + 10.0, shape.y + 10.0);
                    doc.push((
                        format!("{}/Block", shape.id),
                        json!({"x": num(shape.x), "y": num(shape.y)}),
                    ));
                }
                let eph = vec![self.cursor(c, cx, cy)];
                self.send_patch(c, doc, eph);
                if left > 1 {
                    self.clients[c].gesture = Gesture::Drag {
                        shapes,
                        left: left - 1,
                        dx,
                        dy,
                    };
                }
            }
            Gesture::Draw {
                key,
                len,
                left,
                mut x,
                mut y,
            } => {
                let n = self.rng.range(2, 8);
                let values = self.points(n, &mut x, &mut y);
                let new_len = len + values.len();
                let doc = vec![(
                    key.clone(),
                    json!({"points": {"__buf": 1, "len": new_len, "runs": [[len, values]]}}),
                )];
                let eph = vec![self.cursor(c, x, y)];
                self.send_patch(c, doc, eph);
                if left > 1 {
                    self.clients[c].gesture = Gesture::Draw {
                        key,
                        len: new_len,
                        left: left - 1,
                        x,
                        y,
                    };
                }
            }
            Gesture::Type { shape, left } => {
                let Some(s) = self.rooms[room].shapes.get(shape) else {
                    return;
                };
                let (id, x, y, text) = (s.id.clone(), s.x, s.y, s.text.clone());
                let word = self.words(1);
                // A shape without a text gets one on the first keystroke.
                let value = match text {
                    Some(mut content) => {
                        let _ = write!(content, " {word}");
                        json!({"content": content})
                    }
                    None => {
                        json!({"_exists": true, "_version": null, "content": word, "fontSize": 16})
                    }
                };
                self.rooms[room].shapes[shape].text = value["content"].as_str().map(str::to_owned);
                let doc = vec![(format!("{id}/Text"), value)];
                let eph = vec![self.cursor(c, x + 20.0, y + 20.0)];
                self.send_patch(c, doc, eph);
                if left > 1 {
                    self.clients[c].gesture = Gesture::Type {
                        shape,
                        left: left - 1,
                    };
                }
            }
        }
    }

    /// Starts a new gesture (or sends a one-frame action).
    fn start(&mut self, c: usize, room: usize) {
        let roll = self.rng.below(1000);
        let has_shapes = !self.rooms[room].shapes.is_empty();
        // An empty room gets content first: a paste of many shapes.
        if !has_shapes || roll < 5 {
            let mut doc = Vec::new();
            for _ in 0..self.rng.range(10, 40) {
                self.new_shape(room, &mut doc);
            }
            return self.send_patch(c, doc, Vec::new());
        }
        let shapes = self.rooms[room].shapes.len();
        match roll {
            // Moving the pointer around: cursor-only frames, the most common kind.
            5..=304 => {
                self.clients[c].gesture = Gesture::Hover {
                    left: self.rng.range(2, 8),
                };
                self.step(c);
            }
            // Drag one shape, sometimes a selection of several.
            305..=454 => {
                let n = if self.rng.chance(0.8) {
                    1
                } else {
                    self.rng.range(2, 6)
                };
                let picked = (0..n).map(|_| self.rng.below(shapes)).collect();
                self.clients[c].gesture = Gesture::Drag {
                    shapes: picked,
                    left: self.rng.range(2, 10),
                    dx: self.rng.coord(30) - 15.0,
                    dy: self.rng.coord(30) - 15.0,
                };
                self.step(c);
            }
            // A pen stroke: create, then append deltas.
            455..=504 => {
                let id = self.rng.uuid();
                let key = format!("{id}/Stroke");
                let (mut x, mut y) = (self.rng.coord(4000), self.rng.coord(3000));
                let n = self.rng.range(2, 6);
                let values = self.points(n, &mut x, &mut y);
                let len = values.len();
                let doc = vec![(
                    key.clone(),
                    json!({
                        "_exists": true, "_version": null,
                        "color": COLORS[self.rng.below(COLORS.len())], "width": self.rng.range(1, 8),
                        "points": {"__buf": 1, "len": len, "runs": [[0, values]]},
                    }),
                )];
                let eph = vec![self.cursor(c, x, y)];
                self.send_patch(c, doc, eph);
                self.rooms[room].strokes.push(key.clone());
                self.clients[c].gesture = Gesture::Draw {
                    key,
                    len,
                    left: self.rng.range(3, 30),
                    x,
                    y,
                };
            }
            // Create a shape (often with a text).
            505..=624 => {
                let mut doc = Vec::new();
                self.new_shape(room, &mut doc);
                self.send_patch(c, doc, Vec::new());
            }
            // Delete one to three entities (every component of each).
            625..=694 => {
                let mut doc = Vec::new();
                for _ in 0..self.rng.range(1, 3) {
                    let strokes = self.rooms[room].strokes.len();
                    if strokes > 0 && self.rng.chance(0.4) {
                        let key = self.rooms[room]
                            .strokes
                            .swap_remove(self.rng.below(strokes));
                        doc.push((key, json!({"_exists": false})));
                    } else if self.rooms[room].shapes.len() > 5 {
                        let n = self.rooms[room].shapes.len();
                        let shape = self.rooms[room].shapes.swap_remove(self.rng.below(n));
                        doc.push((format!("{}/Block", shape.id), json!({"_exists": false})));
                        if shape.text.is_some() {
                            doc.push((format!("{}/Text", shape.id), json!({"_exists": false})));
                        }
                    }
                }
                self.send_patch(c, doc, Vec::new());
            }
            // Typing into a shape's text.
            695..=744 => {
                let shape = self.rng.below(shapes);
                self.clients[c].gesture = Gesture::Type {
                    shape,
                    left: self.rng.range(2, 6),
                };
                self.step(c);
            }
            // Selection: select a few shapes, or clear the selection.
            745..=864 => {
                let client = &self.clients[c];
                let key = format!("{}/Selection", client.id);
                let value = if client.selection && self.rng.chance(0.5) {
                    self.clients[c].selection = false;
                    json!({"_exists": false})
                } else {
                    let ids: Vec<Value> = (0..self.rng.range(1, 4))
                        .map(|_| json!(self.rooms[room].shapes[self.rng.below(shapes)].id))
                        .collect();
                    self.clients[c].selection = true;
                    json!({"_exists": true, "ids": ids})
                };
                self.send_patch(c, Vec::new(), vec![(key, value)]);
            }
            // Resize or recolor.
            865..=944 => {
                let id = self.rooms[room].shapes[self.rng.below(shapes)].id.clone();
                let value = if self.rng.chance(0.5) {
                    json!({"w": self.rng.range(40, 400), "h": self.rng.range(40, 300)})
                } else {
                    json!({"color": COLORS[self.rng.below(COLORS.len())]})
                };
                self.send_patch(c, vec![(format!("{id}/Block"), value)], Vec::new());
            }
            // Camera (a document singleton in this app).
            945..=984 => {
                let value = json!({"left": num(self.rng.coord(2000) - 1000.0), "top": num(self.rng.coord(2000) - 1000.0), "zoom": num([0.5, 0.75, 1.0, 1.25, 2.0][self.rng.below(5)])});
                self.send_patch(c, vec![("SINGLETON/Camera".into(), value)], Vec::new());
            }
            // Drop off the network for a while.
            _ => {
                self.clients[c].offline = self.rng.range(10, 80);
            }
        }
    }
}

fn main() -> std::io::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| format!("{}/benches/data/trace.jsonl", env!("CARGO_MANIFEST_DIR")));
    let mut gen = Gen::new();
    while gen.frames < FRAMES {
        let c = gen.pick_client();
        gen.step(c);
    }
    if let Some(dir) = std::path::Path::new(&path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::create(&path)?.write_all(gen.out.as_bytes())?;
    let docs = gen.rooms.iter().map(|r| r.clock).sum::<u64>();
    eprintln!(
        "wrote {} frames ({} bytes, {} document requests) to {path}",
        gen.frames,
        gen.out.len(),
        docs
    );
    Ok(())
}
