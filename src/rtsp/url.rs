//! The `location` URL: scheme, host, port, credentials, and how SETUP URLs are formed from it.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Rtsp,
    /// `rtspt://`: TCP only.
    RtspT,
    /// `rtspu://`: UDP only.
    RtspU,
    /// `rtsps://`: TLS.
    Rtsps,
    /// `rtsph://`: tunnelled in HTTP.
    RtspH,
    /// `rtspsh://`: tunnelled in HTTPS.
    RtspsH,
    /// `rtspws://`: over WebSocket (ONVIF).
    RtspWs,
    /// `rtspwss://`: over WebSocket in TLS.
    RtspWss,
}

impl Scheme {
    /// The RTSP connection is in TLS.
    pub(crate) fn tls(self) -> bool {
        matches!(self, Scheme::Rtsps | Scheme::RtspsH | Scheme::RtspWss)
    }

    /// The RTSP connection is a WebSocket.
    pub(crate) fn websocket(self) -> bool {
        matches!(self, Scheme::RtspWs | Scheme::RtspWss)
    }

    /// The RTSP connection is tunnelled in HTTP.
    pub(crate) fn tunnelled(self) -> bool {
        matches!(self, Scheme::RtspH | Scheme::RtspsH)
    }
}

/// How a track's control is joined to a URL that has a query string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ControlStyle {
    /// `path?query/streamid=0`: accepted by ZLMediaKit, MediaMTX and FFmpeg's listener.
    #[default]
    Ffmpeg,
    /// `path/streamid=0?query`: rtspclientsink's way, accepted by MediaMTX.
    Gstreamer,
    /// `path/streamid=0`, and RECORD/TEARDOWN on `path`: the query only on ANNOUNCE.
    /// gst-rtsp-server 1.22 takes the query as part of the path after ANNOUNCE, so this is the
    /// only form it accepts when the location has a query (checked against it, every other
    /// combination gets 404 or 454).
    NoQuery,
}

#[derive(Clone, PartialEq, Eq)]
pub struct RtspUrl {
    pub(crate) scheme: Scheme,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Path and query as given, without credentials, starting with `/`.
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
}

// Never print the password, even in debug output.
impl fmt::Debug for RtspUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtspUrl")
            .field("scheme", &self.scheme)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub(crate) String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

