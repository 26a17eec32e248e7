//! RTSP protocol core for a pushing client. No I/O here: everything is unit-tested on its own.

pub mod auth;
pub mod handshake;
pub mod headers;
pub mod message;
pub mod server_request;
pub mod url;
