//! HTTP-style authentication for RTSP: Basic (RFC 7617) and Digest (RFC 2617, RFC 7616) with
//! MD5, MD5-sess, SHA-256 and SHA-256-sess, with or without `qop=auth`.

use base64::Engine as _;
use md5::Md5;
use sha2::{Digest as _, Sha256};
use std::fmt;

/// A user name and password. Debug output never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl Algorithm {
    fn parse(s: &str) -> Option<Algorithm> {
        match s.to_ascii_uppercase().as_str() {
            "MD5" => Some(Algorithm::Md5),
            "MD5-SESS" => Some(Algorithm::Md5Sess),
            "SHA-256" => Some(Algorithm::Sha256),
            "SHA-256-SESS" => Some(Algorithm::Sha256Sess),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    fn hash(self, data: &str) -> String {
        fn hex(bytes: &[u8]) -> String {
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        }
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => hex(&Md5::digest(data.as_bytes())),
            Algorithm::Sha256 | Algorithm::Sha256Sess => hex(&Sha256::digest(data.as_bytes())),
        }
    }

    fn is_sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }
}

/// One challenge from a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic {
        realm: String,
    },
    Digest {
        realm: String,
        nonce: String,
        opaque: Option<String>,
        algorithm: Algorithm,
        /// `qop=auth` offered: we then use it (auth-int is not, and is never required alone
        /// by RTSP servers).
        qop_auth: bool,
        stale: bool,
    },
}

impl Challenge {
    pub(crate) fn is_stale(&self) -> bool {
        matches!(self, Challenge::Digest { stale: true, .. })
    }

    fn strength(&self) -> u8 {
        match self {
            Challenge::Basic { .. } => 0,
            Challenge::Digest { algorithm, .. } => match algorithm {
                Algorithm::Md5 | Algorithm::Md5Sess => 1,
                Algorithm::Sha256 | Algorithm::Sha256Sess => 2,
            },
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Challenge::Basic { realm } => format!("Basic realm \"{realm}\""),
            Challenge::Digest {
                realm, algorithm, ..
            } => format!("Digest {} realm \"{realm}\"", algorithm.name()),
        }
    }
}

/// Splits `k=v, k="v, with comma", ...` into pairs, honouring quotes and `\` escapes.
fn auth_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.trim().is_empty() && chars.peek().is_none() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n)
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
        }
        let key = key.trim().to_ascii_lowercase();
        if !key.is_empty() {
            out.push((key, value.trim().to_string()));
        }
        if chars.peek().is_none() {
            break;
        }
    }
    out
}

/// Parses the challenges of every `WWW-Authenticate` header value given. Unknown schemes are
/// skipped. A value may hold several challenges ("Basic realm=x, Digest realm=y, nonce=z").
pub fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out = Vec::new();
    for v in values {
        // Split where a new scheme token starts: a word followed by a space and a key=.
        let mut pieces: Vec<(String, String)> = Vec::new();
        for part in split_schemes(v) {
            let part = part.trim();
            let (scheme, rest) = part.split_once(char::is_whitespace).unwrap_or((part, ""));
            pieces.push((scheme.to_ascii_lowercase(), rest.to_string()));
        }
        for (scheme, rest) in pieces {
            let params = auth_params(&rest);
            let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            match scheme.as_str() {
                "basic" => out.push(Challenge::Basic {
                    realm: get("realm").unwrap_or_default(),
                }),
                "digest" => {
                    let Some(nonce) = get("nonce") else { continue };
                    let algorithm = match get("algorithm") {
                        None => Algorithm::Md5,
                        Some(a) => match Algorithm::parse(&a) {
                            Some(a) => a,
                            None => continue,
                        },
                    };
                    let qop_auth = get("qop").is_some_and(|q| {
                        q.split(',').any(|x| x.trim().eq_ignore_ascii_case("auth"))
                    });
                    out.push(Challenge::Digest {
                        realm: get("realm").unwrap_or_default(),
                        nonce,
                        opaque: get("opaque"),
                        algorithm,
                        qop_auth,
                        stale: get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
                    })
                }
                _ => {}
            }
        }
    }
    out
}

