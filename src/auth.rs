//! Credentials: a [`Secret`] read from the environment, the [`Auth`] a party uses, the
//! header that presents it on an outbound request, and the constant-time check of an
//! inbound one. Both directions derive the header from one function, so what the gateway
//! sends and what it accepts cannot drift apart.
//!
//! A leaf: imports no other module of the gateway.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use std::fmt;
use subtle::ConstantTimeEq;

/// A secret read from the environment. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The value itself, for the one place that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Authentication with its secret resolved.
#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    None,
    Bearer(Secret),
    Basic { username: String, password: Secret },
    Header { name: HeaderName, value: Secret },
}

impl Auth {
    /// The header name and the exact value that carry these credentials, if any.
    fn expected(&self) -> Option<(HeaderName, String)> {
        use base64::Engine as _;
        match self {
            Auth::None => None,
            Auth::Bearer(t) => Some((
                http::header::AUTHORIZATION,
                format!("Bearer {}", t.expose()),
            )),
            Auth::Basic { username, password } => Some((
                http::header::AUTHORIZATION,
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{}", password.expose()))
                ),
            )),
            Auth::Header { name, value } => Some((name.clone(), value.expose().to_string())),
        }
    }

    /// The header presenting these credentials on an outbound request, marked sensitive
    /// so that no debug output shows it.
    pub fn header(&self) -> Result<Option<(HeaderName, HeaderValue)>, String> {
        let Some((name, value)) = self.expected() else {
            return Ok(None);
        };
        let mut value = HeaderValue::try_from(value)
            .map_err(|_| format!("the credentials for {name} are not a valid header value"))?;
        value.set_sensitive(true);
        Ok(Some((name, value)))
    }

    /// Whether an inbound request carries these credentials. The comparison takes the
    /// same time wherever the values differ; the scheme word (`Bearer`, `Basic`) may be
    /// in any case, as RFC 9110 says schemes are case-insensitive.
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        let Some((name, expected)) = self.expected() else {
            return true;
        };
        let Some(got) = headers.get(&name) else {
            return false;
        };
        let (g, e) = (got.as_bytes(), expected.as_bytes());
        if g.len() != e.len() {
            return false;
        }
        match g.iter().position(|b| *b == b' ') {
            Some(sp) if matches!(self, Auth::Bearer(_) | Auth::Basic { .. }) => {
                g[..sp].eq_ignore_ascii_case(&e[..sp]) && bool::from(g[sp..].ct_eq(&e[sp..]))
            }
            _ => bool::from(g.ct_eq(e)),
        }
    }
}

/// A bearer token check for one secret (integration API keys, admin token).
pub fn bearer_matches(headers: &HeaderMap, secret: &Secret) -> bool {
    Auth::Bearer(secret.clone()).admits(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &str, v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
        h
    }

    #[test]
    fn auth_checks_each_scheme() {
        let bearer = Auth::Bearer(Secret::new("tok"));
        assert!(bearer.admits(&headers("authorization", "Bearer tok")));
        assert!(bearer.admits(&headers("authorization", "bearer tok")));
        assert!(!bearer.admits(&headers("authorization", "Bearer tok2")));
        assert!(!bearer.admits(&HeaderMap::new()));
        let basic = Auth::Basic {
            username: "u".into(),
            password: Secret::new("p"),
        };
        assert!(basic.admits(&headers("authorization", "Basic dTpw")));
        assert!(!basic.admits(&headers("authorization", "Basic dTpx")));
        let hdr = Auth::Header {
            name: HeaderName::from_static("x-key"),
            value: Secret::new("k"),
        };
        assert!(hdr.admits(&headers("x-key", "k")));
        assert!(!hdr.admits(&headers("x-key", "K")));
        assert!(Auth::None.admits(&HeaderMap::new()));
    }

    #[test]
    fn what_is_sent_is_what_is_accepted() {
        let basic = Auth::Basic {
            username: "u".into(),
            password: Secret::new("p"),
        };
        let (name, value) = basic.header().unwrap().unwrap();
        assert!(value.is_sensitive());
        let mut h = HeaderMap::new();
        h.insert(name, value);
        assert!(basic.admits(&h));
        let bad = Auth::Bearer(Secret::new("line\nbreak"));
        assert!(bad.header().is_err());
        assert_eq!(format!("{:?}", Secret::new("x")), "Secret(***)");
    }
}