impl RtspUrl {
    pub fn parse(location: &str) -> Result<RtspUrl, UrlError> {
        let url = url::Url::parse(location.trim())
            .map_err(|e| UrlError(format!("invalid URL {:?}: {e}", redact(location))))?;
        let scheme = match url.scheme() {
            "rtsp" => Scheme::Rtsp,
            "rtspt" => Scheme::RtspT,
            "rtspu" => Scheme::RtspU,
            "rtsps" => Scheme::Rtsps,
            "rtsph" => Scheme::RtspH,
            "rtspsh" => Scheme::RtspsH,
            "rtspws" => Scheme::RtspWs,
            "rtspwss" => Scheme::RtspWss,
            other => {
                return Err(UrlError(format!(
                    "unsupported URL scheme {other:?} (expected rtsp, rtspt, rtspu, rtsps, rtsph, rtspsh, rtspws or rtspwss)"
                )))
            }
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) if !d.is_empty() => d.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            _ => return Err(UrlError(format!("URL {:?} has no host", redact(location)))),
        };
        // A tunnel goes to the server's RTSP port, where gst-rtsp-server and MediaMTX serve it.
        let default_port = if scheme.tls() { 322 } else { 554 };
        let port = url.port().unwrap_or(default_port);
        if port == 0 {
            return Err(UrlError("port 0 is not a valid server port".into()));
        }
        let user = (!url.username().is_empty()).then(|| decode(url.username()));
        let password = url.password().map(decode);
        let path = if url.path().is_empty() {
            "/".to_string()
        } else {
            url.path().to_string()
        };
        Ok(RtspUrl {
            scheme,
            host,
            port,
            path,
            query: url.query().map(str::to_string),
            user,
            password,
        })
    }

    /// Host as it goes in a URL (IPv6 in brackets).
    fn host_for_url(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }

    fn base(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Rtsps | Scheme::RtspsH | Scheme::RtspWss => "rtsps",
            // Servers only know rtsp:// in Request-URIs; the t/u suffix is ours.
            _ => "rtsp",
        };
        format!("{scheme}://{}:{}", self.host_for_url(), self.port)
    }

    /// The Request-URI for ANNOUNCE and RECORD: no credentials, query kept.
    pub(crate) fn request_uri(&self) -> String {
        match &self.query {
            Some(q) => format!("{}{}?{}", self.base(), self.path, q),
            None => format!("{}{}", self.base(), self.path),
        }
    }

    /// The location as messages show it: the Request-URI, but with the scheme given for a
    /// tunnel or a WebSocket (whose requests name `rtsp://`), so the transport is visible.
    pub(crate) fn shown(&self) -> String {
        let scheme = match self.scheme {
            Scheme::RtspH => "rtsph",
            Scheme::RtspsH => "rtspsh",
            Scheme::RtspWs => "rtspws",
            Scheme::RtspWss => "rtspwss",
            _ => return self.request_uri(),
        };
        let uri = self.request_uri();
        let rest = uri.split_once("://").map(|(_, r)| r).unwrap_or(&uri);
        format!("{scheme}://{rest}")
    }

    /// The aggregate URI for RECORD and TEARDOWN.
    pub(crate) fn aggregate_uri(&self, style: ControlStyle) -> String {
        match style {
            ControlStyle::NoQuery => format!("{}{}", self.base(), self.path),
            _ => self.request_uri(),
        }
    }

    /// `host:port` as a Host header names it.
    pub(crate) fn host_port(&self) -> String {
        format!("{}:{}", self.host_for_url(), self.port)
    }

    /// Path and query, the target of the tunnel's HTTP requests.
    pub(crate) fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// Host and port to connect to, in the form `lookup_host` takes.
    pub(crate) fn connect_target(&self) -> (String, u16) {
        (self.host.clone(), self.port)
    }

    /// The SETUP URI of a track whose SDP `a=control` is `control`.
    /// An absolute control wins; else `Content-Base` (if the server sent one) is the base;
    /// else the announce URL, joined per `style` when it has a query.
    pub(crate) fn control_uri(
        &self,
        control: &str,
        content_base: Option<&str>,
        style: ControlStyle,
    ) -> String {
        if control.starts_with("rtsp://") || control.starts_with("rtsps://") {
            return control.to_string();
        }
        if let Some(base) = content_base.map(str::trim).filter(|b| !b.is_empty()) {
            let sep = if base.ends_with('/') { "" } else { "/" };
            return format!("{base}{sep}{control}");
        }
        let path = self.path.trim_end_matches('/');
        match (&self.query, style) {
            (None, _) => format!("{}{}/{}", self.base(), path, control),
            (Some(q), ControlStyle::Ffmpeg) => {
                format!("{}{}?{}/{}", self.base(), self.path, q, control)
            }
            (Some(q), ControlStyle::Gstreamer) => {
                format!("{}{}/{}?{}", self.base(), path, control, q)
            }
            (Some(_), ControlStyle::NoQuery) => format!("{}{}/{}", self.base(), path, control),
        }
    }
}

