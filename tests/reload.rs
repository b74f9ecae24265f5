//! Live reload of configuration and mappings: by `app::reload` (what SIGHUP and the admin
//! route call), by `POST /v1/admin/reload`, and by SIGHUP to a real gateway process.
//! Under a steady load every acknowledged incident arrives, a broken mapping written
//! mid-run changes nothing, and settings that need a restart are refused as such.

mod common;

use common::*;
use safepoint_gateway::app::{self, ConfigSource, ReloadError, Running};
use safepoint_gateway::config::Config;
use safepoint_gateway::incident::State;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The test configuration with servicenow's mapping (and its golden fixtures, which a
/// reload runs like `mapping check`) copied to `dir`, so the test can rewrite it;
/// returns the config and mapping paths.
fn write_config(dir: &Path) -> (PathBuf, PathBuf) {
    let manifest = env!("CARGO_MANIFEST_DIR");
    let mapping = dir.join("servicenow.toml");
    std::fs::copy(format!("{manifest}/mappings/servicenow.toml"), &mapping).unwrap();
    let fixtures = dir.join("fixtures/servicenow");
    std::fs::create_dir_all(&fixtures).unwrap();
    for f in std::fs::read_dir(format!("{manifest}/mappings/fixtures/servicenow")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, fixtures.join(f.file_name().unwrap())).unwrap();
    }
    let text = config_text(dir, &Options::default()).replace(
        &format!("{manifest}/mappings/servicenow.toml"),
        &mapping.display().to_string(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    (path, mapping)
}

async fn start(path: &Path) -> Running {
    let config = Config::from_file(path, &env).unwrap_or_else(|e| panic!("{e}"));
    app::start_from(
        config,
        ConfigSource {
            path: Some(path.to_path_buf()),
            env: Arc::new(env),
        },
    )
    .await
    .expect("gateway starts")
}

/// The version note on an incident's first timeline entry.
fn mapped_by(running: &Running, reference: &str) -> String {
    let inc = running
        .gateway
        .get("servicenow", reference)
        .unwrap()
        .expect("stored");
    let detail = &inc.timeline[0].detail;
    detail
        .split("mapped by ")
        .nth(1)
        .unwrap_or_else(|| panic!("no mapping version in {detail:?}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_nothing_and_a_broken_mapping_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mapping) = write_config(dir.path());
    let running = Arc::new(start(&path).await);
    let base = format!("http://{}", running.http_addr);
    let good = std::fs::read_to_string(&mapping).unwrap();

    // A steady load: two senders, each posting incidents one after another until told
    // to stop; every 202 is remembered.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut senders = Vec::new();
    for sender in 0..2 {
        let (base, stop) = (base.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acked = Vec::new();
            let mut i = 0;
            while !stop.is_cancelled() {
                let reference = format!("RL{sender}-{i}");
                let r = client
                    .post(format!("{base}/v1/integrations/servicenow/incidents"))
                    .bearer_auth(SN_KEY)
                    .header("content-type", "application/xml")
                    .body(sn_xml(&reference, "UG1234", "AC12"))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                assert_eq!(status, 202, "{}", r.text().await.unwrap());
                acked.push(reference);
                i += 1;
            }
            acked
        }));
    }

    // Reloads while the load runs: unchanged, then a changed (valid) mapping.
    for _ in 0..5 {
        app::reload(&running).await.expect("reload");
    }
    let version_1 = app::reload(&running).await.unwrap();
    std::fs::write(&mapping, format!("{good}\n# revision 2\n")).unwrap();
    let version_2 = app::reload(&running).await.unwrap();
    assert_eq!(version_2.generation, version_1.generation + 1);
    assert_ne!(version_2.mapping_digest, version_1.mapping_digest);

    // A broken mapping mid-run: refused, the running version keeps serving.
    std::fs::write(
        &mapping,
        good.replace("[dispatch.DeviceId]", "[dispatch.DeviceId\n"),
    )
    .unwrap();
    for _ in 0..3 {
        let err = app::reload(&running).await.unwrap_err();
        assert!(matches!(err, ReloadError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("servicenow.toml"), "{err}");
    }
    // Through the admin route too: 422, with the problems, and nothing changed.
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/v1/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ReloadInvalid", "{body}");
    assert!(body["error"]["problems"][0]
        .as_str()
        .unwrap()
        .contains("servicenow.toml"));
    let (s, b) = post_sn(&client, &base, "RL-BROKEN").await;
    assert_eq!(s, 202, "{b}");
    let during_broken = mapped_by(&running, "RL-BROKEN");
    assert!(
        during_broken.contains(&format!(
            "configuration generation {}",
            version_2.generation
        )),
        "{during_broken}"
    );
    let status: serde_json::Value = client
        .get(format!("{base}/v1/admin/config"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["generation"], version_2.generation, "{status}");
    assert_eq!(status["mapping_digest"], version_2.mapping_digest);

    // Fixed again: the admin route puts it in force.
    std::fs::write(&mapping, &good).unwrap();
    let r = client
        .post(format!("{base}/v1/admin/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["reloaded"]["generation"],
        version_2.generation + 1,
        "{body}"
    );
    let metrics = scrape(&client, &base).await;
    for name in [
        "gateway_config_generation",
        "gateway_config_reloads_total",
        "gateway_config_reload_failures_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }

    stop.cancel();
    let mut acked = vec!["RL-BROKEN".to_string()];
    for s in senders {
        acked.extend(s.await.unwrap());
    }
    assert!(acked.len() > 2, "the load ran: {}", acked.len());

    // Every acknowledged incident arrives at Loomis and runs to its end (ACK, Accept,
    // Close: three updates each).
    let n = acked.len() as u64;
    let mut seq = running.gateway.store().watch_sequence("servicenow");
    tokio::time::timeout(Duration::from_secs(60), seq.wait_for(|s| *s >= 3 * n))
        .await
        .unwrap_or_else(|_| panic!("not every incident of {n} reached Loomis"))
        .unwrap();
    for reference in &acked {
        let inc = running
            .gateway
            .get("servicenow", reference)
            .unwrap()
            .unwrap_or_else(|| panic!("{reference} acknowledged but not stored"));
        assert_eq!(inc.state, State::Closed, "{reference}");
        assert!(inc.incident_id.is_some(), "{reference}");
    }
    Arc::into_inner(running).unwrap().stop().await.unwrap();
}

#[tokio::test]
async fn settings_that_need_a_restart_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = write_config(dir.path());
    let running = start(&path).await;
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text
        .replace(
            "http_listen = \"127.0.0.1:0\"",
            "http_listen = \"127.0.0.1:1\"",
        )
        .replace(
            &format!("path = \"{}\"", dir.path().join("data").display()),
            &format!("path = \"{}\"", dir.path().join("elsewhere").display()),
        );
    assert_ne!(changed, text);
    std::fs::write(&path, &changed).unwrap();
    let err = app::reload(&running).await.unwrap_err();
    let ReloadError::RestartNeeded(problems) = &err else {
        panic!("{err}")
    };
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("server.http_listen") && p.ends_with("restart needed")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("store.path")),
        "{problems:?}"
    );
    // Over the admin route: 409 with the same list.
    let r = reqwest::Client::new()
        .post(format!("http://{}/v1/admin/reload", running.http_addr))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "RestartNeeded", "{body}");

    // An unknown key is refused with its location, as at start.
    std::fs::write(&path, text.replace("[store]", "[store]\nbogus = 1")).unwrap();
    let err = app::reload(&running).await.unwrap_err();
    assert!(err.to_string().contains("bogus"), "{err}");
    running.stop().await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn sighup_reloads_a_running_process() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mapping) = write_config(dir.path());
    let port = free_port();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "http_listen = \"127.0.0.1:0\"",
        &format!("http_listen = \"127.0.0.1:{port}\""),
    ) + "\n[log]\nlevel = \"error\"\n";
    std::fs::write(&path, text).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_safepoint-gateway"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("SN_KEY", SN_KEY)
        .env("INTERNAL_KEY", INTERNAL_KEY)
        .env("CB_TOKEN", CB_TOKEN)
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn gateway");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let generation = || async {
        let r = client
            .get(format!("{base}/v1/admin/config"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .ok()?;
        let v: serde_json::Value = r.json().await.ok()?;
        v["generation"].as_u64()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while generation().await != Some(1) {
        assert!(tokio::time::Instant::now() < deadline, "gateway not up");
        // Process start-up has no event to await from here; poll.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(
        &mapping,
        std::fs::read_to_string(&mapping).unwrap() + "\n# rev\n",
    )
    .unwrap();
    let pid = child.id().unwrap().to_string();
    let hup = tokio::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await
        .unwrap();
    assert!(hup.success());
    while generation().await != Some(2) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        // The reload happens in the process; its outcome is seen by polling status.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let term = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(term.success());
    assert!(child.wait().await.unwrap().success());
}
