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

/// Tag of a postcard record (format version 1).
const BINARY_V1: u8 = 0x01;

/// Encodes a hot record in the binary form.
pub fn encode_binary<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(512);
    out.push(BINARY_V1);
    postcard::to_io(v, &mut out).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(out)
}

/// Encodes a rare record as JSON, readable with any tool.
pub fn encode_json<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Decodes a record in either form.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.first() {
        Some(&BINARY_V1) => {
            postcard::from_bytes(&bytes[1..]).map_err(|e| StoreError::Corrupt(e.to_string()))
        }
        Some(b'{') => serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(e.to_string())),
        Some(b) => Err(StoreError::Corrupt(format!(
            "unknown record format {b:#04x}"
        ))),
        None => Err(StoreError::Corrupt("empty record".into())),
    }
}

/// `#[serde(with)]` for a [`Dispatch`](crate::loomis::message::Dispatch) inside a stored
/// record: the Loomis JSON form for JSON, every field in order for the binary form.
pub mod dispatch {
    use crate::loomis::message::Dispatch;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Fields(
        String,
        String,
        String,
        String,
        String,
        String,
        Option<String>,
        String,
        String,
        Option<String>,
        String,
    );

    #[derive(Serialize)]
    struct FieldsRef<'a>(
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a str,
        &'a Option<String>,
        &'a str,
        &'a str,
        &'a Option<String>,
        &'a str,
    );

    pub fn serialize<S: Serializer>(d: &Dispatch, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return d.serialize(s);
        }
        FieldsRef(
            &d.message_type,
            &d.customer_number,
            &d.incident_reference,
            &d.device_id,
            &d.contact_name,
            &d.contact_number,
            &d.contact_email,
            &d.subject,
            &d.description,
            &d.fault_code,
            &d.fault_date_time,
        )
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Dispatch, D::Error> {
        if d.is_human_readable() {
            return Dispatch::deserialize(d);
        }
        let f = Fields::deserialize(d)?;
        Ok(Dispatch {
            message_type: f.0,
            customer_number: f.1,
            incident_reference: f.2,
            device_id: f.3,
            contact_name: f.4,
            contact_number: f.5,
            contact_email: f.6,
            subject: f.7,
            description: f.8,
            fault_code: f.9,
            fault_date_time: f.10,
        })
    }
}

/// `#[serde(with)]` for an optional JSON message inside a stored record: a JSON value for
/// JSON, its text for the binary form (which cannot hold an arbitrary value).
pub mod json_message {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        v: &Option<serde_json::Value>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return v.serialize(s);
        }
        v.as_ref().map(|v| v.to_string()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<serde_json::Value>, D::Error> {
        if d.is_human_readable() {
            return Option::<serde_json::Value>::deserialize(d);
        }
        match Option::<String>::deserialize(d)? {
            Some(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
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
            Some(serde_json::json!({"MessageType": "ACK", "Extra": [1, {"a": null}]})),
        );
        inc
    }

    #[test]
    fn binary_round_trip_keeps_every_field() {
        for email in [None, Some("john.smith@example.com")] {
            let inc = incident(email);
            let bytes = encode_binary(&inc).unwrap();
            assert_eq!(bytes[0], BINARY_V1);
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
