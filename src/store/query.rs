//! Searching incidents, for the console: a filter, newest first, in pages.
//!
//! The API is small on purpose, so that every backend can answer it: one method,
//! [`super::Backend::incidents_page`], takes an [`IncidentFilter`], an optional
//! [`Cursor`] (where the previous page stopped) and a page size, and returns an
//! [`IncidentPage`]. The order is `created_at` descending, then integration and
//! reference ascending, so that a cursor names one exact position.
//!
//! The default implementation scans every incident (fine for tests and small stores);
//! the embedded engines answer from index keys (`store::kv`), and a SQL backend answers
//! with `WHERE ... AND (created_at, integration, reference) < cursor ORDER BY ... LIMIT`.
//!
//! A page may hold fewer incidents than asked while `next` is `Some`: an indexed scan
//! looks at a bounded number of index entries per page ([`SCAN_BUDGET`]), so a rare
//! combination of filters answers quickly with what it found, and the next page goes on
//! from where it stopped.
//!
//! Also here: [`RawInput`], what a caller sent for an incident (bounded, secrets
//! redacted), kept beside the incident for its timeline.

use crate::incident::{Incident, IncidentKey, State};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The most index entries an indexed page looks at before it returns what it found.
pub const SCAN_BUDGET: usize = 20_000;

/// The largest page a caller may ask for.
pub const MAX_PAGE: usize = 500;

/// Which incidents to list. Empty fields match everything; all given fields must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IncidentFilter {
    /// The caller's reference, exactly.
    pub reference: Option<String>,
    /// Loomis's IncidentId, exactly.
    pub incident_id: Option<String>,
    pub integration: Option<String>,
    pub state: Option<State>,
    /// Created at or after.
    pub since: Option<Timestamp>,
    /// Created at or before.
    pub until: Option<Timestamp>,
}

impl IncidentFilter {
    /// Whether `inc` passes every given field.
    pub fn matches(&self, inc: &Incident) -> bool {
        self.reference
            .as_deref()
            .is_none_or(|r| inc.reference.as_str() == r)
            && self
                .incident_id
                .as_deref()
                .is_none_or(|id| inc.incident_id.as_deref() == Some(id))
            && self
                .integration
                .as_deref()
                .is_none_or(|i| inc.integration == i)
            && self.state.is_none_or(|s| inc.state == s)
            && self.since.is_none_or(|t| inc.created_at >= t)
            && self.until.is_none_or(|t| inc.created_at <= t)
    }
}

/// A position in the newest-first order: the last incident a page returned (or looked
/// at). The next page starts strictly after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: Timestamp,
    pub key: IncidentKey,
}

impl Cursor {
    pub fn of(inc: &Incident) -> Self {
        Cursor {
            created_at: inc.created_at,
            key: inc.key(),
        }
    }

    /// Whether `(created_at, key)` comes after this position in the listing order.
    pub fn is_before(&self, created_at: Timestamp, key: &IncidentKey) -> bool {
        created_at < self.created_at || (created_at == self.created_at && *key > self.key)
    }

    /// A text form safe in a URL: nanoseconds, then the key in hex.
    pub fn encode(&self) -> String {
        let mut hex = String::new();
        for b in self
            .key
            .integration
            .bytes()
            .chain([0u8])
            .chain(self.key.reference.as_str().bytes())
        {
            hex.push_str(&format!("{b:02x}"));
        }
        format!("{}.{hex}", self.created_at.as_nanosecond())
    }

    /// Reads [`Cursor::encode`]'s text back; `None` when it is not one.
    pub fn decode(text: &str) -> Option<Cursor> {
        let (nanos, hex) = text.split_once('.')?;
        let created_at = Timestamp::from_nanosecond(nanos.parse().ok()?).ok()?;
        if hex.len() % 2 != 0 {
            return None;
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let text = String::from_utf8(bytes).ok()?;
        let (integration, reference) = text.split_once('\0')?;
        Some(Cursor {
            created_at,
            key: IncidentKey::new(integration, reference),
        })
    }
}

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct IncidentPage {
    /// Newest first.
    pub incidents: Vec<Incident>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<Cursor>,
}

/// The listing order: newest first, then by key.
pub fn listing_order(a: &Incident, b: &Incident) -> std::cmp::Ordering {
    b.created_at
        .cmp(&a.created_at)
        .then_with(|| a.key().cmp(&b.key()))
}

/// Pages a set of candidates that may be in any order: filters, sorts, skips to the
/// cursor and cuts at `limit`. Used by the default scan and for the few candidates an
/// exact lookup (reference, IncidentId) finds.
pub fn page_of(
    mut candidates: Vec<Incident>,
    filter: &IncidentFilter,
    cursor: Option<&Cursor>,
    limit: usize,
) -> IncidentPage {
    candidates.retain(|inc| {
        filter.matches(inc) && cursor.is_none_or(|c| c.is_before(inc.created_at, &inc.key()))
    });
    candidates.sort_by(listing_order);
    let more = candidates.len() > limit;
    candidates.truncate(limit);
    let next = if more {
        candidates.last().map(Cursor::of)
    } else {
        None
    };
    IncidentPage {
        incidents: candidates,
        next,
    }
}

/// What a caller sent for an incident, as received: XML as text, or a gRPC field map as
/// JSON. Kept in its own record (not in the incident's), written in the same
/// transaction as the new incident, so the console can show it in the timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawInput {
    /// `xml` or `grpc-fields`.
    pub format: String,
    /// The body, cut at [`RAW_INPUT_LIMIT`] bytes, with secret-looking values replaced
    /// by `***` ([`redact`]).
    pub body: String,
    /// The body's size as received, in bytes.
    pub size: usize,
    /// True when `body` was cut.
    pub truncated: bool,
    #[serde(with = "crate::incident::wire::timestamp")]
    pub received_at: Timestamp,
}

