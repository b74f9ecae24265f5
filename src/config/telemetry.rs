//! `[telemetry]`: where traces go. Absent (or without `otlp_endpoint`) traces are off:
//! no exporter runs and no span is opened for them.

use super::validate::Validator;
use serde::Deserialize;

/// `[telemetry]` as written.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// The collector's OTLP/HTTP base URL (`http://collector:4318`); spans are POSTed
    /// to `<endpoint>/v1/traces`. Unset: traces are off.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of every span, how a trace back end groups them.
    pub service_name: String,
    /// The share of new traces recorded, 0.0 to 1.0. A trace the caller started
    /// (a `traceparent` it sent) follows the caller's own sampling decision.
    pub sample_ratio: f64,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        TelemetrySection {
            otlp_endpoint: None,
            service_name: "safepoint-gateway".into(),
            sample_ratio: 1.0,
        }
    }
}

/// Validated trace settings: present only when traces are on.
#[derive(Debug, Clone, PartialEq)]
pub struct Traces {
    /// The full URL spans are POSTed to (`.../v1/traces`).
    pub endpoint: url::Url,
    pub service_name: String,
    pub sample_ratio: f64,
}

impl TelemetrySection {
    /// The URL spans go to: the endpoint with `/v1/traces` appended, unless its path
    /// already ends so (as `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` would be written).
    fn traces_url(mut base: url::Url) -> url::Url {
        let path = base.path().trim_end_matches('/').to_string();
        if !path.ends_with("/v1/traces") {
            base.set_path(&format!("{path}/v1/traces"));
        }
        base
    }
}

impl Validator<'_> {
    /// Checks `[telemetry]`; `None` when traces are off (or the section is invalid,
    /// which is then among the problems).
    pub(super) fn telemetry(&mut self, t: &TelemetrySection) -> Option<Traces> {
        if t.service_name.trim().is_empty() {
            self.problem("telemetry.service_name", "must not be empty");
        }
        if !(t.sample_ratio.is_finite() && (0.0..=1.0).contains(&t.sample_ratio)) {
            self.problem(
                "telemetry.sample_ratio",
                format!("{} is not between 0.0 and 1.0", t.sample_ratio),
            );
        }
        let endpoint = t.otlp_endpoint.as_ref()?;
        let url = self.url("telemetry.otlp_endpoint", endpoint)?;
        if url.query().is_some() || url.fragment().is_some() {
            self.problem(
                "telemetry.otlp_endpoint",
                "must have no query or fragment: give the collector's base URL, such as http://otel-collector:4318",
            );
            return None;
        }
        Some(Traces {
            endpoint: TelemetrySection::traces_url(url),
            service_name: t.service_name.trim().to_string(),
            sample_ratio: t.sample_ratio.clamp(0.0, 1.0),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = r#"
[loomis]
url = "https://loomis.example/safepoint/incidents"
[callbacks]
auth = { type = "none" }
[[integrations]]
name = "servicenow"
customer_number = "A123456"
mapping = "mappings/servicenow.toml"
api_key_env = "KEY"
"#;

    fn parse(telemetry: &str) -> Result<Config, crate::config::ConfigError> {
        let env = |k: &str| (k == "KEY").then(|| "k".to_string());
        Config::parse(&format!("{BASE}{telemetry}"), "gateway.toml", false, &env)
    }

    #[test]
    fn traces_are_off_without_an_endpoint() {
        assert_eq!(parse("").unwrap().traces, None);
        assert_eq!(
            parse("[telemetry]\nsample_ratio = 0.5\n").unwrap().traces,
            None
        );
    }

    #[test]
    fn the_endpoint_is_the_collector_base_url() {
        for (written, used) in [
            ("http://collector:4318", "http://collector:4318/v1/traces"),
            ("http://collector:4318/", "http://collector:4318/v1/traces"),
            (
                "https://otel.bank.example/otlp",
                "https://otel.bank.example/otlp/v1/traces",
            ),
            (
                "http://collector:4318/v1/traces",
                "http://collector:4318/v1/traces",
            ),
        ] {
            let c = parse(&format!("[telemetry]\notlp_endpoint = \"{written}\"\n")).unwrap();
            let t = c.traces.expect("traces on");
            assert_eq!(t.endpoint.as_str(), used, "{written}");
            assert_eq!(t.service_name, "safepoint-gateway");
            assert_eq!(t.sample_ratio, 1.0);
        }
    }

    #[test]
    fn every_telemetry_problem_is_reported_at_once() {
        let e = parse(
            "[telemetry]\notlp_endpoint = \"grpc://collector:4317\"\nservice_name = \" \"\nsample_ratio = 1.5\n",
        )
        .unwrap_err();
        let all = e.problems.join("\n");
        assert!(all.contains("telemetry.otlp_endpoint: "), "{all}");
        assert!(
            all.contains("telemetry.service_name: must not be empty"),
            "{all}"
        );
        assert!(
            all.contains("telemetry.sample_ratio: 1.5 is not between"),
            "{all}"
        );
        let e = parse("[telemetry]\notlp_endpoint = \"http://u:p@collector:4318\"\n").unwrap_err();
        assert!(e.problems[0].contains("credentials in the URL"), "{e}");
        let e = parse("[telemetry]\nendpoint = \"http://collector:4318\"\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }
}
