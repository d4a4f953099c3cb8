//! Core vocabulary shared by every Sluice crate: validated ids, encoded media
//! frames, codec configuration records and media time. No I/O lives here.

pub mod codec;
pub mod id;
pub mod media;
pub mod throttle;
pub mod time;

pub use codec::{AudioConfig, CodecError, VideoConfig};
pub use id::{Id, IdError};
pub use media::{Frame, MediaEvent, MediaSource, TrackKind};
pub use throttle::Throttle;
pub use time::{Clock, MediaTime, SystemClock};
