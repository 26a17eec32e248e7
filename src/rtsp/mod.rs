//! RTSP protocol core for a pushing client. No I/O here: everything is unit-tested on its own.

pub(crate) mod auth;
pub(crate) mod handshake;
pub(crate) mod headers;
pub(crate) mod message;
pub(crate) mod server_request;
pub(crate) mod url;
