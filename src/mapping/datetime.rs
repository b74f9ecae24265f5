//! Date-times: parsing a tool's date-time (a strftime format or RFC 3339, in the
//! mapping's zone or with the value's own offset, DST-correct) into UTC, and writing
//! update times in the outbound zone and format.

use std::fmt::Write as _;

use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;

use super::quote;

/// What to do with a local time that a DST change makes ambiguous or non-existent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DstPolicy {
    /// Ambiguous (clocks fall back): the earlier instant; non-existent (clocks spring
    /// forward): shifted forward by the gap. What most software (and RFC 5545, and
    /// Temporal) does.
    Compatible,
    /// Always the earlier of the two candidate instants.
    Earlier,
    /// Always the later of the two candidate instants.
    Later,
    /// Refuse the value with a problem.
    Reject,
}

impl DstPolicy {
    pub(crate) const NAMES: &'static [&'static str] = &["compatible", "earlier", "later", "reject"];

    pub(crate) fn parse(s: &str) -> Option<DstPolicy> {
        Some(match s {
            "compatible" => DstPolicy::Compatible,
            "earlier" => DstPolicy::Earlier,
            "later" => DstPolicy::Later,
            "reject" => DstPolicy::Reject,
            _ => return None,
        })
    }
}

/// How a date-time is written.
#[derive(Debug, Clone)]
pub(crate) enum DateFormat {
    /// RFC 3339 with any offset (`2021-01-16T09:17:48-06:00`, `...Z`).
    Rfc3339,
    /// A strftime format (jiff's `strtime`).
    Strftime(String),
}

impl DateFormat {
    pub(crate) fn describe(&self) -> &str {
        match self {
            DateFormat::Rfc3339 => "rfc3339",
            DateFormat::Strftime(f) => f,
        }
    }
}

/// A compiled date-time transform: parse in `format` and `tz`, output UTC RFC 3339
/// with `Z`, whole seconds.
#[derive(Debug, Clone)]
pub(crate) struct DateTimeSpec {
    pub(crate) format: DateFormat,
    pub(crate) tz: TimeZone,
    pub(crate) tz_name: String,
    pub(crate) policy: DstPolicy,
    /// The value may end with an offset (`+01:00`, `+0100`, `+01`) or `Z`, which then
    /// wins over `tz`; without one the value is local time in `tz`. Only with formats
    /// that have no offset of their own.
    pub(crate) offset_optional: bool,
}

/// Formats a timestamp as `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds).
pub(crate) fn format_utc(ts: Timestamp) -> String {
    let dt = jiff::tz::Offset::UTC.to_datetime(ts);
    let mut s = String::with_capacity(20);
    let _ = write!(
        s,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    );
    s
}

/// Formats a timestamp in `format` and `tz` (RFC 3339 keeps `Z` for UTC and a numeric
/// offset otherwise).
pub(crate) fn format_in(
    ts: Timestamp,
    format: &DateFormat,
    tz: &TimeZone,
) -> Result<String, String> {
    let zoned = ts.to_zoned_datetime(tz.clone());
    match format {
        DateFormat::Rfc3339 => {
            if zoned.offset() == jiff::tz::Offset::UTC {
                Ok(format_utc(ts))
            } else {
                jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S%:z", &zoned)
                    .map_err(|e| e.to_string())
            }
        }
        DateFormat::Strftime(f) => {
            jiff::fmt::strtime::format(f.as_str(), &zoned).map_err(|e| e.to_string())
        }
    }
}

impl DateTimeSpec {
    /// Parses `value` and returns it as UTC RFC 3339 with `Z`, whole seconds.
    pub(crate) fn normalize(&self, value: &str) -> Result<String, String> {
        let ts = self.parse(value.trim())?;
        Ok(format_utc(ts))
    }

