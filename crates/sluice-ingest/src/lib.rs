//! Sluice ingest: how media enters a channel.
//!
//! - [`bus`]: the bounded per-channel fan-out from the live publisher to engines.
//! - [`flv`]: FLV tag bodies (RTMP's media payloads), pure parsing.
//! - [`rtmp_session`]: a publishing RTMP connection without I/O (rml_rtmp inside).
//! - [`rtmp_guard`]: a non-recursive check of chunks and AMF0 before rml_rtmp parses them.
//! - [`rtmp`]: the tokio listener around it.
//! - [`router`]: stream-key routing, from the configuration to channel buses.
//! - [`pull`]: `rtmp-pull` and `srt-pull` ingests, reconnecting with back-off.
//! - [`srt_streamid`]: SRT stream ids (`publish:<key>`, `#!::r=<key>,m=publish`), pure.
//! - [`ts_demux`]: MPEG-TS (H.264, AAC) into frames, pure.
//! - [`srt`]: the SRT listener: admission at the handshake, the connection loop
//!   (srt-protocol's sans-IO core under our own I/O).

pub mod bus;
pub mod flv;
pub mod pull;
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
pub use router::{KeyEntry, KeyRouter};
pub use rtmp::{PublishRouter, Refusal, RtmpLimits, serve_rtmp_connection};
pub use rtmp_session::{RTMP_APP, RtmpAction, RtmpSession};
pub use srt::{SrtLimits, SrtRefusal, serve_srt};
