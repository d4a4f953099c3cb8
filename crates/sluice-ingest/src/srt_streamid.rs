//! SRT stream ids: what a caller asks for. Pure and fuzzed: the bytes come from anyone
//! who can send a UDP datagram.
//!
//! Two forms are understood (anything else is refused, so a typo never publishes
//! somewhere unexpected):
//! - `publish:<key>` and `read:<key>`;
//! - the SRT access-control form (Haivision's "SRT Access Control Guidelines"):
//!   `#!::r=<key>,m=publish` or `m=request`, with other keys (`u`, `s`, `h`, `t`) allowed
//!   and ignored, except that `t` must be `stream` when present; a `tracking_id` key
//!   (what another node's `srt-caller` output appends) is kept when it is well formed.

/// The longest stream id SRT carries (`SRTO_STREAMID`).
pub const MAX_STREAM_ID: usize = 512;

/// What the caller wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtMode {
    /// Send media into a channel (a push ingest).
    Publish,
    /// Receive a channel (a pull output: `read:` or `m=request`).
    Read,
}

impl SrtMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SrtMode::Publish => "publish",
            SrtMode::Read => "read",
        }
    }
}

/// A parsed stream id: the mode and the key (a secret: never log it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRequest<'a> {
    pub mode: SrtMode,
    pub key: &'a str,
    /// A well-formed `tracking_id` from the access-control form (shown, never acted on).
    pub tracking_id: Option<&'a str>,
}

pub use sluice_config::MAX_TRACKING_ID;

/// A tracking id worth keeping ([`sluice_config::is_tracking_id`], the rule `sluice
/// check` holds a push output's to). Others are dropped, not refused: the id is
/// informational.
pub fn tracking_id(s: &str) -> Option<&str> {
    sluice_config::is_tracking_id(s).then_some(s)
}

/// Why a stream id was refused. The messages never quote the id (it holds a key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamIdError {
    #[error("stream id of {0} bytes is longer than {MAX_STREAM_ID}")]
    TooLong(usize),
    #[error("no stream id")]
    Missing,
    #[error("stream id is neither publish:<key>, read:<key> nor #!::r=<key>,m=<mode>")]
    UnknownForm,
    #[error("stream id has no key")]
    NoKey,
    #[error("stream id mode {0:?} is not publish or request")]
    UnknownMode(String),
    #[error("stream id type is not stream")]
    UnsupportedType,
    #[error("stream id names {0:?} twice")]
    Repeated(String),
    #[error("stream id has a malformed key=value pair")]
    Malformed,
    #[error("stream id key has control characters")]
    ControlCharacters,
}

/// Parses a stream id.
pub fn parse_stream_id(id: &str) -> Result<StreamRequest<'_>, StreamIdError> {
    if id.len() > MAX_STREAM_ID {
        return Err(StreamIdError::TooLong(id.len()));
    }
    if id.is_empty() {
        return Err(StreamIdError::Missing);
    }
    let request = if let Some(key) = id.strip_prefix("publish:") {
        StreamRequest {
            mode: SrtMode::Publish,
            key,
            tracking_id: None,
        }
    } else if let Some(key) = id.strip_prefix("read:") {
        StreamRequest {
            mode: SrtMode::Read,
            key,
            tracking_id: None,
        }
    } else if let Some(pairs) = id.strip_prefix("#!::") {
        access_control(pairs)?
    } else {
        return Err(StreamIdError::UnknownForm);
    };
    if request.key.is_empty() {
        return Err(StreamIdError::NoKey);
    }
    if request.key.chars().any(char::is_control) {
        return Err(StreamIdError::ControlCharacters);
    }
    Ok(request)
}