    fn parse(&self, value: &str) -> Result<Timestamp, String> {
        let not_in_format = || {
            format!(
                "{} is not a date-time in format {}{}",
                quote(value),
                self.format.describe(),
                if self.offset_optional {
                    " (with an optional offset or Z)"
                } else {
                    ""
                }
            )
        };
        match &self.format {
            DateFormat::Rfc3339 if self.offset_optional => {
                if let Ok(ts) = value.parse::<Timestamp>() {
                    return Ok(ts);
                }
                match value.parse::<jiff::civil::DateTime>() {
                    // jiff reads a civil date-time from a value with an offset too (and
                    // drops it): only a value with none is local time.
                    Ok(dt) if split_offset(value).is_none() => {
                        self.in_zone(dt, value, &self.tz, &self.tz_name)
                    }
                    _ => Err(format!(
                        "{} is not an RFC 3339 date-time (e.g. 2021-01-16T15:17:48Z, or \
                         2021-01-16T09:17:48 in {})",
                        quote(value),
                        self.tz_name
                    )),
                }
            }
            DateFormat::Rfc3339 => {
                let ts: Timestamp = value.parse().map_err(|_| {
                    format!(
                        "{} is not an RFC 3339 date-time with offset (e.g. 2021-01-16T15:17:48Z)",
                        quote(value)
                    )
                })?;
                Ok(ts)
            }
            DateFormat::Strftime(f) => {
                let tm = match jiff::fmt::strtime::parse(f.as_str(), value) {
                    Ok(tm) => tm,
                    Err(_) if self.offset_optional => {
                        // A value the format alone does not read may end with an offset.
                        let (rest, offset) = split_offset(value).ok_or_else(not_in_format)?;
                        let dt = jiff::fmt::strtime::parse(f.as_str(), rest)
                            .and_then(|tm| tm.to_datetime())
                            .map_err(|_| not_in_format())?;
                        return offset
                            .to_timestamp(dt)
                            .map_err(|_| format!("{} is out of range", quote(value)));
                    }
                    Err(_) => return Err(not_in_format()),
                };
                if tm.offset().is_some() {
                    return tm.to_timestamp().map_err(|_| not_in_format());
                }
                let dt = tm.to_datetime().map_err(|_| not_in_format())?;
                match tm.iana_time_zone() {
                    Some(name) => {
                        let tz = TimeZone::get(name)
                            .map_err(|_| format!("{}: unknown time zone {name:?}", quote(value)))?;
                        self.in_zone(dt, value, &tz, name)
                    }
                    None => self.in_zone(dt, value, &self.tz, &self.tz_name),
                }
            }
        }
    }

    /// The instant of local time `dt` in `tz`, by the DST policy.
    fn in_zone(
        &self,
        dt: jiff::civil::DateTime,
        value: &str,
        tz: &TimeZone,
        tz_name: &str,
    ) -> Result<Timestamp, String> {
        let amb = tz.to_ambiguous_timestamp(dt);
        let result = match self.policy {
            DstPolicy::Compatible => amb.compatible(),
            DstPolicy::Earlier => amb.earlier(),
            DstPolicy::Later => amb.later(),
            DstPolicy::Reject => match amb.offset() {
                AmbiguousOffset::Unambiguous { .. } => amb.compatible(),
                AmbiguousOffset::Gap { .. } => {
                    return Err(format!(
                        "{} does not exist in {tz_name} (clocks skip it at a DST change)",
                        quote(value)
                    ))
                }
                AmbiguousOffset::Fold { .. } => {
                    return Err(format!(
                        "{} is ambiguous in {tz_name} (it happens twice at a DST change)",
                        quote(value)
                    ))
                }
            },
        };
        result.map_err(|_| format!("{} is out of range", quote(value)))
    }
}

