//! Network side: the shared I/O runtime, the RTSP connection, the interleaved data path and
//! the UDP one.

pub(crate) mod connection;
pub(crate) mod dial;
pub(crate) mod queue;
pub(crate) mod socket;
pub(crate) mod tls;
pub(crate) mod tunnel;
pub(crate) mod udp;
pub(crate) mod websocket;

use std::sync::LazyLock;

/// One small runtime for every session in the process: sessions cost tasks, not threads.
pub(crate) static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rtspannounce-io")
        .enable_all()
        .build()
        .expect("cannot start the rtspannounce I/O runtime")
});
