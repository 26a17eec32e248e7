//! Asking the application (`accept-certificate`) about a certificate the checks refused.
//!
//! rustls calls the verifier synchronously, inside the TLS handshake's poll on one of the shared
//! I/O workers. The handler is application code and may take its time, so it runs on a thread of
//! its own (DESIGN.md §2a: a slow handler holds up its own session only) while the verifier waits
//! in `block_in_place`, which hands the worker's other tasks to another thread. The wait ends at
//! the handshake's deadline: past it the certificate is refused, whatever the handler says later.

use super::AcceptHandler;
use crate::CAT;
use gio::TlsCertificateFlags as Flags;
use rustls::pki_types::CertificateDer;
use std::future::Future;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::time::Instant;

tokio::task_local! {
    /// The bound of the TLS handshake being polled, set around it by `socket::connect`.
    static HANDSHAKE_BOUND: Bound;
}

#[derive(Clone, Copy)]
struct Bound {
    deadline: Instant,
    /// The whole handshake's timeout (tcp-timeout), for the error text.
    timeout: Duration,
}

/// The wait for a handshake run without [`bounded_handshake`] (none in the element): tcp-timeout's
/// default.
const UNBOUNDED_WAIT: Duration = Duration::from_secs(20);

/// Runs `handshake`, whose end is `deadline` (`timeout` after it began), with that bound known
/// to the verifier's wait for the application.
pub(crate) async fn bounded_handshake<F: Future>(
    deadline: Instant,
    timeout: Duration,
    handshake: F,
) -> F::Output {
    HANDSHAKE_BOUND
        .scope(Bound { deadline, timeout }, handshake)
        .await
}

/// What the application said about a certificate.
pub(super) enum Answer {
    Accepted,
    Refused,
    /// No answer within the handshake's bound (the timeout given).
    Late(Duration),
}

/// Asks `accept` about `chain` (failed checks `failed`) off the calling thread and waits no
/// longer than the handshake may last.
pub(super) fn ask(
    accept: &AcceptHandler,
    chain: Vec<CertificateDer<'static>>,
    failed: Flags,
) -> Answer {
    let (wait, timeout) = match HANDSHAKE_BOUND.try_with(|b| *b) {
        Ok(b) => (
            b.deadline.saturating_duration_since(Instant::now()),
            b.timeout,
        ),
        Err(_) => (UNBOUNDED_WAIT, UNBOUNDED_WAIT),
    };
    // A channel, not a join handle: a late answer goes nowhere, and the handler's thread ends
    // when the handler returns.
    let (tx, rx) = mpsc::sync_channel(1);
    let handler = accept.clone();
    let run = move || {
        let _ = tx.send(handler(&chain, failed));
    };
    let runtime = Handle::try_current().ok();
    match &runtime {
        Some(rt) => drop(rt.spawn_blocking(run)),
        None => {
            if let Err(e) = std::thread::Builder::new()
                .name("rtspannounce-accept".into())
                .spawn(run)
            {
                gst::warning!(CAT, "cannot ask accept-certificate: {e}");
                return Answer::Refused;
            }
        }
    }
    let recv = || rx.recv_timeout(wait);
    let answer = match runtime.map(|rt| rt.runtime_flavor()) {
        Some(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(recv),
        // A current-thread runtime cannot hand its tasks over: it waits, as it would have
        // while the handler ran on it.
        _ => recv(),
    };
    match answer {
        Ok(true) => Answer::Accepted,
        Ok(false) => Answer::Refused,
        Err(RecvTimeoutError::Timeout) => Answer::Late(timeout),
        Err(RecvTimeoutError::Disconnected) => {
            gst::warning!(CAT, "the accept-certificate handler panicked");
            Answer::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A handler that records the thread it ran on and answers `yes`.
    fn recording(yes: bool) -> (AcceptHandler, Arc<Mutex<Vec<std::thread::ThreadId>>>) {
        let seen: Arc<Mutex<Vec<std::thread::ThreadId>>> = Arc::default();
        let s = seen.clone();
        let h: AcceptHandler = Arc::new(move |_, _| {
            s.lock().unwrap().push(std::thread::current().id());
            yes
        });
        (h, seen)
    }

    #[test]
    fn the_handler_runs_on_another_thread_with_or_without_a_runtime() {
        let here = std::thread::current().id();
        for yes in [true, false] {
            let (h, seen) = recording(yes);
            let answer = ask(&h, Vec::new(), Flags::UNKNOWN_CA);
            assert!(matches!(
                (yes, answer),
                (true, Answer::Accepted) | (false, Answer::Refused)
            ));
            assert_ne!(seen.lock().unwrap()[0], here);
        }
        // On a worker of a multi-threaded runtime: block_in_place, the handler on the pool.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        let (h, seen) = recording(true);
        let worker = rt.block_on(async move {
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                let answer = bounded_handshake(deadline, Duration::from_secs(10), async {
                    ask(&h, Vec::new(), Flags::UNKNOWN_CA)
                })
                .await;
                assert!(matches!(answer, Answer::Accepted));
                std::thread::current().id()
            })
            .await
            .unwrap()
        });
        assert_ne!(seen.lock().unwrap()[0], worker);
    }

    /// Past the handshake's deadline the answer is not waited for; a current-thread runtime
    /// (where block_in_place would panic) waits in place.
    #[test]
    fn no_answer_before_the_deadline_is_late() {
        let (release, held) = mpsc::channel::<()>();
        let held = Mutex::new(held);
        let h: AcceptHandler = Arc::new(move |_, _| {
            let _ = held.lock().unwrap().recv();
            true
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let timeout = Duration::from_millis(100);
        let answer = rt.block_on(bounded_handshake(
            Instant::now() + timeout,
            timeout,
            async { ask(&h, Vec::new(), Flags::UNKNOWN_CA) },
        ));
        assert!(matches!(answer, Answer::Late(t) if t == timeout));
        drop(release);
    }
}
