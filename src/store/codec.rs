//! How records are encoded in the store.
//!
//! The hot records (incidents, updates, outbox jobs) are written in a compact binary form:
//! a one-byte format tag followed by postcard, about half the size of JSON and several
//! times cheaper to encode and decode on the writer thread. Rare records (dead letters,
//! orphans) stay JSON so an operator can read them in any dump of the keyspace. Decoding looks at
//! the first byte, so a record in either form is readable: JSON records start with `{`.
//!
//! postcard is not self-describing, so a stored type must not skip fields when
//! serializing: the adapters below keep the Loomis wire form of [`Dispatch`] (which omits
//! absent optional fields) for JSON and write every field for the binary form.

use super::StoreError;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Tag of a postcard record whose timestamps are RFC 3339 text (format version 1,
/// written by earlier releases; still read).
const BINARY_V1: u8 = 0x01;
/// Tag of a postcard record whose timestamps are integers: seconds and nanoseconds since
/// the Unix epoch (format version 2). Formatting and parsing timestamp text was about 2 %
/// of the gateway's CPU under load.
const BINARY_V2: u8 = 0x02;
/// Tag of a postcard record whose incidents end with their trace position
/// (`Incident::trace`, format version 3). Versions 1 and 2 lack that field and read as
/// `None`; jobs and updates are the same in versions 2 and 3.
const BINARY_V3: u8 = 0x03;

/// Encodes a hot record in the binary form.
pub fn encode_binary<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(512);
    out.push(BINARY_V3);
    postcard::to_io(v, &mut out)
        .map_err(|e| StoreError::Database(format!("cannot encode a record: {e}")))?;
    Ok(out)
}

/// Encodes a rare record as JSON, readable with any tool.
pub fn encode_json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Database(format!("cannot encode a record: {e}")))
}

/// Decodes a record in either form.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.first() {
        Some(&BINARY_V3) => postcard_record(&bytes[1..]),
        Some(&BINARY_V2) => {
            crate::incident::wire::before_trace_field(|| postcard_record(&bytes[1..]))
        }
        Some(&BINARY_V1) => crate::incident::wire::with_text_timestamps(|| {
            crate::incident::wire::before_trace_field(|| postcard_record(&bytes[1..]))
        }),
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string())),
        Some(b) => Err(StoreError::Corrupt(format!(
            "unknown record format {b:#04x}"
        ))),
        None => Err(StoreError::Corrupt("empty record".into())),
    }
}

