#[path = "common/record_server.rs"]
mod record_server;