/// A location with any password replaced, for messages.
pub(crate) fn redact(location: &str) -> String {
    match url::Url::parse(location) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => {
            // Unparseable: cut anything that might be userinfo.
            match (location.find("://"), location.rfind('@')) {
                (Some(s), Some(at)) if at > s => {
                    format!("{}***@{}", &location[..s + 3], &location[at + 1..])
                }
                _ => location.to_string(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_basic() {
        let u = RtspUrl::parse("rtsp://example.com/live/cam1").unwrap();
        assert_eq!(u.scheme, Scheme::Rtsp);
        assert_eq!(u.host, "example.com");
        assert_eq!(u.port, 554);
        assert_eq!(u.path, "/live/cam1");
        assert_eq!(u.request_uri(), "rtsp://example.com:554/live/cam1");
        let u = RtspUrl::parse("rtsps://h/x").unwrap();
        assert_eq!(u.port, 322);
        assert_eq!(u.request_uri(), "rtsps://h:322/x");
    }

    #[test]
    fn credentials_are_decoded_and_not_in_request_uri() {
        let u = RtspUrl::parse("rtsp://us%40er:p%3Ass@127.0.0.1:8554/a?x=1").unwrap();
        assert_eq!(u.user.as_deref(), Some("us@er"));
        assert_eq!(u.password.as_deref(), Some("p:ss"));
        assert_eq!(u.request_uri(), "rtsp://127.0.0.1:8554/a?x=1");
        assert!(!format!("{u:?}").contains("p:ss"));
        assert!(!redact("rtsp://u:secret@h/x").contains("secret"));
        assert!(!redact("rtsp://u:sec ret@h/x").contains("sec ret"));
    }

    #[test]
    fn ipv6() {
        let u = RtspUrl::parse("rtsp://[::1]:8554/live").unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.connect_target(), ("::1".to_string(), 8554));
        assert_eq!(u.request_uri(), "rtsp://[::1]:8554/live");
    }

    #[test]
    fn bad_urls() {
        assert!(RtspUrl::parse("http://h/x").is_err());
        assert!(RtspUrl::parse("rtsp://").is_err());
        assert!(RtspUrl::parse("not a url").is_err());
        assert!(RtspUrl::parse("rtsp://h:99999/x").is_err());
        assert!(RtspUrl::parse("rtsp://h:0/x").is_err());
    }

    #[test]
    fn control_resolution() {
        let u = RtspUrl::parse("rtsp://h:8554/live/cam1").unwrap();
        assert_eq!(
            u.control_uri("streamid=0", None, ControlStyle::Ffmpeg),
            "rtsp://h:8554/live/cam1/streamid=0"
        );
        assert_eq!(
            u.control_uri(
                "streamid=1",
                Some("rtsp://h:8554/live/cam1/"),
                ControlStyle::Ffmpeg
            ),
            "rtsp://h:8554/live/cam1/streamid=1"
        );
        assert_eq!(
            u.control_uri(
                "streamid=1",
                Some("rtsp://other/base"),
                ControlStyle::Ffmpeg
            ),
            "rtsp://other/base/streamid=1"
        );
        assert_eq!(
            u.control_uri("rtsp://x/y/trackID=3", None, ControlStyle::Ffmpeg),
            "rtsp://x/y/trackID=3"
        );
        let q = RtspUrl::parse("rtsp://h:8554/live/cam1?secret=abc").unwrap();
        assert_eq!(
            q.control_uri("streamid=0", None, ControlStyle::Ffmpeg),
            "rtsp://h:8554/live/cam1?secret=abc/streamid=0"
        );
        assert_eq!(
            q.control_uri("streamid=0", None, ControlStyle::Gstreamer),
            "rtsp://h:8554/live/cam1/streamid=0?secret=abc"
        );
        assert_eq!(
            q.control_uri("streamid=0", None, ControlStyle::NoQuery),
            "rtsp://h:8554/live/cam1/streamid=0"
        );
        assert_eq!(
            q.aggregate_uri(ControlStyle::NoQuery),
            "rtsp://h:8554/live/cam1"
        );
        assert_eq!(
            q.aggregate_uri(ControlStyle::Ffmpeg),
            "rtsp://h:8554/live/cam1?secret=abc"
        );
        let slash = RtspUrl::parse("rtsp://h/live/").unwrap();
        assert_eq!(
            slash.control_uri("streamid=0", None, ControlStyle::Ffmpeg),
            "rtsp://h:554/live/streamid=0"
        );
    }

    #[test]
    fn tunnel_and_websocket_schemes_speak_rtsp_inside_and_show_their_own() {
        for (loc, port, tls, request, shown) in [
            (
                "rtsph://h/x",
                554,
                false,
                "rtsp://h:554/x",
                "rtsph://h:554/x",
            ),
            (
                "rtspsh://h/x?a=1",
                322,
                true,
                "rtsps://h:322/x?a=1",
                "rtspsh://h:322/x?a=1",
            ),
            (
                "rtspws://u:pw@h:8554/x",
                8554,
                false,
                "rtsp://h:8554/x",
                "rtspws://h:8554/x",
            ),
            (
                "rtspwss://h/x",
                322,
                true,
                "rtsps://h:322/x",
                "rtspwss://h:322/x",
            ),
            ("rtsp://h/x", 554, false, "rtsp://h:554/x", "rtsp://h:554/x"),
        ] {
            let u = RtspUrl::parse(loc).unwrap();
            assert_eq!((u.port, u.scheme.tls()), (port, tls), "{loc}");
            assert_eq!(u.request_uri(), request, "{loc}");
            assert_eq!(u.shown(), shown, "{loc}");
        }
        let u = RtspUrl::parse("rtsph://h:8554/live/x?k=v").unwrap();
        assert!(u.scheme.tunnelled() && !u.scheme.websocket());
        assert_eq!(
            (u.host_port(), u.path_and_query()),
            ("h:8554".to_string(), "/live/x?k=v".to_string())
        );
    }
}
