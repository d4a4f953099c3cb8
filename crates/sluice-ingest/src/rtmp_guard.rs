//! A non-recursive check of RTMP chunks and AMF0 bodies before rml_rtmp parses them.
//!
//! rml_rtmp 0.8 and rml_amf0 0.3 trust their input in ways a peer can exploit:
//! - rml_amf0 parses nested objects and arrays by recursion, so one command message
//!   nesting strict arrays 100,000 deep (500 KB) overflows the thread's stack. That
//!   aborts the process; `catch_unwind` cannot stop it.
//! - A chunk header that shrinks a message already partly received underflows a
//!   subtraction in the chunk deserializer (a panic).
//! - An AMF0 command with fewer than three values panics in `drain(..3)`.
//! - A type 1–3 chunk whose extended timestamp is below `0xFFFFFF` underflows.
//! - `SetChunkSize 0` is accepted and turns every later chunk into a header alone.
//! - `@setDataFrame` with fewer than three values indexes past the end of its
//!   arguments while publishing (found by `fuzz/rtmp_session`).
//!
//! It also bounds what a peer can make the server hold: a message may declare at most
//! [`MAX_MESSAGE_LENGTH`] (refused at its header, before any payload is kept), control
//! messages must carry their whole fixed-size payload, and a continuation chunk header
//! (type 1–3) needs an earlier full header on its chunk stream.
//!
//! [`ChunkGuard`] mirrors rml_rtmp's chunk framing exactly (including its single
//! payload buffer shared by every chunk stream, so both see the same message
//! boundaries), and checks each complete message. It works in one of two ways:
//! - [`ChunkGuard::default`] only checks: the same bytes then go to rml_rtmp (the pull
//!   client). Only the messages it inspects are copied; audio and video, nearly all
//!   the bytes, are counted and skipped in place.
//! - [`ChunkGuard::reassembling`] also hands out every complete message
//!   ([`ChunkGuard::take_messages`]), timestamps computed as rml_rtmp computes them.
//!   A publisher's session decodes audio and video itself from these (one copy of
//!   each body, no parsing) and gives rml_rtmp only the few control and command
//!   messages, re-framed one message per chunk: rml_rtmp's chunk reassembly copied
//!   every media byte twice and was a tenth of the CPU of a passthrough channel.
//!
//! Remove the checks when rml_rtmp bounds its own recursion and arithmetic.

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};

/// Deepest nesting of AMF0 objects and arrays accepted. Real encoders send depth 2
/// (the connect command object, onMetaData's ECMA array); rml_amf0 recurses about
/// twice per level, so 32 levels stay far inside any thread's stack.
pub const MAX_AMF0_DEPTH: usize = 32;

/// Largest message accepted, in bytes. A keyframe of a 4K stream at 50 Mb/s is about
/// 2 MB; the 24-bit length field allows 16 MB, which one peer per connection could
/// otherwise make the server buffer.
pub const MAX_MESSAGE_LENGTH: u32 = 8 << 20;

/// An AMF0 string "@setDataFrame": the first value of a metadata message.
const SET_DATA_FRAME: &[u8] = b"\x02\x00\x0d@setDataFrame";

/// rml_rtmp's initial chunk size (RTMP 1.0 §5.4.1).
const INITIAL_CHUNK_SIZE: usize = 128;
const MAX_THREE_BYTE_TIMESTAMP: u32 = 0xFF_FFFF;

/// Why a connection's input was refused before it reached rml_rtmp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("AMF0 nesting deeper than {MAX_AMF0_DEPTH} in a message of type {type_id}")]
    Amf0TooDeep { type_id: u8 },
    #[error("AMF0 command with fewer than three values")]
    ShortCommand,
    #[error("chunk header shrinks a message already partly received")]
    ShrunkMessage,
    #[error("SetChunkSize 0")]
    ChunkSizeZero,
    #[error("extended timestamp below 0xFFFFFF in a continuation header")]
    BadExtendedTimestamp,
    #[error("@setDataFrame with fewer than three values")]
    ShortSetDataFrame,
    #[error("message of {0} bytes declared (at most {MAX_MESSAGE_LENGTH})")]
    MessageTooLong(u32),
    #[error("control message of type {type_id} with {len} bytes of payload")]
    ShortControl { type_id: u8, len: usize },
    #[error("continuation chunk header on chunk stream {0} that had no full header")]
    NoPreviousHeader(u32),
    #[error("chunk of a message of type {now} inside a message of type {started}")]
    MixedMessage { started: u8, now: u8 },
}

