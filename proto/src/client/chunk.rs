//! Chunks: how a frame larger than the gateway lets through travels as
//! several.
//!
//! API Gateway caps a message at 128 KB and a browser sends each message as
//! one frame, capped at 32 KB. A larger frame is cut into pieces of its JSON
//! text; each piece travels in a `chunk` frame (server → client:
//! `{"type":"chunk","chunk_id","index","count","data"}`; client → server:
//! `{"action":"chunk","payload":{"chunk_id","index","count","data"}}`), and
//! the receiver joins the pieces in index order and handles the result as
//! the one frame it was. Pieces are cut on character boundaries, sized by
//! their JSON-escaped length so that every chunk frame fits the limit.

use serde::{Deserialize, Serialize};

/// The action a client's chunk frames carry (reserved: no processor or
/// declared action may use it).
pub const CHUNK_ACTION: &str = "chunk";

/// Longest `chunk_id` (letters, digits, `-`, `_`).
pub const MAX_CHUNK_ID_LEN: usize = 64;

/// One piece of a larger frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    /// Names the frame the piece belongs to; the same in every piece.
    pub chunk_id: String,
    /// The piece's position, from 0.
    pub index: u32,
    /// How many pieces the frame has (at least 2).
    pub count: u32,
    /// The piece of the frame's text.
    pub data: String,
}

impl Chunk {
    /// Whether the fields are usable: a well-formed id, `index < count`,
    /// `count >= 2`. Says what is wrong otherwise.
    pub fn check(&self) -> Result<(), &'static str> {
        if !valid_chunk_id(&self.chunk_id) {
            return Err("chunk_id must be 1 to 64 letters, digits, '-' or '_'");
        }
        if self.count < 2 {
            return Err("count must be at least 2 (a message that fits is sent whole)");
        }
        if self.index >= self.count {
            return Err("index must be below count");
        }
        Ok(())
    }
}

