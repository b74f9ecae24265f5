//! Log lines of concurrent deliveries: each names its own incident, once. (A span entered
//! on a thread across an await leaks into every later line of that thread: lines grew to
//! hundreds of KiB and cost most of the gateway's CPU at `info`.) Own test binary: it
//! installs the process-wide subscriber.

mod common;

use common::*;
use safepoint_gateway::incident::State;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_delivery_line_carries_its_own_span_once() {
    let out = Captured::default();
    let writer = out.clone();
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();
    let h = Harness::start(Options::default()).await;
    let refs: Vec<String> = (0..40).map(|i| format!("INCLOG{i:03}")).collect();
    let creates = refs.iter().map(|r| {
        let xml = sn_xml(r, "UG1234", "AC12");
        let h = &h;
        async move { h.create(&xml).await }
    });
    for (status, body) in futures::future::join_all(creates).await {
        assert_eq!(status, 202, "{body}");
    }
    for r in &refs {
        h.wait_for(r, "past Queued", |i| i.state != State::Queued)
            .await;
    }
    h.stop().await;
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let delivered: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("delivered to Loomis"))
        .collect();
    assert_eq!(
        delivered.len(),
        refs.len(),
        "one line per Dispatch:\n{text}"
    );
    for line in delivered {
        assert_eq!(line.matches("deliver{").count(), 1, "{line}");
        assert!(line.len() < 1000, "{line}");
    }
}