#[derive(Debug, Clone, Copy, Default)]
struct Header {
    /// The 24-bit timestamp field of the last header: absolute (type 0) or a delta.
    timestamp_field: u32,
    /// The message's timestamp (ms, wrapping at 32 bits), as rml_rtmp computes it.
    timestamp: u32,
    message_length: u32,
    type_id: u8,
    stream_id: u32,
}

/// A complete message, from [`ChunkGuard::take_messages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub type_id: u8,
    /// The message stream id (0 for control messages).
    pub stream_id: u32,
    /// Milliseconds, 32 bits (wrapping).
    pub timestamp: u32,
    pub body: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    BasicHeader,
    MessageHeader,
    ExtendedTimestamp,
    Payload,
}

/// The chunk framing of rml_rtmp's `ChunkDeserializer`, without its parsing.
#[derive(Debug)]
pub struct ChunkGuard {
    max_chunk_size: usize,
    /// The last header of each chunk stream: ids below 64 (the one-byte basic header,
    /// all real encoders use) by index, the rest in a map.
    previous_low: [Option<Header>; 64],
    previous: HashMap<u32, Header>,
    current: Header,
    current_csid: u32,
    /// Header format of the chunk being read: 0 (full) to 3 (no message header).
    format: u8,
    stage: Stage,
    /// Header bytes not parsed yet (and payload bytes that came with them).
    pending: BytesMut,
    /// The body of the message being read, if it is one that gets inspected.
    payload: Vec<u8>,
    /// Bytes of the current message received so far.
    received: usize,
    /// The type of the message in progress (of its first chunk).
    message_type: u8,
    /// Payload bytes still to come in the current chunk.
    chunk_left: usize,
    /// Hands out complete messages (see the module documentation).
    reassemble: bool,
    /// The body of the audio or video message being read, when reassembling.
    media: BytesMut,
    /// Complete messages not taken yet, when reassembling.
    messages: Vec<Message>,
}

impl Default for ChunkGuard {
    fn default() -> Self {
        ChunkGuard {
            max_chunk_size: INITIAL_CHUNK_SIZE,
            previous_low: [None; 64],
            previous: HashMap::new(),
            current: Header::default(),
            current_csid: 0,
            format: 0,
            stage: Stage::BasicHeader,
            pending: BytesMut::new(),
            payload: Vec::new(),
            received: 0,
            message_type: 0,
            chunk_left: 0,
            reassemble: false,
            media: BytesMut::new(),
            messages: Vec::new(),
        }
    }
}

/// Message types whose body [`ChunkGuard::inspect`] reads: protocol and user control,
/// AMF0/AMF3 data, shared objects and commands.
fn inspected(type_id: u8) -> bool {
    matches!(type_id, 1..=6 | 15 | 17 | 18 | 20)
}

/// Header bytes taken into `pending` at a time: more than the longest chunk header
/// (3 + 11 + 4), so a header never needs two top-ups.
const HEADER_WINDOW: usize = 32;

/// Message types reassembled without inspection: audio and video.
fn media(type_id: u8) -> bool {
    matches!(type_id, 8 | 9)
}

/// Message types a reassembling guard hands out: audio, video and the inspected types.
pub fn handed_out(type_id: u8) -> bool {
    media(type_id) || inspected(type_id)
}

/// First allocation for a media body: most video frames of a live stream fit, and a
/// peer declaring 8 MiB does not get 8 MiB reserved before it sends them.
const FIRST_MEDIA_RESERVE: usize = 64 * 1024;

impl ChunkGuard {
    /// A guard that also hands out complete messages ([`ChunkGuard::take_messages`]).
    pub fn reassembling() -> Self {
        ChunkGuard {
            reassemble: true,
            ..ChunkGuard::default()
        }
    }