fn postcard_record<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::{Direction, EntryOutcome, Incident};
    use crate::loomis::message::Dispatch;

    fn dispatch(email: Option<&str>) -> Dispatch {
        Dispatch {
            message_type: "Dispatch".into(),
            customer_number: "A123456".into(),
            incident_reference: "INC0010001".into(),
            device_id: "UG1234".into(),
            contact_name: "John Smith".into(),
            contact_number: "123-123-1234".into(),
            contact_email: email.map(Into::into),
            subject: "Safe Door Issue".into(),
            description: "Cannot open the door — ünïcode".into(),
            fault_code: None,
            fault_date_time: "2021-01-16T15:17:48Z".into(),
        }
    }

    fn incident(email: Option<&str>) -> Incident {
        let now = jiff::Timestamp::from_second(1_700_000_000).unwrap();
        let mut inc = Incident::new("servicenow", dispatch(email), now);
        inc.record(
            now,
            Direction::FromLoomis,
            "ACK",
            EntryOutcome::Applied,
            "acknowledged",
            Some(crate::incident::JsonText::of(
                &serde_json::json!({"MessageType": "ACK", "Extra": [1, {"a": null}]}),
            )),
        );
        inc
    }

    #[test]
    fn binary_round_trip_keeps_every_field() {
        for email in [None, Some("john.smith@example.com")] {
            let inc = incident(email);
            let bytes = encode_binary(&inc).unwrap();
            assert_eq!(bytes[0], BINARY_V3);
            let back: Incident = decode(&bytes).unwrap();
            assert_eq!(back, inc);
            let json = encode_json(&inc).unwrap();
            assert!(
                bytes.len() * 3 < json.len() * 2,
                "binary {} vs json {}",
                bytes.len(),
                json.len()
            );
        }
    }

    /// A record as version 1 wrote it: timestamps as text.
    fn encode_v1<T: Serialize>(v: &T) -> Vec<u8> {
        let mut bytes = crate::incident::wire::with_text_timestamps(|| {
            crate::incident::wire::before_trace_field(|| encode_binary(v))
        })
        .unwrap();
        bytes[0] = BINARY_V1;
        bytes
    }

    #[test]
    fn version_1_records_stay_readable() {
        let mut inc = incident(Some("john.smith@example.com"));
        inc.sla_time = Some(jiff::Timestamp::from_second(1_700_003_600).unwrap());
        let v1 = encode_v1(&inc);
        // Text timestamps, as earlier releases wrote them.
        let text = String::from_utf8_lossy(&v1);
        assert!(text.contains("2023-11-14T22:13:20Z"), "{text}");
        assert_eq!(decode::<Incident>(&v1).unwrap(), inc);
        let v2 = encode_binary(&inc).unwrap();
        assert!(!String::from_utf8_lossy(&v2).contains("2023-11-14"));
        assert!(v2.len() < v1.len());
        assert_eq!(decode::<Incident>(&v2).unwrap(), inc);
        // Decoding a version 1 record leaves the thread writing the current version.
        assert_eq!(encode_binary(&inc).unwrap(), v2);
    }

    /// A record as version 2 wrote it: the incident ends before its trace position.
    fn encode_v2<T: Serialize>(v: &T) -> Vec<u8> {
        let mut bytes = crate::incident::wire::before_trace_field(|| encode_binary(v)).unwrap();
        bytes[0] = BINARY_V2;
        bytes
    }

    #[test]
    fn version_3_keeps_the_trace_and_version_2_records_read_without_one() {
        let tp = crate::trace::TraceParent::parse(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .unwrap();
        let mut traced = incident(Some("john.smith@example.com"));
        traced.trace = Some(tp);
        let v3 = encode_binary(&traced).unwrap();
        assert_eq!(v3[0], BINARY_V3);
        assert_eq!(decode::<Incident>(&v3).unwrap(), traced);
        // The trace is the record's last 26 bytes: Some, trace id, span id, flags.
        assert_eq!(v3[v3.len() - 26], 1);
        assert_eq!(&v3[v3.len() - 25..v3.len() - 9], &tp.trace_id);
        // JSON records hold the header text, and older JSON records (no key) read as None.
        let json = String::from_utf8(encode_json(&traced).unwrap()).unwrap();
        assert!(json.contains(&format!("\"trace\":\"{tp}\"")), "{json}");
        let untraced = incident(Some("john.smith@example.com"));
        let old_json = String::from_utf8(encode_json(&untraced).unwrap())
            .unwrap()
            .replace(",\"trace\":null", "");
        assert!(!old_json.contains("trace"), "{old_json}");
        assert_eq!(decode::<Incident>(old_json.as_bytes()).unwrap(), untraced);

        // Version 2 as earlier releases wrote it: the same bytes without the trace field
        // (a None is one byte in version 3).
        let v2 = encode_v2(&untraced);
        let now = encode_binary(&untraced).unwrap();
        assert_eq!(&v2[1..], &now[1..now.len() - 1]);
        assert_eq!(now[now.len() - 1], 0);
        assert_eq!(decode::<Incident>(&v2).unwrap(), untraced);
        // A version 2 record of a traced incident cannot exist: writing one drops it.
        assert_eq!(decode::<Incident>(&encode_v2(&traced)).unwrap().trace, None);
        // Jobs and updates are laid out alike in versions 2 and 3.
        let job = crate::store::records::Job {
            id: 7,
            target: crate::store::records::Target::Loomis,
            kind: crate::store::records::JobKind::Dispatch,
            incident: crate::incident::IncidentKey::new("servicenow", "INC1"),
            attempts: 0,
            created_at: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
            next_attempt_at: jiff::Timestamp::from_second(1_700_000_000).unwrap(),
            last_error: None,
        };
        assert_eq!(&encode_v2(&job)[1..], &encode_binary(&job).unwrap()[1..]);
        assert_eq!(
            decode::<crate::store::records::Job>(&encode_v2(&job)).unwrap(),
            job
        );
    }

    #[test]
    fn timestamps_keep_nanoseconds_and_range() {
        use crate::store::records::{Job, JobKind, Target};
        let min = jiff::Timestamp::MIN;
        for (second, nano) in [
            (0, 0),
            (1_700_000_000, 123_456_789),
            (-1, 999_999_999),
            (-5, -123_456_789),
            (min.as_second(), min.subsec_nanosecond()),
        ] {
            let at = jiff::Timestamp::new(second, nano).unwrap();
            let job = Job {
                id: 7,
                target: Target::Loomis,
                kind: JobKind::Dispatch,
                incident: crate::incident::IncidentKey::new("servicenow", "INC1"),
                attempts: 2,
                created_at: at,
                next_attempt_at: jiff::Timestamp::MAX,
                last_error: Some("HTTP 503".into()),
            };
            assert_eq!(decode::<Job>(&encode_binary(&job).unwrap()).unwrap(), job);
            assert_eq!(decode::<Job>(&encode_v1(&job)).unwrap(), job);
            assert_eq!(decode::<Job>(&encode_json(&job).unwrap()).unwrap(), job);
        }
    }

    #[test]
    fn timeline_messages_read_back_as_the_same_json_text() {
        let inc = incident(Some("john.smith@example.com"));
        // The caller's Dispatch entry: the Dispatch as a JSON object, keys sorted.
        let dispatch = inc.timeline_message(&inc.timeline[0]).unwrap();
        assert!(
            dispatch.as_str().starts_with("{\"ContactEmail\":"),
            "{}",
            dispatch.as_str()
        );
        assert_eq!(
            dispatch.as_str(),
            serde_json::to_value(&inc.dispatch).unwrap().to_string()
        );
        // A stored message: the same text after the binary and the JSON round trips.
        let ack = inc.timeline_message(&inc.timeline[1]).unwrap();
        assert_eq!(
            ack.as_str(),
            r#"{"Extra":[1,{"a":null}],"MessageType":"ACK"}"#
        );
        for bytes in [encode_binary(&inc).unwrap(), encode_json(&inc).unwrap()] {
            let back: Incident = decode(&bytes).unwrap();
            assert_eq!(back.timeline_message(&back.timeline[1]).unwrap(), ack);
        }
    }

    #[test]
    fn json_records_stay_readable() {
        let inc = incident(None);
        let json = encode_json(&inc).unwrap();
        // The Dispatch inside keeps the Loomis wire form: absent optional fields omitted.
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(text.contains("\"IncidentReference\":\"INC0010001\""));
        assert!(!text.contains("ContactEmail"));
        let back: Incident = decode(&json).unwrap();
        assert_eq!(back, inc);
    }

    #[test]
    fn unknown_and_truncated_records_are_corrupt_not_panics() {
        let bytes = encode_binary(&incident(None)).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode::<Incident>(&bytes[..cut]).is_err());
        }
        assert!(matches!(
            decode::<Incident>(&[0x7f, 1, 2]),
            Err(StoreError::Corrupt(_))
        ));
    }
}
