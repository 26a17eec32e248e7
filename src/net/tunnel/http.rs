//! The HTTP side of the RTSP-over-HTTP tunnel (the QuickTime convention that gst-rtsp-server,
//! rtspclientsink and MediaMTX share): the GET and POST heads, the answer's head, the proxy
//! setting. No I/O here.

use crate::rtsp::auth::Credentials;
use base64::Engine as _;
use std::fmt;

/// The POST body is declared this long: the tunnel's convention (a proxy must not wait for an
/// end), never reached in practice by a server that reads the body as a stream.
const POST_CONTENT_LENGTH: u32 = 32767;

/// A cookie that ties the POST to its GET: 22 letters from a CSPRNG.
pub(crate) fn new_cookie() -> String {
    use rand::Rng as _;
    let mut rng = rand::rngs::OsRng;
    (0..22)
        .map(|_| char::from(b'a' + rng.gen_range(0..26u8)))
        .collect()
}

/// An HTTP proxy for the tunnel (`proxy`, `proxy-id`, `proxy-pw`).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Proxy {
    pub host: String,
    pub port: u16,
    pub creds: Option<Credentials>,
}

// The password never goes into a log line.
impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.creds.as_ref().map(|c| c.user.as_str()))
            .finish()
    }
}

/// The port a proxy listens on when the setting names none (the usual HTTP proxy port, as
/// rtspsrc assumes).
pub(crate) const DEFAULT_PROXY_PORT: u16 = 3128;

impl Proxy {
    /// Parses `[http://][user[:password]@]host[:port]`; `id`/`pw` (the properties) win over
    /// credentials in the string.
    pub(crate) fn parse(
        setting: &str,
        id: Option<&str>,
        pw: Option<&str>,
    ) -> Result<Proxy, String> {
        let s = setting.trim();
        let rest = match s.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "proxy scheme {scheme:?} is not supported (an HTTP proxy: [http://]host[:port])"
                ))
            }
            None => s,
        };
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("proxy {hostport:?}: unclosed [ in the host"))?;
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || host.contains(['/', ' ', '?', '#']) {
            return Err(format!("proxy {hostport:?} has no valid host"));
        }
        let port = match port {
            None | Some("") => DEFAULT_PROXY_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 => n,
                _ => return Err(format!("proxy port {p:?} is not a port number")),
            },
        };
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let (mut user, mut password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((n, p)) => (Some(decode(n)), Some(decode(p))),
                None => (Some(decode(u)), None),
            },
            None => (None, None),
        };
        if let Some(id) = id.filter(|i| !i.is_empty()) {
            user = Some(id.to_string());
            password = pw.map(str::to_string);
        }
        Ok(Proxy {
            host: host.to_string(),
            port,
            creds: user.map(|user| Credentials {
                user,
                password: password.unwrap_or_default(),
            }),
        })
    }

    /// `Proxy-Authorization`, Basic (what HTTP proxies take without a challenge first).
    fn authorization(&self) -> Option<String> {
        let c = self.creds.as_ref()?;
        let raw = format!("{}:{}", c.user, c.password);
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        ))
    }
}

/// What both halves of one tunnel say.
#[derive(Debug, Clone)]
pub(crate) struct TunnelHeads {
    /// `host:port` of the RTSP server (the Host header).
    pub host: String,
    /// The request target: the URL's path and query; an absolute `http://` URL through a plain
    /// proxy.
    pub target: String,
    pub cookie: String,
    pub user_agent: String,
}

impl TunnelHeads {
    fn common(&self, out: &mut String, proxy: Option<&Proxy>, auth: Option<&str>) {
        out.push_str(&format!("x-sessioncookie: {}\r\n", self.cookie));
        out.push_str("Accept: application/x-rtsp-tunnelled\r\n");
        out.push_str("Cache-Control: no-cache\r\nPragma: no-cache\r\n");
        out.push_str(&format!("Host: {}\r\n", self.host));
        if !self.user_agent.is_empty() {
            out.push_str(&format!("User-Agent: {}\r\n", self.user_agent));
        }
        if let Some(a) = auth {
            out.push_str(&format!("Authorization: {a}\r\n"));
        }
        if let Some(p) = proxy.and_then(Proxy::authorization) {
            out.push_str(&format!("Proxy-Authorization: {p}\r\n"));
        }
    }

    /// The GET that opens the server-to-client half.
    pub(crate) fn get(&self, proxy: Option<&Proxy>, auth: Option<&str>) -> String {
        let mut s = format!("GET {} HTTP/1.0\r\n", self.target);
        self.common(&mut s, proxy, auth);
        s.push_str("\r\n");
        s
    }

    /// The POST whose body carries our requests and media, base64-encoded.
    pub(crate) fn post(&self, proxy: Option<&Proxy>, auth: Option<&str>) -> String {
        let mut s = format!("POST {} HTTP/1.0\r\n", self.target);
        self.common(&mut s, proxy, auth);
        s.push_str("Content-Type: application/x-rtsp-tunnelled\r\n");
        // Old proxies cache what has no expiry.
        s.push_str("Expires: Sun, 9 Jan 1972 00:00:00 GMT\r\n");
        s.push_str(&format!("Content-Length: {POST_CONTENT_LENGTH}\r\n\r\n"));
        s
    }

    /// `CONNECT host:port` for a TLS tunnel through a proxy: the proxy must not see inside.
    pub(crate) fn connect(&self, proxy: &Proxy) -> String {
        let mut s = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n", self.host);
        if let Some(p) = proxy.authorization() {
            s.push_str(&format!("Proxy-Authorization: {p}\r\n"));
        }
        s.push_str("\r\n");
        s
    }
}

/// The head of an HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpHead {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
}