/// Whether `id` may name a chunked frame.
pub fn valid_chunk_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_CHUNK_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The bytes `c` takes inside a JSON string.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Cuts `text` into pieces whose JSON-escaped length is at most `budget`
/// bytes (at least one character each, so a budget under 6 bytes still
/// makes progress).
pub fn pieces(text: &str, budget: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, c) in text.char_indices() {
        let len = escaped_len(c);
        if used + len > budget && i > start {
            out.push(&text[start..i]);
            start = i;
            used = 0;
        }
        used += len;
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// Room a chunk's envelope takes besides its data, for the largest index
/// and count a frame can have.
fn overhead(envelope: impl Fn(&Chunk) -> String, chunk_id: &str) -> usize {
    envelope(&Chunk {
        chunk_id: chunk_id.to_owned(),
        index: u32::MAX,
        count: u32::MAX,
        data: String::new(),
    })
    .len()
}

/// Cuts `text` into chunk frames of at most `max_frame_bytes` each, each
/// made by `envelope`. Returns `None` when `text` already fits (send it
/// whole) and when `max_frame_bytes` leaves no room for data.
pub fn split(
    text: &str,
    max_frame_bytes: usize,
    chunk_id: &str,
    envelope: impl Fn(&Chunk) -> String,
) -> Option<Vec<String>> {
    if text.len() <= max_frame_bytes {
        return None;
    }
    let budget = max_frame_bytes.checked_sub(overhead(&envelope, chunk_id))?;
    if budget < 6 {
        return None;
    }
    let parts = pieces(text, budget);
    let count = u32::try_from(parts.len()).ok()?;
    Some(
        parts
            .into_iter()
            .zip(0..)
            .map(|(data, index)| {
                envelope(&Chunk {
                    chunk_id: chunk_id.to_owned(),
                    index,
                    count,
                    data: data.to_owned(),
                })
            })
            .collect(),
    )
}

/// Joins pieces received out of order: holds at most `count` pieces of one
/// frame and gives the frame back when the last one arrives.
#[derive(Debug)]
pub struct Joiner {
    chunk_id: String,
    parts: Vec<Option<String>>,
    received: usize,
    bytes: usize,
}

/// Why a piece was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// The piece is malformed (see [`Chunk::check`]).
    Malformed(&'static str),
    /// A piece of another frame while one is incomplete.
    Interleaved,
    /// The piece's `count` differs from the frame's first piece.
    CountChanged,
    /// The same index twice.
    Duplicate,
    /// More pieces or bytes than allowed.
    TooLarge,
}

impl Joiner {
    /// Starts joining the frame `chunk` belongs to, allowing at most
    /// `max_count` pieces.
    pub fn start(chunk: &Chunk, max_count: u32) -> Result<Self, JoinError> {
        chunk.check().map_err(JoinError::Malformed)?;
        if chunk.count > max_count {
            return Err(JoinError::TooLarge);
        }
        Ok(Self {
            chunk_id: chunk.chunk_id.clone(),
            parts: vec![None; chunk.count as usize],
            received: 0,
            bytes: 0,
        })
    }

    /// The frame being joined.
    pub fn chunk_id(&self) -> &str {
        &self.chunk_id
    }

    /// Pieces still missing.
    pub fn remaining(&self) -> usize {
        self.parts.len() - self.received
    }

    /// Adds a piece; `Ok(Some(text))` when it was the last one. `max_bytes`
    /// bounds the joined text.
    pub fn add(&mut self, chunk: Chunk, max_bytes: usize) -> Result<Option<String>, JoinError> {
        chunk.check().map_err(JoinError::Malformed)?;
        if chunk.chunk_id != self.chunk_id {
            return Err(JoinError::Interleaved);
        }
        if chunk.count as usize != self.parts.len() {
            return Err(JoinError::CountChanged);
        }
        if self.bytes + chunk.data.len() > max_bytes {
            return Err(JoinError::TooLarge);
        }
        let slot = &mut self.parts[chunk.index as usize];
        if slot.is_some() {
            return Err(JoinError::Duplicate);
        }
        self.bytes += chunk.data.len();
        *slot = Some(chunk.data);
        self.received += 1;
        if self.received < self.parts.len() {
            return Ok(None);
        }
        let mut text = String::with_capacity(self.bytes);
        for part in self.parts.drain(..).flatten() {
            text.push_str(&part);
        }
        Ok(Some(text))
    }
}

/// Joins a client's incoming `chunk` frames: pieces of several frames may
/// interleave (two large broadcasts at once), each frame is given back when
/// its last piece arrives; bounded in bytes held and in time.
#[derive(Debug)]
pub struct Reassembler {
    partials: std::collections::HashMap<String, (Joiner, std::time::Instant, usize)>,
    held: usize,
    max_bytes: usize,
    timeout: std::time::Duration,
}

impl Default for Reassembler {
    /// 64 MiB held at most, 60 s per frame.
    fn default() -> Self {
        Self::new(64 * 1024 * 1024, std::time::Duration::from_secs(60))
    }
}

impl Reassembler {
    /// Holds at most `max_bytes` across frames; drops a frame not complete
    /// `timeout` after its first piece.
    pub fn new(max_bytes: usize, timeout: std::time::Duration) -> Self {
        Self {
            partials: std::collections::HashMap::new(),
            held: 0,
            max_bytes,
            timeout,
        }
    }

    /// Adds a piece; the frame's text when it was the last one. A piece
    /// that does not fit (malformed, repeated, over the bound) is refused
    /// and its frame dropped.
    pub fn add(&mut self, chunk: Chunk) -> Result<Option<String>, JoinError> {
        let now = std::time::Instant::now();
        let timeout = self.timeout;
        let mut freed = 0;
        self.partials.retain(|_, (_, started, bytes)| {
            let keep = now.duration_since(*started) <= timeout;
            if !keep {
                freed += *bytes;
            }
            keep
        });
        self.held -= freed;
        let id = chunk.chunk_id.clone();
        let len = chunk.data.len();
        if !self.partials.contains_key(&id) {
            let joiner = Joiner::start(&chunk, u32::MAX)?;
            self.partials.insert(id.clone(), (joiner, now, 0));
        }
        let room = self.max_bytes.saturating_sub(self.held);
        let Some((joiner, _, bytes)) = self.partials.get_mut(&id) else {
            return Ok(None);
        };
        match joiner.add(chunk, (*bytes).saturating_add(room)) {
            Ok(None) => {
                *bytes += len;
                self.held += len;
                Ok(None)
            }
            Ok(Some(text)) => {
                self.held -= *bytes;
                self.partials.remove(&id);
                Ok(Some(text))
            }
            Err(err) => {
                self.held -= *bytes;
                self.partials.remove(&id);
                Err(err)
            }
        }
    }

    /// Frames being joined.
    pub fn pending(&self) -> usize {
        self.partials.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_envelope(chunk: &Chunk) -> String {
        crate::client::Frame::chunk(chunk).to_json()
    }

    #[test]
    fn a_frame_that_fits_is_not_cut() {
        assert_eq!(split("{}", 100, "a", server_envelope), None);
        let exact = "x".repeat(100);
        assert_eq!(split(&exact, 100, "a", server_envelope), None);
        assert!(split(&"x".repeat(101), 100, "a", server_envelope).is_some());
    }

    #[test]
    fn every_chunk_fits_and_the_pieces_join_back_whatever_the_text() {
        let text = format!(
            "{{\"data\":\"{}\\\"quoted\\\" \u{1} é 漢字 🎉\",\"n\":{}}}",
            "ab\"\\\n".repeat(3000),
            "9".repeat(500)
        );
        for limit in [200, 1000, 8_000] {
            let frames = split(&text, limit, "id-1", server_envelope).expect("cut");
            assert!(frames.len() >= 2);
            let mut joiner = None;
            let mut joined = None;
            // Out of order: last first.
            for frame in frames.iter().rev() {
                assert!(frame.len() <= limit, "{} > {limit}", frame.len());
                let value: serde_json::Value = serde_json::from_str(frame).expect("json");
                assert_eq!(value["type"], "chunk");
                let mut value = value;
                value.as_object_mut().expect("object").remove("type");
                let chunk: Chunk = serde_json::from_value(value).expect("chunk");
                let j = joiner.get_or_insert_with(|| Joiner::start(&chunk, 10_000).expect("start"));
                if let Some(text) = j.add(chunk, usize::MAX).expect("add") {
                    joined = Some(text);
                }
            }
            assert_eq!(joined.as_deref(), Some(text.as_str()));
        }
    }

    #[test]
    fn interleaved_frames_are_each_joined() {
        let a = split(&"a".repeat(500), 200, "a", server_envelope).expect("a");
        let b = split(&"b".repeat(500), 200, "b", server_envelope).expect("b");
        let parse = |frame: &str| {
            let mut value: serde_json::Value = serde_json::from_str(frame).expect("json");
            value.as_object_mut().expect("object").remove("type");
            serde_json::from_value::<Chunk>(value).expect("chunk")
        };
        let mut r = Reassembler::new(10_000, std::time::Duration::from_secs(60));
        let mut joined = Vec::new();
        for (x, y) in a.iter().zip(&b) {
            joined.extend(r.add(parse(x)).expect("a piece"));
            joined.extend(r.add(parse(y)).expect("b piece"));
        }
        assert_eq!(joined, vec!["a".repeat(500), "b".repeat(500)]);
        assert_eq!(r.pending(), 0);
        let mut small = Reassembler::new(100, std::time::Duration::from_secs(60));
        assert_eq!(small.add(parse(&a[0])), Err(JoinError::TooLarge));
        assert_eq!(small.pending(), 0);
    }

    #[test]
    fn the_joiner_refuses_what_does_not_belong() {
        let chunk = |id: &str, index, count, data: &str| Chunk {
            chunk_id: id.to_owned(),
            index,
            count,
            data: data.to_owned(),
        };
        assert_eq!(
            Joiner::start(&chunk("a", 0, 1, ""), 10)
                .map(|_| ())
                .unwrap_err(),
            JoinError::Malformed("count must be at least 2 (a message that fits is sent whole)")
        );
        assert_eq!(
            Joiner::start(&chunk("a b", 0, 2, ""), 10)
                .map(|_| ())
                .unwrap_err(),
            JoinError::Malformed("chunk_id must be 1 to 64 letters, digits, '-' or '_'")
        );
        assert_eq!(
            Joiner::start(&chunk("a", 0, 11, ""), 10)
                .map(|_| ())
                .unwrap_err(),
            JoinError::TooLarge
        );
        let mut j = Joiner::start(&chunk("a", 0, 3, ""), 10).expect("start");
        assert_eq!(j.add(chunk("a", 0, 3, "xx"), 5), Ok(None));
        assert_eq!(j.add(chunk("a", 0, 3, "xx"), 5), Err(JoinError::Duplicate));
        assert_eq!(
            j.add(chunk("b", 1, 3, "xx"), 5),
            Err(JoinError::Interleaved)
        );
        assert_eq!(
            j.add(chunk("a", 1, 4, "xx"), 5),
            Err(JoinError::CountChanged)
        );
        assert_eq!(
            j.add(chunk("a", 3, 3, "xx"), 5),
            Err(JoinError::Malformed("index must be below count"))
        );
        assert_eq!(j.add(chunk("a", 1, 3, "xxxx"), 5), Err(JoinError::TooLarge));
        assert_eq!(j.add(chunk("a", 2, 3, "yy"), 5), Ok(None));
        assert_eq!(
            j.add(chunk("a", 1, 3, "z"), 5),
            Ok(Some("xxzyy".to_owned()))
        );
    }
}