/// The most bytes of a caller's body kept for its timeline.
pub const RAW_INPUT_LIMIT: usize = 64 << 10;

impl RawInput {
    /// `body` as received, bounded and redacted.
    pub fn new(format: &str, body: &[u8], received_at: Timestamp) -> Self {
        let size = body.len();
        let truncated = size > RAW_INPUT_LIMIT;
        let cut = &body[..size.min(RAW_INPUT_LIMIT)];
        let text = String::from_utf8_lossy(cut);
        RawInput {
            format: format.to_string(),
            body: redact(&text),
            size,
            truncated,
            received_at,
        }
    }
}

/// Names whose values are secrets wherever they appear (element, attribute or JSON key
/// names, compared without case): the value is replaced by `***`.
pub const SECRET_NAMES: [&str; 8] = [
    "password",
    "passwd",
    "secret",
    "token",
    "apikey",
    "api_key",
    "authorization",
    "credential",
];

fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    // A namespace prefix (`wsse:Password`) does not hide a secret.
    let local = lower.rsplit(':').next().unwrap_or(&lower);
    SECRET_NAMES.iter().any(|s| local.contains(s))
}

/// Replaces the text of elements, attributes and JSON string values whose name looks
/// like a secret ([`SECRET_NAMES`]) by `***`. Works on text, so that a body cut in the
/// middle or not well-formed is still redacted.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        // <name ...>value</
        if c == b'<' {
            let start = i + 1;
            let mut j = start;
            while j < bytes.len() && !matches!(bytes[j], b'>' | b' ' | b'/' | b'\t' | b'\n') {
                j += 1;
            }
            let name = &text[start..j];
            if !name.is_empty() && !name.starts_with(['/', '?', '!']) && is_secret_name(name) {
                if let Some(close) = text[j..].find('>') {
                    let open_end = j + close;
                    if bytes[open_end - 1] != b'/' {
                        if let Some(end) = text[open_end + 1..].find('<') {
                            out.push_str(&text[i..=open_end]);
                            out.push_str("***");
                            i = open_end + 1 + end;
                            continue;
                        }
                    }
                }
            }
        }
        // name="value" (attribute) or "name": "value" (JSON)
        if c == b'"' || c == b'\'' {
            if let Some((consumed, redacted)) = quoted_pair(&text[i..], &out) {
                out.push_str(&redacted);
                i += consumed;
                continue;
            }
        }
        let ch = text[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

/// At a quote: if the name before it (attribute `name=` or JSON `"name":`) is a secret,
/// the quoted value redacted and how many bytes it took.
fn quoted_pair(rest: &str, before: &str) -> Option<(usize, String)> {
    let quote = rest.chars().next()?;
    let trimmed = before.trim_end();
    let name = if let Some(attr) = trimmed.strip_suffix('=') {
        let attr = attr.trim_end();
        let start = attr
            .rfind(|c: char| c.is_whitespace() || c == '<')
            .map_or(0, |p| p + 1);
        &attr[start..]
    } else if let Some(json) = trimmed.strip_suffix(':') {
        let json = json.trim_end().strip_suffix('"')?;
        let start = json.rfind('"')? + 1;
        &json[start..]
    } else {
        return None;
    };
    if name.is_empty() || !is_secret_name(name) {
        return None;
    }
    let body = &rest[1..];
    let mut end = None;
    let mut escaped = false;
    for (p, ch) in body.char_indices() {
        if escaped {
            escaped = false;
        } else if ch == '\\' && quote == '"' {
            escaped = true;
        } else if ch == quote {
            end = Some(p);
            break;
        }
    }
    let end = end?;
    Some((end + 2, format!("{quote}***{quote}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_through_text() {
        let c = Cursor {
            created_at: Timestamp::from_second(1_700_000_000).unwrap(),
            key: IncidentKey::new("servicenow", "INC 1/ä&x"),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("x"), None);
        assert_eq!(Cursor::decode("12.zz"), None);
    }

    #[test]
    fn secrets_are_redacted_in_xml_attributes_and_json() {
        let xml = r#"<a><Password>hunter2</Password><user token="abc">x</user><wsse:Password Type="t">pw</wsse:Password><ok>keep</ok></a>"#;
        let r = redact(xml);
        assert!(
            !r.contains("hunter2") && !r.contains("abc") && !r.contains(">pw<"),
            "{r}"
        );
        assert!(r.contains("<ok>keep</ok>"), "{r}");
        assert!(r.contains("<Password>***</Password>"), "{r}");
        let json = r#"{"api_key": "k1", "caller":"x", "Secret":"s\"q"}"#;
        let r = redact(json);
        assert!(!r.contains("k1") && !r.contains("s\\\"q"), "{r}");
        assert!(r.contains(r#""caller":"x""#), "{r}");
    }

    #[test]
    fn raw_input_is_bounded() {
        let big = vec![b'a'; RAW_INPUT_LIMIT + 10];
        let raw = RawInput::new("xml", &big, Timestamp::UNIX_EPOCH);
        assert!(raw.truncated);
        assert_eq!(raw.size, RAW_INPUT_LIMIT + 10);
        assert_eq!(raw.body.len(), RAW_INPUT_LIMIT);
    }
}