/// `k=v,k=v` after `#!::`.
fn access_control(pairs: &str) -> Result<StreamRequest<'_>, StreamIdError> {
    let (mut resource, mut mode, mut kind, mut tracking) = (None, None, None, None);
    for pair in pairs.split(',') {
        let (k, v) = pair.split_once('=').ok_or(StreamIdError::Malformed)?;
        let slot = match k {
            "r" => &mut resource,
            "m" => &mut mode,
            "t" => &mut kind,
            "tracking_id" => &mut tracking,
            "u" | "s" | "h" => continue,
            _ if k.is_empty() => return Err(StreamIdError::Malformed),
            // Keys of other applications are allowed by the guidelines; ignored.
            _ => continue,
        };
        if slot.replace(v).is_some() {
            return Err(StreamIdError::Repeated(k.to_owned()));
        }
    }
    if kind.is_some_and(|t| t != "stream") {
        return Err(StreamIdError::UnsupportedType);
    }
    // The guidelines make `request` the default mode.
    let mode = match mode.unwrap_or("request") {
        "publish" => SrtMode::Publish,
        "request" => SrtMode::Read,
        other => {
            return Err(StreamIdError::UnknownMode(
                other.chars().take(16).collect::<String>(),
            ));
        }
    };
    Ok(StreamRequest {
        mode,
        key: resource.ok_or(StreamIdError::NoKey)?,
        tracking_id: tracking.and_then(tracking_id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_are_understood() {
        let p = |s| parse_stream_id(s);
        assert_eq!(
            p("publish:abc"),
            Ok(StreamRequest {
                mode: SrtMode::Publish,
                key: "abc",
                tracking_id: None
            })
        );
        assert_eq!(
            p("read:r-1"),
            Ok(StreamRequest {
                mode: SrtMode::Read,
                key: "r-1",
                tracking_id: None
            })
        );
        assert_eq!(
            p("#!::r=abc,m=publish"),
            Ok(StreamRequest {
                mode: SrtMode::Publish,
                key: "abc",
                tracking_id: None
            })
        );
        assert_eq!(
            p("#!::u=alice,m=request,r=live/x,t=stream"),
            Ok(StreamRequest {
                mode: SrtMode::Read,
                key: "live/x",
                tracking_id: None
            })
        );
        assert_eq!(p("#!::r=abc").map(|r| r.mode), Ok(SrtMode::Read));
        // The key may itself contain ':' and '=' in the plain form.
        assert_eq!(p("publish:a:b=c").map(|r| r.key), Ok("a:b=c"));
    }

    #[test]
    fn a_tracking_id_is_kept_when_well_formed() {
        let t = |s| parse_stream_id(s).map(|r| (r.key, r.tracking_id));
        assert_eq!(
            t("#!::r=abc,m=publish,tracking_id=eu-run.7"),
            Ok(("abc", Some("eu-run.7")))
        );
        // Dropped, not refused: a space, a comma's worth of garbage, too long.
        assert_eq!(t("#!::r=abc,m=publish,tracking_id=a b"), Ok(("abc", None)));
        let long = format!("#!::r=abc,m=publish,tracking_id={}", "x".repeat(129));
        assert_eq!(t(&long), Ok(("abc", None)));
        assert_eq!(t("#!::r=abc,m=publish,tracking_id="), Ok(("abc", None)));
        // The plain form has no place for one: it is part of the key.
        assert_eq!(t("publish:abc"), Ok(("abc", None)));
    }

    #[test]
    fn everything_else_is_refused() {
        let p = |s: &str| parse_stream_id(s).err();
        assert_eq!(p(""), Some(StreamIdError::Missing));
        assert_eq!(p("abc"), Some(StreamIdError::UnknownForm));
        assert_eq!(p("publish:"), Some(StreamIdError::NoKey));
        assert_eq!(p("#!::m=publish"), Some(StreamIdError::NoKey));
        assert_eq!(
            p("#!::r=a,m=bidirectional"),
            Some(StreamIdError::UnknownMode("bidirectional".into()))
        );
        assert_eq!(
            p("#!::r=a,r=b,m=publish"),
            Some(StreamIdError::Repeated("r".into()))
        );
        assert_eq!(p("#!::r=a,m"), Some(StreamIdError::Malformed));
        assert_eq!(p("#!::r=a,=x"), Some(StreamIdError::Malformed));
        assert_eq!(
            p("#!::r=a,m=publish,t=file"),
            Some(StreamIdError::UnsupportedType)
        );
        assert_eq!(p("publish:a\0b"), Some(StreamIdError::ControlCharacters));
        let long = format!("publish:{}", "k".repeat(600));
        assert_eq!(p(&long), Some(StreamIdError::TooLong(608)));
        assert_eq!(
            p(&format!("publish:{}", "k".repeat(504))),
            None,
            "512 bytes is allowed"
        );
    }
}
