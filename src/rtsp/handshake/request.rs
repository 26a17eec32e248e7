//! Requests as this connection sends them: CSeq, User-Agent, the session id, credentials.

use super::HandshakeError;
use crate::rtsp::auth::Authenticator;
use crate::rtsp::headers::Session;
use crate::rtsp::message::{Request, Response};

/// Per-connection request context: CSeq, Session, User-Agent. Outlives the handshake, so
/// keep-alives and TEARDOWN are built the same way.
#[derive(Debug, Clone)]
pub struct RequestContext {
    next_cseq: u32,
    pub(crate) session: Option<Session>,
    pub(crate) user_agent: String,
    /// Set once a server asked for credentials: every later request carries them.
    pub(crate) auth: Option<Authenticator>,
}

impl RequestContext {
    pub fn new(user_agent: &str) -> Self {
        RequestContext {
            next_cseq: 1,
            session: None,
            user_agent: user_agent.to_string(),
            auth: None,
        }
    }

    /// Gives `req` the next CSeq and current credentials (for a request sent again after 401).
    pub(crate) fn renew(&mut self, req: &Request) -> Request {
        let mut r = self.request(&req.method, &req.uri);
        for (n, v) in &req.headers.0 {
            if r.headers.get(n).is_none() && !n.eq_ignore_ascii_case("Authorization") {
                r.headers.push(n.clone(), v.clone());
            }
        }
        r.body = req.body.clone();
        r
    }

    /// A request with CSeq, User-Agent and (once known) the session id alone: MediaMTX rejects
    /// a Session header that carries `;timeout=`.
    pub(crate) fn request(&mut self, method: &str, uri: &str) -> Request {
        let mut r = Request::new(method, uri);
        r.headers.push("CSeq", self.next_cseq.to_string());
        self.next_cseq += 1;
        if !self.user_agent.is_empty() {
            r.headers.push("User-Agent", self.user_agent.clone());
        }
        if let Some(s) = &self.session {
            r.headers.push("Session", s.id.clone());
        }
        if let Some(a) = &mut self.auth {
            r.headers
                .push("Authorization", a.authorization(method, uri));
        }
        r
    }

    /// Takes the session from the first response that carries one.
    pub(crate) fn learn_session(&mut self, resp: &Response) -> Result<(), HandshakeError> {
        if let Some(v) = resp.headers.get("Session") {
            let s = Session::parse(v).map_err(|e| HandshakeError::BadResponse(e.0))?;
            match &mut self.session {
                None => self.session = Some(s),
                // Keep the id, but take a timeout the server states later.
                Some(cur) if cur.timeout.is_none() => cur.timeout = s.timeout,
                Some(_) => {}
            }
        }
        Ok(())
    }
}