impl HttpHead {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Heads longer than this are not an HTTP server's answer to a tunnel.
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// Parses an answer's head from the start of `buf`: `Ok(None)` until its blank line has
/// arrived, then the head and the bytes it took (what follows is the tunnel's payload).
pub(crate) fn parse_head(buf: &[u8]) -> Result<Option<(HttpHead, usize)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(format!("the answer's head is over {MAX_HEAD} bytes"));
        }
        if !buf.is_empty() && !b"HTTP/".starts_with(&buf[..buf.len().min(5)]) {
            return Err(not_http(buf));
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| not_http(buf))?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(not_http(buf));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| format!("malformed status line {:?}", printable(first)))?;
    let reason = parts.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for l in lines {
        let Some((n, v)) = l.split_once(':') else {
            return Err(format!("malformed header line {:?}", printable(l)));
        };
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    Ok(Some((
        HttpHead {
            status,
            reason,
            headers,
        },
        end + 4,
    )))
}

fn printable(s: &str) -> String {
    s.chars().take(80).collect()
}

fn not_http(buf: &[u8]) -> String {
    format!(
        "the answer is not HTTP: {:?}",
        String::from_utf8_lossy(&buf[..buf.len().min(40)])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads() -> TunnelHeads {
        TunnelHeads {
            host: "cam.example:8554".into(),
            target: "/live/x?a=1".into(),
            cookie: "abcdefghijklmnopqrstuv".into(),
            user_agent: "rtspannounce/1".into(),
        }
    }

    #[test]
    fn get_and_post_carry_the_same_cookie_and_the_tunnel_types() {
        let h = heads();
        let get = h.get(None, None);
        assert!(get.starts_with("GET /live/x?a=1 HTTP/1.0\r\n"), "{get}");
        assert!(get.contains("x-sessioncookie: abcdefghijklmnopqrstuv\r\n"));
        assert!(get.contains("Accept: application/x-rtsp-tunnelled\r\n"));
        assert!(get.contains("Host: cam.example:8554\r\n"));
        assert!(get.ends_with("\r\n\r\n") && !get.contains("Content-Length"));
        let post = h.post(None, Some("Basic eDp5"));
        assert!(post.starts_with("POST /live/x?a=1 HTTP/1.0\r\n"), "{post}");
        assert!(post.contains("x-sessioncookie: abcdefghijklmnopqrstuv\r\n"));
        assert!(post.contains("Content-Type: application/x-rtsp-tunnelled\r\n"));
        assert!(post.contains("Content-Length: 32767\r\n"));
        assert!(post.contains("Authorization: Basic eDp5\r\n"));
        assert!(!post.contains("Proxy-Authorization"));
    }

    #[test]
    fn cookies_differ_and_are_letters() {
        let (a, b) = (new_cookie(), new_cookie());
        assert_ne!(a, b);
        assert_eq!(a.len(), 22);
        assert!(a.bytes().all(|c| c.is_ascii_lowercase()));
    }

    #[test]
    fn proxy_settings_parse_with_and_without_credentials() {
        let p = Proxy::parse("http://proxy.lan:8080", None, None).unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.creds.is_none()),
            ("proxy.lan", 8080, true)
        );
        let p = Proxy::parse("bob:s%40cret@10.0.0.1", None, None).unwrap();
        assert_eq!((p.host.as_str(), p.port), ("10.0.0.1", DEFAULT_PROXY_PORT));
        let c = p.creds.as_ref().unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("bob", "s@cret"));
        // The properties win.
        let p = Proxy::parse("bob:x@[::1]:3129", Some("alice"), Some("pw")).unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 3129));
        assert_eq!(p.creds.as_ref().unwrap().user, "alice");
        assert!(!format!("{p:?}").contains("pw"), "{p:?}");
        for bad in ["socks5://h:1", "h:0", "h:99999", ":8080", "http://", "[::1"] {
            assert!(Proxy::parse(bad, None, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_proxy_gets_basic_credentials_and_tls_gets_connect() {
        let p = Proxy::parse("u:p@proxy:3128", None, None).unwrap();
        let get = heads().get(Some(&p), None);
        assert!(get.contains("Proxy-Authorization: Basic dTpw\r\n"), "{get}");
        let c = heads().connect(&p);
        assert!(c.starts_with("CONNECT cam.example:8554 HTTP/1.1\r\nHost: cam.example:8554\r\n"));
        assert!(c.contains("Proxy-Authorization: Basic dTpw\r\n") && c.ends_with("\r\n\r\n"));
    }

    #[test]
    fn answer_heads_parse_and_leave_the_payload() {
        let buf = b"HTTP/1.0 200 OK\r\nServer: x\r\nContent-Type: application/x-rtsp-tunnelled\r\n\r\nRTSP/1.0";
        assert_eq!(parse_head(&buf[..20]).unwrap(), None);
        let (h, n) = parse_head(buf).unwrap().unwrap();
        assert_eq!((h.status, h.reason.as_str()), (200, "OK"));
        assert_eq!(
            h.header("content-type"),
            Some("application/x-rtsp-tunnelled")
        );
        assert_eq!(&buf[n..], b"RTSP/1.0");
        let (h, _) = parse_head(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, 407);
    }

    #[test]
    fn what_is_not_an_http_answer_is_refused() {
        assert!(parse_head(b"RTSP/1.0 200 OK\r\n").is_err());
        assert!(parse_head(b"HTTP/1.0 abc OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.0 200 OK\r\nno colon\r\n\r\n").is_err());
        assert!(parse_head(b"H").unwrap().is_none());
        let mut long = b"HTTP/1.0 200 OK\r\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', MAX_HEAD + 1));
        assert!(parse_head(&long).is_err());
    }
}
