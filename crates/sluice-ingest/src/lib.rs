//! Sluice ingest: how media enters a channel.
//!
//! - [`bus`]: the bounded per-channel fan-out from the live publisher to engines.
//! - [`error`]: one error for every ingest connection's end: transport, peer, reason.
//! - [`flv`]: FLV tag bodies (RTMP's media payloads), pure parsing.
//! - [`rtmp_session`]: a publishing RTMP connection without I/O (rml_rtmp inside), with
//!   its policy: application, deadlines, byte caps.
//! - [`rtmp_guard`]: a non-recursive check of chunks and AMF0 before rml_rtmp parses them.
//! - [`rtmp`]: the tokio listener around it.
//! - [`router`]: stream-key routing, from the configuration to channel buses.
//! - [`output`]: pull outputs' readers, and the channel as a TS stream with its timeline.
//! - [`push`]: `rtmp-push` and `srt-caller` outputs, reconnecting with back-off.
//! - [`pull`]: `rtmp-pull` and `srt-pull` ingests, reconnecting with back-off.
//! - [`srt_streamid`]: SRT stream ids (`publish:<key>`, `#!::r=<key>,m=publish`), pure.
//! - [`ts_demux`]: MPEG-TS (H.264, AAC) into frames, pure.
//! - [`srt`]: the SRT listener: admission at the handshake, the connection loop
//!   (srt-protocol's sans-IO core under our own I/O).

pub mod bus;
pub mod error;
pub mod flv;
pub mod output;
pub mod pull;
pub mod push;
pub mod router;
pub mod rtmp;
pub mod rtmp_guard;
pub mod rtmp_session;
pub mod srt;
pub mod srt_streamid;
pub mod ts_demux;

pub use bus::{
    BusError, BusReceiver, ChannelBus, DEFAULT_BUS_CAPACITY, FeedSpec, PublishEnded, Publisher,
};
pub use error::{EndReason, IngestError, Transport};
pub use output::{OutputState, OutputStats, Reader};
pub use router::{KeyEntry, KeyRouter, ReadEntry};
pub use rtmp::{PublishRouter, Refusal, RtmpLimits, serve_rtmp_connection};
pub use rtmp_session::{RTMP_APP, RtmpAction, RtmpPolicy, RtmpSession};
pub use srt::{SrtLimits, SrtRefusal, serve_srt};
