//! [`TraceParent`]: a position in a trace, as the W3C Trace Context `traceparent` header
//! writes it (`00-<trace id>-<parent span id>-<flags>`). It is what the gateway reads from
//! callers, sends to Loomis and to the tools, and stores with each incident so that the
//! trace goes on after a restart. Pure: parsing, formatting and serde.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A W3C `traceparent`: the trace, the span to continue from, and the trace flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Bit 0: the trace is sampled (recorded). Other bits are kept as received.
    pub flags: u8,
}

impl TraceParent {
    /// Reads a `traceparent` header value. `None` for anything the W3C rules say to
    /// ignore: wrong length or separators, upper-case or non-hex digits, version `ff`,
    /// an all-zero trace or span id. A later version's value is read by its first four
    /// fields, as the rules ask.
    pub fn parse(value: &str) -> Option<TraceParent> {
        let v = value.trim().as_bytes();
        if v.len() < 55 {
            return None;
        }
        let version = hex_byte(&v[0..2])?;
        if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
            return None;
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, b) in span_id.iter_mut().enumerate() {
            *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&v[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// Whether the caller records this trace.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The trace id as 32 lower-case hex digits, as trace back ends show it.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id as 16 lower-case hex digits.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }
}

/// Two lower-case hex digits (the W3C form has no upper case).
fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(digit(two[0])? << 4 | digit(two[1])?)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The header value: `00-<trace id>-<span id>-<flags>` (always version 00).
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

/// The header text in human-readable formats (a JSON dump of a record shows what a trace
/// back end would search for); 25 raw bytes in the store's binary records.
impl Serialize for TraceParent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            (self.trace_id, self.span_id, self.flags).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for TraceParent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            TraceParent::parse(&text).ok_or_else(|| {
                serde::de::Error::custom(format!("{text:?} is not a W3C traceparent"))
            })
        } else {
            let (trace_id, span_id, flags) = <([u8; 16], [u8; 8], u8)>::deserialize(d)?;
            Ok(TraceParent {
                trace_id,
                span_id,
                flags,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TraceParent;

    const W3C_EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_reads_and_writes_back_the_same() {
        let tp = TraceParent::parse(W3C_EXAMPLE).unwrap();
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.span_id_hex(), "00f067aa0ba902b7");
        assert!(tp.sampled());
        assert_eq!(tp.to_string(), W3C_EXAMPLE);
        let unsampled = TraceParent::parse(&W3C_EXAMPLE.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled());
    }

    #[test]
    fn values_the_rules_say_to_ignore_are_none() {
        for bad in [
            "",
            "00",
            // Upper case, a wrong separator, one digit short or long.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            // Version ff, zero ids, non-hex.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bg-01",
            // A later version must still separate what follows with a dash.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version with more fields is read by its first four.
        let later = TraceParent::parse(&format!("01{}-what-comes-next", &W3C_EXAMPLE[2..]));
        assert_eq!(later, TraceParent::parse(W3C_EXAMPLE));
    }

    #[test]
    fn json_holds_the_header_text_and_binary_holds_25_bytes() {
        let tp = TraceParent::parse(W3C_EXAMPLE).unwrap();
        let json = serde_json::to_string(&tp).unwrap();
        assert_eq!(json, format!("\"{W3C_EXAMPLE}\""));
        assert_eq!(serde_json::from_str::<TraceParent>(&json).unwrap(), tp);
        assert!(serde_json::from_str::<TraceParent>("\"00-zz\"").is_err());
        let bin = postcard::to_stdvec(&tp).unwrap();
        assert_eq!(bin.len(), 25);
        assert_eq!(&bin[..16], &tp.trace_id);
        assert_eq!(postcard::from_bytes::<TraceParent>(&bin).unwrap(), tp);
    }
}
