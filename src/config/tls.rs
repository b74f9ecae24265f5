//! `[server.tls]` as written, and certificate identities: the names an operator writes
//! (`client_cert = "CN=remedy-prod"`) and the names a verified client certificate
//! presents ([`PeerIdentity`]), with the one rule that matches them.

use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;

/// `[server.tls]`: one section for both listeners (HTTP and gRPC). Absent: plain text.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The server certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA bundle (PEM) that client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// `none`, `optional` or `required`; with `client_ca` it defaults to `required`.
    pub client_auth: Option<ClientAuth>,
    /// How often the PEM files are checked for a change (seconds; 0: only on reload).
    #[serde(default = "default_watch_secs")]
    pub watch_secs: u64,
}

fn default_watch_secs() -> u64 {
    5
}

/// Whether clients present certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// Asked for and verified when sent; a client without one still connects (and
    /// authenticates with a bearer key).
    Optional,
    /// A connection without a valid client certificate is refused in the handshake.
    Required,
}

impl TlsSection {
    /// The client certificate mode in force (`required` when only `client_ca` is given).
    pub fn client_auth(&self) -> ClientAuth {
        match (self.client_auth, &self.client_ca) {
            (Some(mode), _) => mode,
            (None, Some(_)) => ClientAuth::Required,
            (None, None) => ClientAuth::None,
        }
    }
}

/// A name a client certificate must carry, as configured: `CN=<subject common name>`,
/// `DNS=<dns SAN>`, `URI=<uri SAN>` or `EMAIL=<email SAN>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertName {
    CommonName(String),
    Dns(String),
    Uri(String),
    Email(String),
}

impl CertName {
    /// Parses the configured form; the error says which forms exist.
    pub fn parse(s: &str) -> Result<CertName, String> {
        let (kind, value) = s.split_once('=').ok_or_else(|| {
            format!("{s:?} is not CN=<name>, DNS=<name>, URI=<uri> or EMAIL=<address>")
        })?;
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("{s:?} names nothing after '='"));
        }
        let v = value.to_string();
        match kind.trim().to_ascii_uppercase().as_str() {
            "CN" => Ok(CertName::CommonName(v)),
            "DNS" => Ok(CertName::Dns(v)),
            "URI" => Ok(CertName::Uri(v)),
            "EMAIL" => Ok(CertName::Email(v)),
            other => Err(format!("{other:?} is not CN, DNS, URI or EMAIL (in {s:?})")),
        }
    }

    /// Whether a verified certificate carries this name. DNS names and email addresses
    /// compare without case, as their standards say; CN and URI exactly.
    pub fn matches(&self, peer: &PeerIdentity) -> bool {
        match self {
            CertName::CommonName(n) => peer.common_names.iter().any(|c| c == n),
            CertName::Dns(n) => peer.dns.iter().any(|d| d.eq_ignore_ascii_case(n)),
            CertName::Uri(n) => peer.uris.iter().any(|u| u == n),
            CertName::Email(n) => peer.emails.iter().any(|e| e.eq_ignore_ascii_case(n)),
        }
    }
}

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertName::CommonName(n) => write!(f, "CN={n}"),
            CertName::Dns(n) => write!(f, "DNS={n}"),
            CertName::Uri(n) => write!(f, "URI={n}"),
            CertName::Email(n) => write!(f, "EMAIL={n}"),
        }
    }
}

/// The names of a client certificate that the TLS handshake verified against
/// `server.tls.client_ca`. Present on a request (as an extension) only when verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The subject's common names (usually one).
    pub common_names: Vec<String>,
    /// Subject alternative names by kind.
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
}

impl fmt::Display for PeerIdentity {
    /// `CN=a, DNS=b`: for logs and refusals (certificate names are not secrets).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .common_names
            .iter()
            .map(|n| format!("CN={n}"))
            .chain(self.dns.iter().map(|n| format!("DNS={n}")))
            .chain(self.uris.iter().map(|n| format!("URI={n}")))
            .chain(self.emails.iter().map(|n| format!("EMAIL={n}")))
            .collect();
        if names.is_empty() {
            f.write_str("(a certificate without names)")
        } else {
            f.write_str(&names.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_match() {
        let peer = PeerIdentity {
            common_names: vec!["remedy-prod".into()],
            dns: vec!["Remedy.Bank.Example".into()],
            ..Default::default()
        };
        assert!(CertName::parse("CN=remedy-prod").unwrap().matches(&peer));
        assert!(!CertName::parse("CN=Remedy-prod").unwrap().matches(&peer));
        assert!(CertName::parse("dns=remedy.bank.example")
            .unwrap()
            .matches(&peer));
        assert!(!CertName::parse("URI=remedy-prod").unwrap().matches(&peer));
        assert!(CertName::parse("remedy").is_err());
        assert!(CertName::parse("CN=").is_err());
        assert!(CertName::parse("OU=x").unwrap_err().contains("not CN"));
        assert_eq!(peer.to_string(), "CN=remedy-prod, DNS=Remedy.Bank.Example");
    }
}

#[cfg(test)]
mod validation {
    use crate::config::Config;

    const BASE: &str = r#"
[[integrations]]
name = "a"
customer_number = "A1"
mapping = "m.toml"
"#;

    fn problems(text: &str) -> String {
        match Config::parse(text, "gateway.toml", false, &|_| Some("x".into())) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn certificate_settings_are_checked() {
        // Neither a key nor a certificate name.
        assert!(problems(BASE).contains("integrations[0].api_key_env: missing"));
        // A certificate name needs a CA to verify it against.
        let p = problems(&format!("{BASE}client_cert = \"CN=a\"\n"));
        assert!(
            p.contains("integrations[0].client_cert: client certificates are not verified"),
            "{p}"
        );
        let p = problems(&format!("{BASE}client_cert = \"O=a\"\n"));
        assert!(p.contains("is not CN, DNS, URI or EMAIL"), "{p}");
        let p = problems(&format!(
            "[server.tls]\ncert = \"c\"\nkey = \"k\"\nclient_auth = \"required\"\n{BASE}api_key_env = \"K\"\n"
        ));
        assert!(
            p.contains("server.tls.client_auth: optional or required needs"),
            "{p}"
        );
        let p = problems(&format!(
            "[server.tls]\ncert = \"c\"\nkey = \"k\"\nclient_ca = \"ca\"\n[callbacks]\nauth = {{ type = \"none\" }}\nclient_cert = \"CN=loomis\"\n{BASE}client_cert = \"DNS=a.example\"\n"
        ));
        assert_eq!(p, "");
        let p = problems(&format!(
            "[server.tls]\ncert = \"c\"\n{BASE}api_key_env = \"K\"\n"
        ));
        assert!(p.contains("missing field `key`"), "{p}");
    }
}