/// Splits a header value at the start of each challenge: a token directly followed by
/// whitespace and then a `key=` pair, outside quotes.
fn split_schemes(v: &str) -> Vec<&str> {
    let bytes = v.as_bytes();
    let mut starts = vec![0usize];
    let mut in_quote = false;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'"' {
            in_quote = !in_quote;
        } else if c == b',' && !in_quote {
            // After a comma: is the next thing "token SP key=" (a new scheme)?
            let rest = &v[i + 1..];
            let trimmed = rest.trim_start();
            let tok_end = trimmed
                .find(|ch: char| ch.is_whitespace() || ch == '=' || ch == ',')
                .unwrap_or(trimmed.len());
            let after = &trimmed[tok_end..];
            if tok_end > 0 && after.starts_with(char::is_whitespace) {
                let after = after.trim_start();
                if after.contains('=') && !after.starts_with('=') {
                    starts.push(i + 1);
                }
            }
        }
        i += 1;
    }
    let mut out = Vec::new();
    for (k, s) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map(|e| e - 1).unwrap_or(v.len());
        out.push(&v[*s..end]);
    }
    out
}

/// The strongest challenge we can answer: Digest SHA-256, then Digest MD5, then Basic.
pub fn strongest(challenges: &[Challenge]) -> Option<&Challenge> {
    challenges.iter().max_by_key(|c| c.strength())
}

/// Answers one challenge for every later request.
#[derive(Clone)]
pub struct Authenticator {
    pub(crate) challenge: Challenge,
    creds: Credentials,
    nc: u32,
    cnonce: String,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("challenge", &self.challenge)
            .field("creds", &self.creds)
            .finish()
    }
}

impl Authenticator {
    pub fn new(challenge: Challenge, creds: Credentials) -> Self {
        let cnonce = format!("{:016x}", rand::random::<u64>());
        Authenticator {
            challenge,
            creds,
            nc: 0,
            cnonce,
        }
    }

    #[cfg(test)]
    fn with_cnonce(mut self, cnonce: &str) -> Self {
        self.cnonce = cnonce.to_string();
        self
    }

