//! How an incident's fields serialize: `#[serde(with)]` adapters that keep the readable
//! form (RFC 3339 text, the Loomis JSON of a Dispatch, a JSON value) for human-readable
//! formats and write a compact form for the store's binary records (postcard, which is
//! not self-describing, so every field is written in order). The store chooses the
//! format ([`crate::store::codec`]); the domain types only say how they serialize.

thread_local! {
    /// Set while a version 1 record is decoded (or, in tests, encoded): the timestamp
    /// adapters below then read and write text, as version 1 did.
    static TEXT_TIMESTAMPS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

pub(crate) fn text_timestamps() -> bool {
    TEXT_TIMESTAMPS.with(|t| t.get())
}

/// Runs `f` with version 1's text timestamps.
pub(crate) fn with_text_timestamps<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            TEXT_TIMESTAMPS.with(|t| t.set(self.0));
        }
    }
    let _reset = Reset(TEXT_TIMESTAMPS.with(|t| t.replace(true)));
    f()
}

thread_local! {
    /// Set while a record written before format 3 is decoded (or, in tests, encoded):
    /// such records end before the incident's `trace` field.
    static BEFORE_TRACE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` reading (or writing) records as formats 1 and 2 laid them out: no `trace`.
pub(crate) fn before_trace_field<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            BEFORE_TRACE.with(|t| t.set(self.0));
        }
    }
    let _reset = Reset(BEFORE_TRACE.with(|t| t.replace(true)));
    f()
}

/// `#[serde(with)]` for the incident's trace position: in the binary form of a record
/// older than format 3 the field does not exist, and reads as `None` (a unit, which
/// postcard writes as nothing, stands in for it).
pub mod option_trace {
    use crate::trace::TraceParent;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    fn absent() -> bool {
        super::BEFORE_TRACE.with(|t| t.get())
    }

    pub fn serialize<S: Serializer>(t: &Option<TraceParent>, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() && absent() {
            return ().serialize(s);
        }
        t.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TraceParent>, D::Error> {
        if !d.is_human_readable() && absent() {
            <()>::deserialize(d)?;
            return Ok(None);
        }
        Option::<TraceParent>::deserialize(d)
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

/// `#[serde(with)]` for a [`jiff::Timestamp`] in a stored record: RFC 3339 text for
/// JSON (and in version 1 records), seconds and nanoseconds in the binary form.
pub mod timestamp {
    use jiff::Timestamp;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() || super::text_timestamps() {
            return t.serialize(s);
        }
        (t.as_second(), t.subsec_nanosecond()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        if d.is_human_readable() || super::text_timestamps() {
            return Timestamp::deserialize(d);
        }
        let (second, nanosecond) = <(i64, i32)>::deserialize(d)?;
        Timestamp::new(second, nanosecond).map_err(serde::de::Error::custom)
    }
}

/// [`timestamp`] for an optional one.
pub mod option_timestamp {
    use jiff::Timestamp;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Stored(#[serde(with = "super::timestamp")] Timestamp);

    pub fn serialize<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        t.map(Stored).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        Ok(Option::<Stored>::deserialize(d)?.map(|Stored(t)| t))
    }
}

/// `#[serde(with)]` for an optional JSON message inside a stored record: a JSON value for
/// JSON, its text for the binary form (which cannot hold an arbitrary value).
pub mod json_message {
    use crate::incident::JsonText;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<JsonText>, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            let value = v.as_ref().and_then(|t| {
                let value = t.value();
                if value.is_none() {
                    tracing::warn!("a stored timeline message is not valid JSON; written as null");
                }
                value
            });
            return value.serialize(s);
        }
        v.as_ref().map(JsonText::as_str).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<JsonText>, D::Error> {
        if d.is_human_readable() {
            return Ok(Option::<serde_json::Value>::deserialize(d)?.map(|v| JsonText::of(&v)));
        }
        Ok(Option::<String>::deserialize(d)?.map(JsonText::stored))
    }
}
