//! The gateway's side of the deploy kit (deploy/), tested on the real thing:
//! - systemd `Type=notify`: the real binary, spawned with `NOTIFY_SOCKET` pointing at a
//!   datagram socket of the test, says `READY=1` once it serves, pings `WATCHDOG=1` when
//!   `WATCHDOG_USEC` asks for it, and `STOPPING=1` on SIGTERM;
//! - `safepoint-gateway probe` (the container's HEALTHCHECK) against a running gateway,
//!   an unknown route, a closed port and a listener that never answers;
//! - every metric that the Grafana dashboard and the Prometheus alert rules name exists in
//!   the `/metrics` of a gateway that has carried an incident through.

mod common;

use common::{scrape, sn_xml, Harness, Options, SN_KEY, WAIT};
use safepoint_gateway::edge::grpc::proto::incident_gateway_client::IncidentGatewayClient;
use safepoint_gateway::edge::grpc::proto::WatchUpdatesRequest;
use safepoint_gateway::incident::State;
use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;
use tokio_stream::StreamExt;

const BIN: &str = env!("CARGO_BIN_EXE_safepoint-gateway");
const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

// ---- systemd notifications -----------------------------------------------------------

/// Reads notification datagrams until one contains `line`; returns that datagram.
async fn expect_notification(sock: &tokio::net::UnixDatagram, line: &str) -> String {
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(WAIT, async {
        loop {
            let n = sock.recv(&mut buf).await.unwrap();
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.lines().any(|l| l == line) {
                return msg;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {line} notification within {WAIT:?}"))
}

#[tokio::test]
async fn under_systemd_the_gateway_notifies_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        common::config_text(dir.path(), &Options::default()),
    )
    .unwrap();
    let socket_path = dir.path().join("notify.sock");
    let sock = tokio::net::UnixDatagram::bind(&socket_path).unwrap();

    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .envs(
            ["SN_KEY", "INTERNAL_KEY", "CB_TOKEN", "ADMIN_TOKEN"]
                .map(|k| (k, common::env(k).unwrap())),
        )
        .env("NOTIFY_SOCKET", &socket_path)
        // 200 ms: the gateway pings every 100 ms.
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // The log, line by line.
    let (log_tx, mut log) = tokio::sync::mpsc::unbounded_channel();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = log_tx.send(line);
        }
    });

    let ready = expect_notification(&sock, "READY=1").await;
    // READY=1 comes once the listeners are bound and the store is open: /readyz answers
    // 200 at once, on the address the status line names.
    let http = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS=serving: http "))
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no http address in {ready:?}"))
        .to_string();
    let resp = reqwest::get(format!("http://{http}/readyz")).await.unwrap();
    assert_eq!(resp.status(), 200);

    expect_notification(&sock, "WATCHDOG=1").await;
    // And again: pings go on, not just once.
    expect_notification(&sock, "WATCHDOG=1").await;

    // `systemctl reload` (ExecReload sends SIGHUP) leaves the gateway serving.
    let pid = child.id().unwrap().to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    tokio::time::timeout(WAIT, async {
        while let Some(line) = log.recv().await {
            if line.contains("SIGHUP: reloading the configuration") {
                return;
            }
        }
        panic!("the gateway's log ended before it noted the SIGHUP");
    })
    .await
    .expect("SIGHUP noted in the log");
    expect_notification(&sock, "RELOADING=1").await;
    expect_notification(&sock, "READY=1").await;
    expect_notification(&sock, "WATCHDOG=1").await;
    let resp = reqwest::get(format!("http://{http}/readyz")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP ended the gateway"
    );

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    expect_notification(&sock, "STOPPING=1").await;
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("the gateway exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

// ---- probe ------------------------------------------------------------------------------

/// Runs `safepoint-gateway probe ARGS`: (exit code, stdout, stderr).
async fn probe(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(BIN)
        .arg("probe")
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn probe_exits_0_on_a_ready_gateway_and_1_with_the_reason_otherwise() {
    let h = Harness::start(Options::default()).await;
    let ready = format!("{}/readyz", h.base());
    let (code, out, err) = probe(&["--url", &ready]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), format!("ok: {ready} answered 200 OK"));

    let unknown = format!("{}/no-such-route", h.base());
    let (code, out, err) = probe(&["--url", &unknown, "--timeout", "2s"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.starts_with(&format!("unhealthy: {unknown}: HTTP 404")),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    h.stop().await;
}

#[tokio::test]
async fn probe_of_a_closed_port_fails_with_connection_refused() {
    // A port nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let (code, out, err) = probe(&["--url", &url]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.starts_with(&format!("unhealthy: {url}: ")), "{err}");
    assert!(err.contains("Connection refused"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[tokio::test]
async fn probe_gives_up_at_its_timeout() {
    // Accepts connections and never answers.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/readyz", l.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        loop {
            conns.push(l.accept().await.unwrap());
        }
    });
    let started = std::time::Instant::now();
    let (code, out, err) = probe(&["--url", &url, "--timeout", "300ms"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("no answer within 300ms"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    held.abort();
}

#[test]
fn probe_refuses_a_bad_timeout_as_a_usage_error() {
    let out = std::process::Command::new(BIN)
        .args(["probe", "--timeout", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

// ---- metrics used by the dashboard and the alert rules ----------------------------------

/// Words of PromQL that are not metric names: the aggregation operators (which may be
/// followed by `by (...)` rather than by their parenthesis) and the other keywords.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
];
/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// Series that Prometheus itself makes for every scrape target.
const SCRAPE_SERIES: &[&str] = &["up", "scrape_duration_seconds", "scrape_samples_scraped"];

/// The metric names in one PromQL expression, read loosely: identifiers outside strings,
/// label matchers `{...}`, label lists (`by (...)`) and Grafana variables (`$x`), that are
/// not keywords and not called as functions.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_to = |mut i: usize, close: char| {
        let mut quote = None;
        while i < chars.len() {
            let c = chars[i];
            match quote {
                Some(_) if c == '\\' => i += 1,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == close => return i + 1,
                None if c == '"' || c == '\'' || c == '`' => quote = Some(c),
                None => {}
            }
            i += 1;
        }
        i
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            // A string: skip to its closing quote.
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '{' {
            i = skip_to(i + 1, '}');
        } else if c == '[' {
            i = skip_to(i + 1, ']');
        } else if c == '$' || c.is_ascii_digit() {
            // A Grafana variable, or a number or duration.
            i += 1;
            while i < chars.len() && (ident(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else if ident(c) {
            let start = i;
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if chars.get(next) == Some(&'(') {
                    i = skip_to(next + 1, ')');
                }
            } else if KEYWORDS.contains(&lower.as_str()) || chars.get(next) == Some(&'(') {
                // A keyword, or a function call.
            } else {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn metric_names_are_read_from_promql_without_functions_labels_or_keywords() {
    let expr = r#"sum by (integration, result) (rate(gateway_a_total{result=~"dead|retry", x="}"}[$__rate_interval]))
      / on() group_left sum without(kind) (increase(gateway_b_seconds_count[5m] offset 1h)) > bool 0.5
      and histogram_quantile(0.99, gateway_c_bucket) or vector(0) unless gateway_d:ratio"#;
    assert_eq!(
        metric_names(expr).into_iter().collect::<Vec<_>>(),
        [
            "gateway_a_total",
            "gateway_b_seconds_count",
            "gateway_c_bucket",
            "gateway_d:ratio"
        ]
    );
    assert!(metric_names("sum(rate(x{a=\"b\"}[1m])) by (le)").contains("x"));
    assert_eq!(metric_names("time() - 3").len(), 0);
}

/// Every `expr` of the alert rules file: inline (`expr: ...`) or a block (`expr: |`).
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut out = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some(at) = line.find("expr:") else {
            continue;
        };
        if !line[..at].trim().trim_start_matches('-').trim().is_empty() {
            continue;
        }
        let rest = line[at + 5..].trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let indent = line.len() - line.trim_start().len();
            let block: Vec<&str> = lines[n + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .copied()
                .collect();
            out.push(block.join("\n"));
        } else {
            out.push(rest.trim_matches(|c| c == '"' || c == '\'').to_string());
        }
    }
    out
}

/// Every `expr` string anywhere in the dashboard JSON (panel targets).
fn dashboard_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => dashboard_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// The names of the samples in a Prometheus text exposition (`name{...} value`).
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn every_metric_in_the_dashboard_and_the_alert_rules_is_in_metrics() {
    // A tool receiver that takes every update, so the tool-delivery series exist.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let delivery_url = format!("http://{}/updates", l.local_addr().unwrap());
    let app = axum::Router::new().route("/updates", axum::routing::post(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    let h = Harness::start(Options {
        delivery_url: Some(delivery_url),
        ..Options::default()
    })
    .await;

    // One incident through its whole life: Dispatch, ACK, Accept, Close, three posts.
    let (status, body) = h.create(&sn_xml("DK1001", "UG1234", "AC12")).await;
    assert_eq!(status, 202, "{body}");
    h.wait_state("DK1001", State::Closed).await;
    // One of each refusal the dashboard shows: malformed XML, an incident the mapping
    // refuses, a callback without the right token.
    let (status, body) = h.create("<incident><number>").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = h.create(&sn_xml("DK1002", "", "AC12")).await;
    assert_eq!(status, 422, "{body}");
    let refused = h
        .client
        .post(h.callback_url())
        .bearer_auth("not-the-token")
        .json(&serde_json::json!({"MessageType": "ACK"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    // A WatchUpdates stream that reads the incident's updates (stream lag).
    let mut client = IncidentGatewayClient::connect(format!("http://{}", h.running().grpc_addr))
        .await
        .unwrap();
    let mut req = tonic::Request::new(WatchUpdatesRequest {
        integration: "servicenow".into(),
        after_sequence: 0,
    });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {SN_KEY}").parse().unwrap());
    let mut stream = client.watch_updates(req).await.unwrap().into_inner();
    for _ in 0..3 {
        tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("an update")
            .expect("not the end")
            .unwrap();
    }
    common::eventually("three tool posts counted", || async {
        h.counted(
            "gateway_tool_posts_total",
            &[("integration", "servicenow"), ("result", "ok")],
        )
        .await
        .then_some(())
    })
    .await;

    let text = scrape(&h.client, &h.base()).await;
    let have = exposed(&text);

    let rules = std::fs::read_to_string(format!("{DEPLOY}/prometheus/alerts.yaml")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{DEPLOY}/grafana/safepoint-gateway.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = rule_exprs(&rules);
    let n_rules = exprs.len();
    dashboard_exprs(&dashboard, &mut exprs);
    assert!(n_rules >= 6, "only {n_rules} rule expressions read");
    assert!(exprs.len() >= n_rules + 8, "too few dashboard expressions");

    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    for e in &exprs {
        let names = metric_names(e);
        assert!(!names.is_empty(), "no metric read from {e:?}");
        for name in names {
            if !have.contains(&name) && !SCRAPE_SERIES.contains(&name.as_str()) {
                missing.push(format!("{name} (in {e:?})"));
            }
            // A histogram is read through its `_bucket` (or `_sum`/`_count`) series.
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(&name)
                .to_string();
            used.insert(base);
            used.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "not in /metrics:\n{}\n\n/metrics:\n{text}",
        missing.join("\n")
    );
    // The issue's alerts each read their series.
    for series in [
        "gateway_outbox_pending",
        "gateway_tool_posts_total",
        "gateway_loomis_requests_total",
        "gateway_grpc_stream_lag_seconds",
        "gateway_config_reload_failures_total",
        "gateway_store_flush_seconds",
    ] {
        assert!(used.contains(series), "no rule or panel reads {series}");
    }
    // The series that the deploy kit added carry HELP text.
    for help in [
        "# HELP gateway_config_reload_failures_total ",
        "# HELP gateway_grpc_stream_lag_seconds ",
    ] {
        assert!(text.contains(help), "{help} missing");
    }
    h.stop().await;
}

// ---- the configurations shipped in deploy/ ---------------------------------------------

/// The block scalar `key: |` of a ConfigMap's `data`, without its indentation.
fn configmap_entry(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| *l != format!("  {key}: |"));
    assert!(lines.next().is_some(), "no {key} in the ConfigMap");
    let mut out = String::new();
    for l in lines {
        if !l.trim().is_empty() && !l.starts_with("    ") {
            break;
        }
        out.push_str(l.strip_prefix("    ").unwrap_or(""));
        out.push('\n');
    }
    // A `|` block keeps exactly one final newline.
    format!("{}\n", out.trim_end_matches('\n'))
}

/// Splits the `[store]` table out of a gateway.toml: (the file with an embedded store
/// in its place, the store table's lines).
fn without_store(text: &str, path: &std::path::Path) -> (String, Vec<String>) {
    let mut rest = String::new();
    let mut store = Vec::new();
    let mut in_store = false;
    for l in text.lines() {
        if l.starts_with('[') {
            in_store = l.trim() == "[store]";
            if in_store {
                rest.push_str(&format!("[store]\npath = {:?}\n", path.display()));
                continue;
            }
        }
        if in_store {
            if !l.trim().is_empty() && !l.trim_start().starts_with('#') {
                store.push(l.trim().to_string());
            }
        } else {
            rest.push_str(l);
            rest.push('\n');
        }
    }
    (rest, store)
}

/// Loads a shipped gateway.toml as the gateway would at start (every key, every mapping),
/// with the image's paths pointed at this repository and a temp store; every variable a
/// `*_env` key names is set.
fn load_shipped(origin: &str, text: &str, store: &std::path::Path) {
    let text = text
        .replace(
            "/etc/safepoint-gateway/mappings/",
            concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/"),
        )
        .replace("\"/data\"", &format!("{:?}", store.display()));
    let env = |_: &str| Some("a-secret-value-for-the-test".to_string());
    let config = safepoint_gateway::config::Config::parse(&text, origin, false, &env)
        .unwrap_or_else(|e| panic!("{e}"));
    safepoint_gateway::app::load_integrations(&config).unwrap_or_else(|e| panic!("{origin}: {e}"));
}

#[test]
fn the_shipped_configurations_load_and_the_configmaps_carry_the_current_mappings() {
    let dir = tempfile::tempdir().unwrap();
    let read = |p: &str| std::fs::read_to_string(format!("{DEPLOY}/{p}")).unwrap();
    load_shipped(
        "compose/gateway.toml",
        &read("compose/gateway.toml"),
        dir.path(),
    );
    let single = read("k8s/single/configmap.yaml");
    load_shipped(
        "k8s/single gateway.toml",
        &configmap_entry(&single, "gateway.toml"),
        dir.path(),
    );
    // The PostgreSQL store engine is not in this build yet: the rest of these files is
    // loaded with an embedded store, and their [store] tables hold the documented keys.
    let cluster = read("k8s/cluster/configmap.yaml");
    for (origin, text, host) in [
        (
            "k8s/cluster gateway.toml",
            configmap_entry(&cluster, "gateway.toml"),
            "db",
        ),
        (
            "compose/gateway.postgres.toml",
            read("compose/gateway.postgres.toml"),
            "postgres",
        ),
    ] {
        let (rest, store) = without_store(&text, dir.path());
        load_shipped(origin, &rest, dir.path());
        assert!(
            store.contains(&"engine = \"postgres\"".to_string()),
            "{origin}: {store:?}"
        );
        assert!(
            store.contains(&format!("url = \"postgres://gateway@{host}:5432/gateway\"")),
            "{origin}: {store:?}"
        );
        assert!(
            store.contains(&"password_env = \"GATEWAY_PG_PASSWORD\"".to_string()),
            "{origin}: {store:?}"
        );
    }
    for yaml in [&single, &cluster] {
        for m in ["servicenow.toml", "remedy.toml", "internal-grpc.toml"] {
            let file =
                std::fs::read_to_string(format!("{}/mappings/{m}", env!("CARGO_MANIFEST_DIR")))
                    .unwrap();
            assert!(
                configmap_entry(yaml, m) == file,
                "the ConfigMap's {m} differs from mappings/{m}: copy it again"
            );
        }
    }
}