    /// The `Authorization` value for `method` on `uri`.
    pub fn authorization(&mut self, method: &str, uri: &str) -> String {
        match &self.challenge {
            Challenge::Basic { .. } => {
                let raw = format!("{}:{}", self.creds.user, self.creds.password);
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(raw)
                )
            }
            Challenge::Digest {
                realm,
                nonce,
                opaque,
                algorithm,
                qop_auth,
                ..
            } => {
                let alg = *algorithm;
                let mut ha1 = alg.hash(&format!(
                    "{}:{}:{}",
                    self.creds.user, realm, self.creds.password
                ));
                if alg.is_sess() {
                    ha1 = alg.hash(&format!("{ha1}:{nonce}:{}", self.cnonce));
                }
                let ha2 = alg.hash(&format!("{method}:{uri}"));
                let mut v = format!(
                    "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\"",
                    quote(&self.creds.user),
                    quote(realm),
                    quote(nonce),
                    quote(uri)
                );
                let response = if *qop_auth {
                    self.nc += 1;
                    let nc = format!("{:08x}", self.nc);
                    let r = alg.hash(&format!("{ha1}:{nonce}:{nc}:{}:auth:{ha2}", self.cnonce));
                    v.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{}\"", self.cnonce));
                    r
                } else {
                    alg.hash(&format!("{ha1}:{nonce}:{ha2}"))
                };
                v.push_str(&format!(", response=\"{response}\""));
                if let Some(o) = opaque {
                    v.push_str(&format!(", opaque=\"{}\"", quote(o)));
                }
                if !matches!(alg, Algorithm::Md5) || *qop_auth {
                    v.push_str(&format!(", algorithm={}", alg.name()));
                }
                v
            }
        }
    }
}

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            user: "Mufasa".into(),
            password: "Circle Of Life".into(),
        }
    }

    #[test]
    fn parse_several_challenges() {
        let c = parse_challenges([
            "Basic realm=\"cam\"",
            "Digest realm=\"cam, 1\", nonce=\"abc\", algorithm=SHA-256, qop=\"auth,auth-int\", stale=TRUE",
        ]);
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[0],
            Challenge::Basic {
                realm: "cam".into()
            }
        );
        match &c[1] {
            Challenge::Digest {
                realm,
                nonce,
                algorithm,
                qop_auth,
                stale,
                ..
            } => {
                assert_eq!(realm, "cam, 1");
                assert_eq!(nonce, "abc");
                assert_eq!(*algorithm, Algorithm::Sha256);
                assert!(qop_auth);
                assert!(stale);
            }
            _ => panic!(),
        }
        assert!(matches!(
            strongest(&c),
            Some(Challenge::Digest {
                algorithm: Algorithm::Sha256,
                ..
            })
        ));
        // Two challenges in one header value.
        let c = parse_challenges(["Digest realm=\"r\", nonce=\"n\", Basic realm=\"b\""]);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(matches!(&c[1], Challenge::Basic { realm } if realm == "b"));
        // Unknown schemes and unknown algorithms are skipped.
        assert!(parse_challenges(["Bearer realm=\"x\""]).is_empty());
        assert!(
            parse_challenges(["Digest realm=\"x\", nonce=\"n\", algorithm=SHA-512"]).is_empty()
        );
    }

    #[test]
    fn basic() {
        let mut a = Authenticator::new(
            Challenge::Basic { realm: "r".into() },
            Credentials {
                user: "Aladdin".into(),
                password: "open sesame".into(),
            },
        );
        assert_eq!(
            a.authorization("ANNOUNCE", "rtsp://h/x"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn digest_md5_rfc2617_example() {
        // RFC 2617 3.5, with qop=auth.
        let c = parse_challenges([
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        ]);
        let mut a = Authenticator::new(c[0].clone(), creds()).with_cnonce("0a4f113b");
        let v = a.authorization("GET", "/dir/index.html");
        assert!(
            v.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{v}"
        );
        assert!(v.contains("nc=00000001"), "{v}");
        assert!(
            v.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""),
            "{v}"
        );
        // nc counts up.
        assert!(a
            .authorization("GET", "/dir/index.html")
            .contains("nc=00000002"));
    }

    #[test]
    fn digest_sha256_rfc7616_example() {
        // RFC 7616 3.9.1.
        let c = parse_challenges([
            "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm=SHA-256, nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"",
        ]);
        // RFC 7616 spells the password with a lower-case "of".
        let creds = Credentials {
            user: "Mufasa".into(),
            password: "Circle of Life".into(),
        };
        let mut a = Authenticator::new(c[0].clone(), creds)
            .with_cnonce("f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ");
        let v = a.authorization("GET", "/dir/index.html");
        assert!(
            v.contains(
                "response=\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\""
            ),
            "{v}"
        );
        assert!(v.contains("algorithm=SHA-256"), "{v}");
    }

    #[test]
    fn digest_md5_without_qop_and_sess() {
        let c = Challenge::Digest {
            realm: "r".into(),
            nonce: "n".into(),
            opaque: None,
            algorithm: Algorithm::Md5,
            qop_auth: false,
            stale: false,
        };
        let mut a = Authenticator::new(c, creds());
        let v = a.authorization("ANNOUNCE", "rtsp://h/x");
        let ha1 = Algorithm::Md5.hash("Mufasa:r:Circle Of Life");
        let ha2 = Algorithm::Md5.hash("ANNOUNCE:rtsp://h/x");
        let expect = Algorithm::Md5.hash(&format!("{ha1}:n:{ha2}"));
        assert!(v.contains(&format!("response=\"{expect}\"")), "{v}");
        assert!(!v.contains("qop"));

        let c = Challenge::Digest {
            realm: "r".into(),
            nonce: "n".into(),
            opaque: None,
            algorithm: Algorithm::Md5Sess,
            qop_auth: true,
            stale: false,
        };
        let mut a = Authenticator::new(c, creds()).with_cnonce("cn");
        let v = a.authorization("SETUP", "rtsp://h/x/streamid=0");
        let ha1 = Algorithm::Md5.hash(&format!(
            "{}:n:cn",
            Algorithm::Md5.hash("Mufasa:r:Circle Of Life")
        ));
        let ha2 = Algorithm::Md5.hash("SETUP:rtsp://h/x/streamid=0");
        let expect = Algorithm::Md5.hash(&format!("{ha1}:n:00000001:cn:auth:{ha2}"));
        assert!(v.contains(&format!("response=\"{expect}\"")), "{v}");
        assert!(v.contains("algorithm=MD5-sess"));
    }

    #[test]
    fn debug_never_shows_password() {
        let a = Authenticator::new(Challenge::Basic { realm: "r".into() }, creds());
        assert!(!format!("{a:?}").contains("Circle"));
    }
}