    /// Complete messages so far, in order (reassembling guards only): audio, video and
    /// the inspected types; others (aggregates, unknown types) are counted and skipped.
    pub fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.messages)
    }

    /// The chunk size the peer announced (128 until it sends `SetChunkSize`).
    pub fn max_chunk_size(&self) -> usize {
        self.max_chunk_size
    }

    /// Takes the bytes rml_rtmp is about to be given (after the handshake); an error
    /// means they must not reach it and the connection is to be closed.
    pub fn check(&mut self, bytes: &[u8]) -> Result<(), GuardError> {
        let mut input = bytes;
        loop {
            if self.stage == Stage::Payload && self.pending.is_empty() {
                // Payload straight from the input, copied only if it gets inspected.
                let n = self.take_payload(input)?;
                input = &input[n..];
                if self.stage == Stage::Payload {
                    return Ok(()); // the chunk goes on in the next read
                }
                continue;
            }
            if !input.is_empty() && self.pending.len() < HEADER_WINDOW {
                let n = input.len().min(HEADER_WINDOW - self.pending.len());
                self.pending.extend_from_slice(&input[..n]);
                input = &input[n..];
            }
            if !self.step()? && input.is_empty() {
                return Ok(());
            }
        }
    }

    fn previous_header(&mut self, csid: u32) -> Option<Header> {
        match self.previous_low.get(csid as usize) {
            Some(h) => *h,
            None => self.previous.get(&csid).copied(),
        }
    }

    fn remember_header(&mut self) {
        let (csid, h) = (self.current_csid, self.current);
        match self.previous_low.get_mut(csid as usize) {
            Some(slot) => *slot = Some(h),
            None => {
                self.previous.insert(csid, h);
            }
        }
    }

    /// Consumes payload bytes of the current chunk from `src`; at the chunk's end, the
    /// message is inspected if it is complete and the next chunk header is awaited.
    fn take_payload(&mut self, src: &[u8]) -> Result<usize, GuardError> {
        let n = self.chunk_left.min(src.len());
        let type_id = self.current.type_id;
        if inspected(type_id) {
            self.payload.extend_from_slice(&src[..n]);
        } else if self.reassemble && media(type_id) {
            if self.media.capacity() == 0 {
                let length = self.current.message_length as usize;
                self.media.reserve(length.min(FIRST_MEDIA_RESERVE));
            }
            self.media.extend_from_slice(&src[..n]);
        }
        self.received += n;
        self.chunk_left -= n;
        if self.chunk_left == 0 {
            if self.received == self.current.message_length as usize {
                let result = self.inspect(type_id);
                if result.is_ok() && self.reassemble {
                    let body = if media(type_id) {
                        self.media.split().freeze()
                    } else {
                        Bytes::copy_from_slice(&self.payload)
                    };
                    if handed_out(type_id) {
                        self.messages.push(Message {
                            type_id,
                            stream_id: self.current.stream_id,
                            timestamp: self.current.timestamp,
                            body,
                        });
                    }
                }
                self.payload.clear();
                self.received = 0;
                result?;
            }
            self.remember_header();
            self.stage = Stage::BasicHeader;
        }
        Ok(n)
    }

    /// Advances one stage; `false` when more bytes are needed.
    fn step(&mut self) -> Result<bool, GuardError> {
        match self.stage {
            Stage::BasicHeader => {
                let Some(&first) = self.pending.first() else {
                    return Ok(false);
                };
                let (csid, len) = match first & 0x3F {
                    0 if self.pending.len() >= 2 => (self.pending[1] as u32 + 64, 2),
                    1 if self.pending.len() >= 3 => (
                        self.pending[2] as u32 * 256 + self.pending[1] as u32 + 64,
                        3,
                    ),
                    0 | 1 => return Ok(false),
                    id => (id as u32, 1),
                };
                self.format = first >> 6;
                self.current = if self.format == 0 {
                    Header::default()
                } else {
                    self.previous_header(csid)
                        .ok_or(GuardError::NoPreviousHeader(csid))?
                };
                if self.format == 3 && self.received == 0 {
                    // A type 3 header starting a message repeats the last delta (rml_rtmp
                    // applies it once per message, not per chunk).
                    self.current.timestamp = self
                        .current
                        .timestamp
                        .wrapping_add(self.current.timestamp_field);
                }
                self.current_csid = csid;
                self.pending.advance(len);
                self.stage = Stage::MessageHeader;
            }
            Stage::MessageHeader => {
                let len = match self.format {
                    0 => 11,
                    1 => 7,
                    2 => 3,
                    _ => 0,
                };
                if self.pending.len() < len {
                    return Ok(false);
                }
                let h = &self.pending[..len];
                if len >= 3 {
                    let field = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                    self.current.timestamp_field = field;
                    self.current.timestamp = if self.format == 0 {
                        field
                    } else {
                        self.current.timestamp.wrapping_add(field)
                    };
                }
                if len >= 7 {
                    self.current.message_length = u32::from_be_bytes([0, h[3], h[4], h[5]]);
                    self.current.type_id = h[6];
                    if self.current.message_length > MAX_MESSAGE_LENGTH {
                        return Err(GuardError::MessageTooLong(self.current.message_length));
                    }
                }
                if len == 11 {
                    self.current.stream_id = u32::from_le_bytes([h[7], h[8], h[9], h[10]]);
                }
                self.pending.advance(len);
                self.stage = Stage::ExtendedTimestamp;
            }
            Stage::ExtendedTimestamp => {
                if self.current.timestamp_field >= MAX_THREE_BYTE_TIMESTAMP {
                    if self.pending.len() < 4 {
                        return Ok(false);
                    }
                    let ext = u32::from_be_bytes([
                        self.pending[0],
                        self.pending[1],
                        self.pending[2],
                        self.pending[3],
                    ]);
                    // rml_rtmp computes `ext - 0xFFFFFF` for a continuation header.
                    if self.format != 0 && self.received == 0 && ext < MAX_THREE_BYTE_TIMESTAMP {
                        return Err(GuardError::BadExtendedTimestamp);
                    }
                    if self.format == 0 {
                        self.current.timestamp = ext;
                    } else if self.received == 0 {
                        // The 0xFFFFFF of the field was added already.
                        self.current.timestamp = self
                            .current
                            .timestamp
                            .wrapping_add(ext - MAX_THREE_BYTE_TIMESTAMP);
                    }
                    self.pending.advance(4);
                }
                // rml_rtmp appends every chunk to the message in progress, whatever
                // its chunk stream or type, and takes the type of the last: a message
                // whose chunks change type would be checked as one type and parsed as
                // another. No encoder interleaves messages for a reader like that.
                if self.received == 0 {
                    self.message_type = self.current.type_id;
                } else if self.current.type_id != self.message_type {
                    return Err(GuardError::MixedMessage {
                        started: self.message_type,
                        now: self.current.type_id,
                    });
                }
                let length = self.current.message_length as usize;
                let remaining = length
                    .checked_sub(self.received)
                    .ok_or(GuardError::ShrunkMessage)?;
                // rml_rtmp reads a whole message in one chunk when it fits the chunk size,
                // else min(remaining, chunk size): mirrored, odd as it is.
                self.chunk_left = if length > self.max_chunk_size {
                    remaining.min(self.max_chunk_size)
                } else {
                    length
                };
                if self.received + self.chunk_left > length {
                    // rml_rtmp would read past the message's end: the same underflow.
                    return Err(GuardError::ShrunkMessage);
                }
                self.stage = Stage::Payload;
                if self.chunk_left == 0 {
                    self.take_payload(&[])?;
                }
            }
            Stage::Payload => {
                if self.pending.is_empty() {
                    return Ok(false);
                }
                let pending = std::mem::take(&mut self.pending);
                let n = self.take_payload(&pending)?;
                self.pending = pending;
                self.pending.advance(n);
            }
        }
        Ok(true)
    }

    /// Checks one complete message, as rml_rtmp is about to decode it.
    fn inspect(&mut self, type_id: u8) -> Result<(), GuardError> {
        let body = &self.payload[..];
        // Protocol control messages (RTMP 1.0 §5.4) and user control events (§6.2):
        // fixed-size payloads.
        let need = match type_id {
            1 | 2 | 3 | 5 => 4,
            6 => 5,
            4 => 6,
            _ => 0,
        };
        if body.len() < need {
            return Err(GuardError::ShortControl {
                type_id,
                len: body.len(),
            });
        }
        match type_id {
            1 if body.len() >= 4 => {
                let size = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                if size == 0 {
                    return Err(GuardError::ChunkSizeZero);
                }
                if size < 0x8000_0000 {
                    self.max_chunk_size = size as usize;
                }
            }
            // AMF0 data and shared objects (rml_rtmp decodes type 15 as AMF0 too).
            15 | 18 => {
                let values = amf0_scan(body).map_err(|_| GuardError::Amf0TooDeep { type_id })?;
                if body.starts_with(SET_DATA_FRAME) && values < 3 {
                    return Err(GuardError::ShortSetDataFrame);
                }
            }
            // Commands: rml_rtmp strips one leading zero from an "AMF3" command.
            17 | 20 => {
                let body = match body {
                    [0, rest @ ..] if type_id == 17 => rest,
                    _ => body,
                };
                let values = amf0_scan(body).map_err(|_| GuardError::Amf0TooDeep { type_id })?;
                if values < 3 {
                    return Err(GuardError::ShortCommand);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// The nesting limit was exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep;

/// Walks an AMF0 value sequence (AMF0 §2) the way rml_amf0 reads it, with an explicit
/// stack instead of recursion. Returns the number of top-level values read before the
/// end or the first malformed byte (where rml_amf0 stops too), or [`TooDeep`] as soon
/// as objects and arrays nest deeper than [`MAX_AMF0_DEPTH`].
pub fn amf0_scan(bytes: &[u8]) -> Result<usize, TooDeep> {
    #[derive(Clone, Copy)]
    enum Frame {
        /// Properties (`u16` name, value) until an empty name and the end marker.
        Object,
        /// This many more values (an end marker also ends it).
        Array(u32),
    }
    let mut r = Reader(bytes);
    let mut stack: Vec<Frame> = Vec::new();
    let mut top_level = 0usize;
    loop {
        // Where the next value comes from, given the innermost container.
        match stack.last_mut() {
            None => {}
            Some(Frame::Array(0)) => {
                stack.pop();
                continue;
            }
            Some(Frame::Array(n)) => *n -= 1,
            Some(Frame::Object) => {
                let Some(name_len) = r.u16() else {
                    return Ok(top_level);
                };
                if name_len == 0 {
                    if r.u8() != Some(0x09) {
                        return Ok(top_level);
                    }
                    stack.pop();
                    continue;
                }
                r.skip_short(name_len as usize);
            }
        }
        let Some(marker) = r.u8() else {
            // End of input: the end of the sequence at top level or in an array, an
            // error after a property name. rml_amf0 stops either way.
            return Ok(top_level);
        };
        if stack.is_empty() && marker != 0x09 {
            top_level += 1;
        }
        let ok = match marker {
            0x00 => r.skip_exact(8),                                     // number
            0x01 => r.skip_exact(1),                                     // boolean
            0x02 => r.u16().map(|n| r.skip_short(n as usize)).is_some(), // string
            0x05 | 0x06 => true,                                         // null, undefined
            0x03 => {
                stack.push(Frame::Object);
                true
            }
            0x08 => {
                // ECMA array: a count rml_amf0 ignores, then properties like an object.
                let ok = r.skip_exact(4);
                stack.push(Frame::Object);
                ok
            }
            0x0A => match r.u32() {
                Some(n) => {
                    stack.push(Frame::Array(n));
                    true
                }
                None => false,
            },
            0x09 => match stack.last() {
                // Object end: ends the sequence at top level, an array early.
                None => return Ok(top_level),
                Some(Frame::Array(_)) => {
                    stack.pop();
                    true
                }
                Some(Frame::Object) => false,
            },
            _ => false, // a marker rml_amf0 does not read
        };
        if !ok {
            return Ok(top_level);
        }
        if stack.len() > MAX_AMF0_DEPTH {
            return Err(TooDeep);
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.0.get(..2)?;
        let v = u16::from_be_bytes([b[0], b[1]]);
        self.0 = &self.0[2..];
        Some(v)
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.0.get(..4)?;
        let v = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        self.0 = &self.0[4..];
        Some(v)
    }
    /// A fixed-size field: all of it or an error, as `read_exact`.
    fn skip_exact(&mut self, n: usize) -> bool {
        match self.0.get(n..) {
            Some(rest) => {
                self.0 = rest;
                true
            }
            None => false,
        }
    }
    /// A string body: rml_amf0 reads what is there (`Read::read`), short or not.
    fn skip_short(&mut self, n: usize) {
        self.0 = self.0.get(n..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `depth` strict arrays of one element each, around a number.
    fn nested_arrays(depth: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(depth * 5 + 9);
        for _ in 0..depth {
            v.extend_from_slice(&[0x0A, 0, 0, 0, 1]);
        }
        v.push(0x00);
        v.extend_from_slice(&1f64.to_be_bytes());
        v
    }

    /// `depth` objects, each the value of property "a" of the one outside it.
    fn nested_objects(depth: usize) -> Vec<u8> {
        let mut v = vec![0x03];
        for _ in 1..depth {
            v.extend_from_slice(&[0, 1, b'a', 0x03]);
        }
        for _ in 0..depth {
            v.extend_from_slice(&[0, 0, 0x09]);
        }
        v
    }

    fn command(name: &str, extra: &[u8]) -> Vec<u8> {
        let mut v = vec![0x02];
        v.extend_from_slice(&(name.len() as u16).to_be_bytes());
        v.extend_from_slice(name.as_bytes());
        v.push(0x00);
        v.extend_from_slice(&1f64.to_be_bytes());
        v.extend_from_slice(extra);
        v
    }

    #[test]
    fn real_commands_pass() {
        // connect's command object with a nested ECMA array, then a null.
        let mut obj = vec![
            0x03, 0, 3, b'a', b'p', b'p', 0x02, 0, 4, b'l', b'i', b'v', b'e',
        ];
        obj.extend_from_slice(&[0, 1, b'x', 0x08, 0, 0, 0, 1, 0, 1, b'y', 0x05, 0, 0, 0x09]);
        obj.extend_from_slice(&[0, 0, 0x09, 0x05]);
        assert_eq!(amf0_scan(&command("connect", &obj)), Ok(4));
        assert_eq!(amf0_scan(&nested_arrays(MAX_AMF0_DEPTH)), Ok(1));
        assert_eq!(amf0_scan(&nested_objects(MAX_AMF0_DEPTH)), Ok(1));
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        assert_eq!(amf0_scan(&nested_arrays(MAX_AMF0_DEPTH + 1)), Err(TooDeep));
        assert_eq!(amf0_scan(&nested_objects(MAX_AMF0_DEPTH + 1)), Err(TooDeep));
        assert_eq!(amf0_scan(&nested_arrays(100_000)), Err(TooDeep));
        assert_eq!(amf0_scan(&nested_objects(100_000)), Err(TooDeep));
        // Unterminated nesting (the tail cut off) is counted the same way.
        assert_eq!(amf0_scan(&[0x0A, 0, 0, 0, 9].repeat(1000)), Err(TooDeep));
        // An array that ends early with an object-end marker closes its level.
        let mut flat = Vec::new();
        for _ in 0..1000 {
            flat.extend_from_slice(&[0x0A, 0, 0, 0, 5, 0x09]);
        }
        assert_eq!(amf0_scan(&flat), Ok(1000));
    }

    /// A full (type 0) chunk on stream 3, split at the chunk size.
    fn message(type_id: u8, body: &[u8], chunk: usize) -> Vec<u8> {
        let mut out = vec![0x03, 0, 0, 0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(&[type_id, 0, 0, 0, 0]);
        for (i, part) in body.chunks(chunk).enumerate() {
            if i > 0 {
                out.push(0xC3);
            }
            out.extend_from_slice(part);
        }
        out
    }

    #[test]
    fn chunks_follow_set_chunk_size() {
        let mut g = ChunkGuard::default();
        let body = command("publish", &[0x05, 0x02, 0, 1, b'k']);
        g.check(&message(20, &body, 128)).unwrap();
        g.check(&message(1, &4096u32.to_be_bytes(), 128)).unwrap();
        let big = command("@setDataFrame", &vec![0x05; 3000]);
        // Fed a byte at a time: framing does not depend on read sizes.
        for b in message(18, &big, 4096) {
            g.check(&[b]).unwrap();
        }
        g.check(&message(9, &[0x17; 5000], 4096)).unwrap();
        assert_eq!(
            g.check(&message(1, &0u32.to_be_bytes(), 4096)),
            Err(GuardError::ChunkSizeZero)
        );
    }

    /// A small deterministic generator for the differential test.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The reassembling guard hands out the messages rml_rtmp's own deserializer reads
    /// from the same bytes (type, stream, timestamp, body), whatever the chunk size,
    /// header compression, extended and wrapping timestamps, and cuts between reads.
    #[test]
    fn reassembly_matches_rml_rtmp() {
        use rml_rtmp::chunk_io::{ChunkDeserializer, ChunkSerializer};
        use rml_rtmp::messages::MessagePayload;
        use rml_rtmp::time::RtmpTimestamp;

        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut serializer = ChunkSerializer::new();
            let mut wire = Vec::new();
            let mut timestamp = [rng.next() as u32, rng.next() as u32];
            for _ in 0..60 {
                if rng.below(8) == 0 {
                    let size = [1, 2, 100, 128, 4096, 65536][rng.below(6) as usize];
                    let packet = serializer
                        .set_max_chunk_size(size, RtmpTimestamp::new(0))
                        .unwrap();
                    wire.extend_from_slice(&packet.bytes);
                    continue;
                }
                let video = rng.below(2) as usize;
                // Small steps, steps past 0xFFFFFF (extended timestamps), wraps.
                let step = match rng.below(10) {
                    0 => rng.next() as u32,
                    1 => 0x0100_0000 + rng.below(1000) as u32,
                    _ => rng.below(70) as u32,
                };
                timestamp[video] = timestamp[video].wrapping_add(step);
                let len = match rng.below(4) {
                    0 => rng.below(3) as usize,
                    1 => rng.below(300) as usize,
                    _ => rng.below(20_000) as usize,
                };
                let body: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                let message = MessagePayload {
                    timestamp: RtmpTimestamp::new(timestamp[video]),
                    type_id: if video == 1 { 9 } else { 8 },
                    message_stream_id: rng.below(2) as u32 + 1,
                    data: Bytes::from(body),
                };
                let packet = serializer
                    .serialize(&message, rng.below(5) == 0, false)
                    .unwrap();
                wire.extend_from_slice(&packet.bytes);
            }

            let mut expected = Vec::new();
            let mut rml = ChunkDeserializer::new();
            let mut input: &[u8] = &wire;
            while let Some(m) = rml.get_next_message(input).unwrap() {
                input = &[];
                if m.type_id == 1 {
                    let size = u32::from_be_bytes(m.data[..4].try_into().unwrap());
                    rml.set_max_chunk_size(size as usize).unwrap();
                }
                expected.push(Message {
                    type_id: m.type_id,
                    stream_id: m.message_stream_id,
                    timestamp: m.timestamp.value,
                    body: m.data,
                });
            }

            let mut guard = ChunkGuard::reassembling();
            let mut got = Vec::new();
            let mut rest: &[u8] = &wire;
            while !rest.is_empty() {
                let n = (1 + rng.below(9000) as usize).min(rest.len());
                guard.check(&rest[..n]).unwrap();
                got.extend(guard.take_messages());
                rest = &rest[n..];
            }
            assert_eq!(got.len(), expected.len(), "seed {seed}");
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert_eq!(g, e, "seed {seed}, message {i}");
            }
        }
    }

    #[test]
    fn refusals() {
        let deep = command("connect", &nested_arrays(100_000));
        let mut g = ChunkGuard::default();
        g.check(&message(1, &65536u32.to_be_bytes(), 128)).unwrap();
        assert_eq!(
            g.check(&message(20, &deep, 65536)),
            Err(GuardError::Amf0TooDeep { type_id: 20 })
        );
        let mut g = ChunkGuard::default();
        assert_eq!(
            g.check(&message(18, &nested_objects(40), 128)),
            Err(GuardError::Amf0TooDeep { type_id: 18 })
        );
        let mut g = ChunkGuard::default();
        assert_eq!(
            g.check(&message(20, b"\x02\x00\x07connect", 128)),
            Err(GuardError::ShortCommand)
        );
        // Metadata without its object (rml_rtmp indexes past the end while publishing).
        let mut g = ChunkGuard::default();
        let mut short = SET_DATA_FRAME.to_vec();
        short.extend_from_slice(b"\x02\x00\x0aonMetaData");
        assert_eq!(
            g.check(&message(18, &short, 128)),
            Err(GuardError::ShortSetDataFrame)
        );
        short.extend_from_slice(&[0x08, 0, 0, 0, 0, 0, 0, 0x09]);
        g.check(&message(18, &short, 128)).unwrap();
        // A type 1 header shrinking a 200-byte message after its first 128 bytes.
        let mut g = ChunkGuard::default();
        let mut input = message(20, &[0u8; 200], 128)[..12 + 128].to_vec();
        input.extend_from_slice(&[0x43, 0, 0, 0, 0, 0, 10, 20]);
        assert_eq!(g.check(&input), Err(GuardError::ShrunkMessage));
        // A command's second chunk arriving as audio on another chunk stream (rml_rtmp
        // would append it to the command and parse both as one).
        let mut g = ChunkGuard::default();
        let mut input = message(20, &[0u8; 200], 128)[..12 + 128].to_vec();
        input.extend_from_slice(&[0x04, 0, 0, 0, 0, 0, 72, 8, 1, 0, 0, 0]);
        assert_eq!(
            g.check(&input),
            Err(GuardError::MixedMessage {
                started: 20,
                now: 8
            })
        );
    }
}
