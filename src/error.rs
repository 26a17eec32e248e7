//! The one error type of a session, from settings to the wire, and the one place that turns it
//! into a GStreamer error message (with the location of the code that reports it).
//!
//! The protocol cores keep their own precise results (`HandshakeError`, `ParseError`,
//! `SdpError`): they travel inside this type, which adds what the core cannot know (network,
//! TLS, our side).

use crate::rtsp::handshake::HandshakeError;
use crate::rtsp::message::ParseError;
use crate::rtsp::url::RtspUrl;
use crate::sdp::SdpError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Host name did not resolve.
    #[error("{0}")]
    Resolve(String),
    /// No address accepted the connection.
    #[error("{0}")]
    Connect(String),
    /// The server did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// The connection broke.
    #[error("{0}")]
    Io(String),
    /// The server refused a request (method, URL, status, reason), asked for credentials we
    /// lack, offered no usable transport, redirected, or answered malformed.
    #[error("{0}")]
    Handshake(HandshakeError),
    /// Bytes that are not RTSP, or over a limit.
    #[error("server sent an invalid message: {0}")]
    Parse(ParseError),
    /// The TLS handshake failed (not a TLS server, no common protocol version or cipher...).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The server's certificate failed a check that `tls-validation-flags` keeps.
    #[error("TLS: {0}")]
    Certificate(String),
    /// The streams cannot be described in SDP.
    #[error("cannot describe the streams: {0}")]
    Sdp(SdpError),
    /// Something else on our side: settings, an application handler that failed.
    #[error("{0}")]
    Local(String),
    /// Nothing to publish: no data within the announce timeout, or EOS before any.
    #[error("{0}")]
    NoData(String),
    /// A packet the transport cannot carry.
    #[error("{0}")]
    Format(String),
    /// The HTTP proxy refused the tunnel (407: it wants credentials, or other ones).
    #[error("{text}")]
    Proxy { status: u16, text: String },
}

/// Which GStreamer error (or warning) an [`Error`] is posted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    Resource(gst::ResourceError),
    Stream(gst::StreamError),
}

impl ErrorKind {
    /// Media could not go out.
    pub(crate) const WRITE: ErrorKind = ErrorKind::Resource(gst::ResourceError::Write);
}

impl Error {
    /// What the error is posted as; `streaming`: it ended a session that was recording.
    pub(crate) fn kind(&self, streaming: bool) -> ErrorKind {
        use gst::ResourceError as R;
        let resource = match self {
            Error::Resolve(_) => R::NotFound,
            Error::Handshake(HandshakeError::AuthRequired { .. })
            | Error::Handshake(HandshakeError::AuthRefused { .. })
            | Error::Handshake(HandshakeError::Status { status: 401, .. })
            | Error::Handshake(HandshakeError::Status { status: 403, .. }) => R::NotAuthorized,
            Error::Handshake(HandshakeError::Status { status: 404, .. }) => R::NotFound,
            Error::Proxy { status: 407, .. } => R::NotAuthorized,
            // The server could not prove who it is: as for a refused login, retrying will not
            // help.
            Error::Certificate(_) => R::NotAuthorized,
            // Not the server's doing: what we were given cannot be published as it is.
            Error::Local(_) | Error::Sdp(_) => R::Settings,
            Error::NoData(_) => return ErrorKind::Stream(gst::StreamError::Failed),
            Error::Format(_) => return ErrorKind::Stream(gst::StreamError::Format),
            _ if streaming => R::Write,
            _ => R::OpenWrite,
        };
        ErrorKind::Resource(resource)
    }

    /// The message as it stands, located at the caller.
    #[track_caller]
    pub(crate) fn message(&self) -> gst::ErrorMessage {
        let kind = self.kind(true);
        message(kind, &self.to_string(), std::panic::Location::caller())
    }

    /// The message for a session to `url` that could not start, or (`streaming`) that stopped,
    /// located at the caller.
    #[track_caller]
    pub(crate) fn publishing(&self, url: &RtspUrl, streaming: bool) -> gst::ErrorMessage {
        let target = url.shown();
        let text = if streaming {
            format!("Publishing to {target} failed: {self}")
        } else {
            format!("Could not publish to {target}: {self}")
        };
        message(self.kind(streaming), &text, std::panic::Location::caller())
    }

    /// A session that gave up reconnecting; `last` is the last attempt's error.
    #[track_caller]
    pub(crate) fn gave_up(
        last: &Error,
        url: &RtspUrl,
        attempts: u32,
        elapsed: std::time::Duration,
    ) -> gst::ErrorMessage {
        let text = format!(
            "Publishing to {} failed: gave up after {attempts} reconnect attempts in {:.1} s; last: {last}",
            url.shown(),
            elapsed.as_secs_f64()
        );
        message(last.kind(true), &text, std::panic::Location::caller())
    }
}

fn message(
    kind: ErrorKind,
    text: &str,
    at: &'static std::panic::Location<'static>,
) -> gst::ErrorMessage {
    let (file, line) = (at.file(), at.line());
    match kind {
        ErrorKind::Resource(k) => {
            gst::ErrorMessage::new(&k, Some(text), None, file, "rtspannounce", line)
        }
        ErrorKind::Stream(k) => {
            gst::ErrorMessage::new(&k, Some(text), None, file, "rtspannounce", line)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_has_its_kind() {
        let refused = Error::Handshake(HandshakeError::Status {
            method: "ANNOUNCE".into(),
            uri: "rtsp://h/x".into(),
            status: 403,
            reason: "Forbidden".into(),
        });
        assert_eq!(
            refused.kind(false),
            ErrorKind::Resource(gst::ResourceError::NotAuthorized)
        );
        assert_eq!(
            Error::Io("x".into()).kind(false),
            ErrorKind::Resource(gst::ResourceError::OpenWrite)
        );
        assert_eq!(
            Error::Io("x".into()).kind(true),
            ErrorKind::Resource(gst::ResourceError::Write)
        );
        assert_eq!(
            Error::Local("x".into()).kind(false),
            ErrorKind::Resource(gst::ResourceError::Settings)
        );
        assert_eq!(
            Error::NoData("x".into()).kind(false),
            ErrorKind::Stream(gst::StreamError::Failed)
        );
    }

    #[test]
    fn a_message_is_located_at_its_caller() {
        gst::init().unwrap();
        let line = line!() + 1;
        let m = Error::Local("bad".into()).message();
        let debug = format!("{m:?}");
        assert!(debug.contains("error.rs"), "{debug}");
        assert!(debug.contains(&format!("line: {line}")), "{debug}");
    }
}