/// Splits a trailing UTC designator or numeric offset off a date-time: `...Z`,
/// `...+01:00`, `...+0100`, `...-05` (a space before it is dropped too). `None` when the
/// value does not end with one.
fn split_offset(value: &str) -> Option<(&str, jiff::tz::Offset)> {
    if let Some(rest) = value.strip_suffix(['Z', 'z']) {
        return Some((rest.trim_end(), jiff::tz::Offset::UTC));
    }
    let sign_at = value.rfind(['+', '-'])?;
    let digits: String = value[sign_at + 1..].chars().filter(|c| *c != ':').collect();
    let tail = &value[sign_at + 1..];
    let shape_ok = match tail.len() {
        2 | 4 => tail.chars().all(|c| c.is_ascii_digit()),
        5 => {
            tail.as_bytes()[2] == b':'
                && digits.len() == 4
                && digits.chars().all(|c| c.is_ascii_digit())
        }
        _ => false,
    };
    if !shape_ok || sign_at == 0 {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = digits
        .get(2..)
        .filter(|m| !m.is_empty())
        .map_or(Some(0), |m| m.parse().ok())?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    let seconds = (hours * 3600 + minutes * 60)
        * if &value[sign_at..=sign_at] == "-" {
            -1
        } else {
            1
        };
    let offset = jiff::tz::Offset::from_seconds(seconds).ok()?;
    Some((value[..sign_at].trim_end(), offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As the `datetime` transform runs it: an empty value stays empty.
    fn run(t: &DateTimeSpec, v: &str) -> Result<String, String> {
        if v.is_empty() {
            return Ok(String::new());
        }
        t.normalize(v)
    }

    fn dt(format: &str, tz: &str, policy: DstPolicy) -> DateTimeSpec {
        DateTimeSpec {
            format: if format == "rfc3339" {
                DateFormat::Rfc3339
            } else {
                DateFormat::Strftime(format.into())
            },
            tz: TimeZone::get(tz).unwrap(),
            tz_name: tz.into(),
            policy,
            offset_optional: false,
        }
    }

    fn dt_optional(format: &str, tz: &str) -> DateTimeSpec {
        DateTimeSpec {
            format: if format == "rfc3339" {
                DateFormat::Rfc3339
            } else {
                DateFormat::Strftime(format.into())
            },
            tz: TimeZone::get(tz).unwrap(),
            tz_name: tz.into(),
            policy: DstPolicy::Compatible,
            offset_optional: true,
        }
    }

    #[test]
    fn datetime_with_optional_offset_prefers_the_values_offset() {
        let t = dt_optional("%Y-%m-%d %H:%M:%S", "Europe/Berlin");
        // No offset: local time in the mapping's zone (CET, UTC+1).
        assert_eq!(
            run(&t, "2021-01-16 09:17:48").unwrap(),
            "2021-01-16T08:17:48Z"
        );
        // An offset or Z in the value wins, in any of the usual spellings.
        for (v, want) in [
            ("2021-01-16 09:17:48Z", "2021-01-16T09:17:48Z"),
            ("2021-01-16 09:17:48 Z", "2021-01-16T09:17:48Z"),
            ("2021-01-16 09:17:48+05:30", "2021-01-16T03:47:48Z"),
            ("2021-01-16 09:17:48 -0600", "2021-01-16T15:17:48Z"),
            ("2021-01-16 09:17:48-06", "2021-01-16T15:17:48Z"),
        ] {
            assert_eq!(run(&t, v).unwrap(), want, "{v}");
        }
        // Problems quote the value as received, offset included.
        assert_eq!(
            run(&t, "2021-01-16 09:17+01:00").unwrap_err(),
            "\"2021-01-16 09:17+01:00\" is not a date-time in format %Y-%m-%d %H:%M:%S (with an optional offset or Z)"
        );
        assert!(run(&t, "2021-01-16 09:17:48+25:00").is_err());
        // A format that ends in digits is read whole before any offset is looked for.
        let t = dt_optional("%H:%M:%S %d-%m-%Y", "UTC");
        assert_eq!(
            run(&t, "09:17:48 16-01-2021").unwrap(),
            "2021-01-16T09:17:48Z"
        );
        assert_eq!(
            run(&t, "09:17:48 16-01-2021 +01:00").unwrap(),
            "2021-01-16T08:17:48Z"
        );
        let t = dt_optional("rfc3339", "America/Chicago");
        assert_eq!(
            run(&t, "2021-01-16T09:17:48").unwrap(),
            "2021-01-16T15:17:48Z"
        );
        assert_eq!(
            run(&t, "2021-01-16T09:17:48Z").unwrap(),
            "2021-01-16T09:17:48Z"
        );
        assert_eq!(
            run(&t, "2021-01-16T09:17:48+01:00").unwrap(),
            "2021-01-16T08:17:48Z"
        );
        assert!(run(&t, "16.01.2021")
            .unwrap_err()
            .contains("America/Chicago"));
    }

    #[test]
    fn datetime_in_zone_to_utc() {
        let t = dt(
            "%Y-%m-%d %H:%M:%S",
            "America/Chicago",
            DstPolicy::Compatible,
        );
        assert_eq!(
            run(&t, "2021-01-16 09:17:48").unwrap(),
            "2021-01-16T15:17:48Z"
        );
        // Summer time: UTC-5.
        assert_eq!(
            run(&t, "2021-07-16 09:17:48").unwrap(),
            "2021-07-16T14:17:48Z"
        );
        assert_eq!(
            run(&t, "16/01/2021").unwrap_err(),
            "\"16/01/2021\" is not a date-time in format %Y-%m-%d %H:%M:%S"
        );
        assert_eq!(run(&t, "").unwrap(), "");
    }

    #[test]
    fn datetime_with_offset_in_input_ignores_zone() {
        let t = dt(
            "%Y-%m-%d %H:%M:%S %z",
            "America/Chicago",
            DstPolicy::Compatible,
        );
        assert_eq!(
            run(&t, "2021-01-16 09:17:48 +0100").unwrap(),
            "2021-01-16T08:17:48Z"
        );
    }

    #[test]
    fn dst_gap_and_fold_policies() {
        // America/Chicago 2021-03-14: 02:00 -> 03:00 (gap); 2021-11-07: 02:00 -> 01:00 (fold).
        let gap = "2021-03-14 02:30:00";
        let fold = "2021-11-07 01:30:00";
        let f = "%Y-%m-%d %H:%M:%S";
        let c = dt(f, "America/Chicago", DstPolicy::Compatible);
        assert_eq!(run(&c, gap).unwrap(), "2021-03-14T08:30:00Z"); // 03:30 CDT
        assert_eq!(run(&c, fold).unwrap(), "2021-11-07T06:30:00Z"); // first 01:30, CDT
        let e = dt(f, "America/Chicago", DstPolicy::Earlier);
        assert_eq!(run(&e, gap).unwrap(), "2021-03-14T07:30:00Z"); // 01:30 CST
        assert_eq!(run(&e, fold).unwrap(), "2021-11-07T06:30:00Z");
        let l = dt(f, "America/Chicago", DstPolicy::Later);
        assert_eq!(run(&l, gap).unwrap(), "2021-03-14T08:30:00Z");
        assert_eq!(run(&l, fold).unwrap(), "2021-11-07T07:30:00Z"); // second 01:30, CST
        let r = dt(f, "America/Chicago", DstPolicy::Reject);
        assert!(run(&r, gap)
            .unwrap_err()
            .contains("does not exist in America/Chicago"));
        assert!(run(&r, fold)
            .unwrap_err()
            .contains("is ambiguous in America/Chicago"));
        assert_eq!(
            run(&r, "2021-01-16 09:17:48").unwrap(),
            "2021-01-16T15:17:48Z"
        );
    }

    #[test]
    fn rfc3339_any_offset_to_utc_whole_seconds() {
        let t = dt("rfc3339", "UTC", DstPolicy::Compatible);
        assert_eq!(
            run(&t, "2021-01-16T09:17:48-06:00").unwrap(),
            "2021-01-16T15:17:48Z"
        );
        assert_eq!(
            run(&t, "2021-01-16T15:17:48Z").unwrap(),
            "2021-01-16T15:17:48Z"
        );
        assert_eq!(
            run(&t, "2021-01-16T16:17:48.987+01:00").unwrap(),
            "2021-01-16T15:17:48Z"
        );
        assert!(run(&t, "2021-01-16T15:17:48")
            .unwrap_err()
            .contains("RFC 3339"));
        assert!(run(&t, "yesterday").is_err());
    }

    #[test]
    fn format_in_zone() {
        let ts: Timestamp = "2021-01-16T15:17:48Z".parse().unwrap();
        let chicago = TimeZone::get("America/Chicago").unwrap();
        assert_eq!(
            format_in(
                ts,
                &DateFormat::Strftime("%Y-%m-%d %H:%M:%S".into()),
                &chicago
            )
            .unwrap(),
            "2021-01-16 09:17:48"
        );
        assert_eq!(
            format_in(ts, &DateFormat::Rfc3339, &chicago).unwrap(),
            "2021-01-16T09:17:48-06:00"
        );
        assert_eq!(
            format_in(ts, &DateFormat::Rfc3339, &TimeZone::UTC).unwrap(),
            "2021-01-16T15:17:48Z"
        );
    }
}
