//! What an operator sees of a running gateway without raising the log level: a line at
//! `info` for every refused request (with its reason, never the body or a credential),
//! and `/metrics` with a HELP for every series, histograms with buckets, the build and
//! the dead letters. Own test binary: it installs the process-wide subscriber.

mod common;

use common::*;
use std::io::Write;
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// The subscriber of this test binary, installed once.
fn captured() -> Captured {
    static OUT: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    OUT.get_or_init(|| {
        let out = Captured::default();
        let writer = out.clone();
        tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        out
    })
    .clone()
}

const CREATE: &str = "/v1/integrations/servicenow/incidents";

#[tokio::test]
async fn every_refused_request_leaves_one_info_line_with_its_reason() {
    let out = captured();
    let h = Harness::start(Options::default()).await;
    let secret = "wrong-key-that-must-not-be-logged";
    let xml = sn_xml("INCREFUSED1", "UG1234", "AC12");
    let cases = [
        (
            h.post(CREATE, Some(secret), Some("application/xml"), xml.clone())
                .await,
            401,
            "Unauthorized",
        ),
        (
            h.post(CREATE, Some(SN_KEY), Some("text/plain"), xml.clone())
                .await,
            415,
            "UnsupportedMediaType",
        ),
        (
            h.post(CREATE, Some(SN_KEY), Some("application/xml"), "<incident>")
                .await,
            400,
            "MalformedXml",
        ),
        (
            h.post(
                CREATE,
                Some(SN_KEY),
                Some("application/xml"),
                "<incident><number>INCREFUSED2</number></incident>",
            )
            .await,
            422,
            "ValidationFailed",
        ),
    ];
    for (reply, status, _) in &cases {
        assert_eq!(reply.status, *status, "{}", reply.body);
    }
    h.stop().await;
    let text = out.text();
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request refused"))
        .collect();
    for (_, status, code) in &cases {
        let line = refused
            .iter()
            .find(|l| l.contains(&format!("status={status}")))
            .unwrap_or_else(|| panic!("no line for {status}:\n{text}"));
        assert!(line.contains(" INFO "), "{line}");
        assert!(line.contains("method=POST"), "{line}");
        assert!(
            line.contains("route=\"/v1/integrations/{name}/incidents\""),
            "{line}"
        );
        assert!(line.contains("integration=\"servicenow\""), "{line}");
        assert!(line.contains(&format!("code=\"{code}\"")), "{line}");
    }
    let invalid = refused.iter().find(|l| l.contains("status=422")).unwrap();
    assert!(
        invalid.contains("fields=\"") && invalid.contains("DeviceId"),
        "{invalid}"
    );
    assert!(!text.contains(secret), "a credential was logged:\n{text}");
    // The refused bodies' text (sn_xml's description) appears nowhere.
    assert!(
        !text.contains("Cannot open the door"),
        "a body was logged:\n{text}"
    );
}

#[tokio::test]
async fn metrics_describe_every_series_and_render_histograms() {
    captured();
    let h = Harness::start(Options::default()).await;
    let (status, body) = h.create(&sn_xml("INCMETRICS1", "UG1234", "AC12")).await;
    assert_eq!(status, 202, "{body}");
    h.wait_state("INCMETRICS1", safepoint_gateway::incident::State::Closed)
        .await;
    let text = h.get("/metrics", None).await.body;
    h.stop().await;
    assert!(!text.contains("summary"), "{text}");
    assert!(
        text.contains(&format!(
            "gateway_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(text.contains("\ngateway_dead_letters 0\n"), "{text}");
    assert!(text.contains("gateway_store_healthy 1"), "{text}");
    for histogram in [
        "gateway_store_flush_seconds",
        "gateway_loomis_request_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {histogram} histogram")),
            "{histogram}:\n{text}"
        );
        assert!(text.contains(&format!("{histogram}_bucket{{")), "{text}");
    }
    let mut types = 0;
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        types += 1;
        let name = line.split(' ').nth(2).unwrap();
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} has no HELP:\n{text}"
        );
    }
    assert!(types > 5, "{text}");
}
