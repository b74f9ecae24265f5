//! A full disk, for real: the gateway's store on a 4 MiB tmpfs, filled up by another
//! file until intake answers 503. Freeing the space must bring intake back without a
//! restart, lose nothing acknowledged, and a stop while the disk is still full must say
//! why it could not flush. Needs permission to mount (root in a container); without it
//! the test is skipped with a note, unless `CI` is set.

mod common;

use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(dir.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a store handle the test leaked must not leave the mount behind.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `path` with a file there, to the last byte it takes.
fn fill(path: &Path) -> std::fs::File {
    let mut f = std::fs::File::create(path).unwrap();
    for chunk in [64 << 10, 4 << 10, 512, 1] {
        let buf = vec![0xa5u8; chunk];
        while f.write_all(&buf).is_ok() {}
    }
    let _ = f.sync_all();
    f
}

async fn ready(h: &reqwest::Client, base: &str) -> (u16, serde_json::Value) {
    let r = h.get(format!("{base}/readyz")).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn metric(client: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let text = scrape(client, base).await;
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The test gateway's configuration with its store on `engine`.
fn config(dir: &Path, engine: &str) -> safepoint_gateway::config::Config {
    let text = config_text(dir, &Options::default())
        .replace("[store]\n", &format!("[store]\nengine = \"{engine}\"\n"));
    safepoint_gateway::config::Config::parse(&text, "test", false, &env).unwrap()
}

/// Starts the gateway, waiting while a stopped one's abandoned tasks still hold the
/// engine (and its directory lock) for a moment.
async fn start(config: safepoint_gateway::config::Config) -> safepoint_gateway::app::Running {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match safepoint_gateway::app::start(config.clone()).await {
            Ok(r) => return r,
            Err(e) if Instant::now() < deadline && e.to_string().contains("in use") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("start: {e:#}"),
        }
    }
}

/// Both engines, one after the other: the metrics the test reads are process-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_comes_back_by_itself_once_the_full_disk_has_room_again() {
    for engine in ["fjall", "sled"] {
        full_disk(engine).await;
    }
}

async fn full_disk(engine: &str) {
    let dir = tempfile::tempdir().unwrap();
    let _mount = match Tmpfs::mount(dir.path(), "4m") {
        Ok(m) => m,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "skipped: cannot mount a tmpfs to fill ({e}); run as root to test a full disk"
            );
            return;
        }
        Err(e) => panic!("CI must be able to mount a tmpfs for the full-disk test: {e}"),
    };
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init();
    let config = config(dir.path(), engine);
    let running = start(config.clone()).await;
    let base = format!("http://{}", running.http_addr);
    let client = reqwest::Client::new();
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let reference = format!("FULL{i:04}");
        let (status, body) = post_sn(&client, &base, &reference).await;
        assert_eq!(status, 202, "{body}");
        acknowledged.push(reference);
    }

    // Fill the disk, then send until the store refuses (the journal's last pages may
    // still take a few batches).
    let filler = dir.path().join("filler");
    let filled = fill(&filler);
    let mut refused = None;
    for i in 5..5000 {
        let reference = format!("FULL{i:04}");
        match post_sn(&client, &base, &reference).await {
            (202, _) => acknowledged.push(reference),
            (503, body) => {
                refused = Some((reference, body));
                break;
            }
            (status, body) => panic!("{reference}: {status} {body}"),
        }
    }
    let (refused, body) = refused.expect("a full disk must make intake answer 503");
    assert!(body.contains("StoreUnavailable"), "{body}");
    let (status, readiness) = ready(&client, &base).await;
    assert_eq!(status, 503, "{readiness}");
    assert_eq!(readiness["store"], "failing", "{readiness}");
    assert!(
        readiness["reason"]
            .as_str()
            .is_some_and(|r| r.contains("No space left")),
        "readiness names the cause: {readiness}"
    );
    assert_eq!(
        metric(&client, &base, "gateway_store_healthy").await,
        Some(0.0)
    );
    // An attempt to recover (a write at least a second later) finds no room yet: the
    // store knows it waits for space, which a restart (liveness) would not mend.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !running.gateway.store().is_waiting_for_room() {
        assert!(
            Instant::now() < deadline,
            "never found the disk full: {:?}",
            running.gateway.store().failure()
        );
        let (status, body) = post_sn(&client, &base, &refused).await;
        assert_eq!(status, 503, "{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Room again: intake recovers without a restart.
    drop(filled);
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match post_sn(&client, &base, &refused).await {
            // 200: the batch answered 503 reached the disk after all (same receipt).
            (202 | 200, _) => break,
            (503, body) => {
                assert!(
                    Instant::now() < deadline,
                    "intake did not come back within 30 s of freeing the disk: {body}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (status, body) => panic!("{refused}: {status} {body}"),
        }
    }
    acknowledged.push(refused);
    let (status, readiness) = ready(&client, &base).await;
    assert_eq!(status, 200, "{readiness}");
    assert_eq!(
        metric(&client, &base, "gateway_store_healthy").await,
        Some(1.0)
    );
    for reference in ["FULLAFTER1", "FULLAFTER2"] {
        let (status, body) = post_sn(&client, &base, reference).await;
        assert_eq!(status, 202, "{body}");
        acknowledged.push(reference.to_string());
    }
    // Nothing acknowledged was lost, and deliveries go on (the simulator closes each).
    for reference in &acknowledged {
        assert!(
            running
                .gateway
                .get("servicenow", reference)
                .unwrap()
                .is_some(),
            "{reference} was acknowledged and is gone"
        );
    }
    let last = acknowledged.last().unwrap().clone();
    let deadline = Instant::now() + WAIT;
    while running
        .gateway
        .get("servicenow", &last)
        .unwrap()
        .is_none_or(|i| !i.state.is_terminal())
    {
        assert!(Instant::now() < deadline, "{last} was not delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Full again, and stopped while full: the stop fails and says why.
    let filled = fill(&filler);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    while post_sn(&client, &base, &format!("FULLAGAIN{i:04}")).await.0 != 503 {
        i += 1;
        assert!(Instant::now() < deadline, "intake never refused");
    }
    let err = running
        .stop()
        .await
        .expect_err("a store that cannot flush fails the stop")
        .to_string();
    assert!(
        err.contains("No space left"),
        "the stop names the cause: {err}"
    );
    drop(filled);
    std::fs::remove_file(&filler).unwrap();

    // A restart finds everything acknowledged.
    let running = start(config).await;
    for reference in &acknowledged {
        assert!(
            running
                .gateway
                .get("servicenow", reference)
                .unwrap()
                .is_some(),
            "{reference} lost across the restart"
        );
    }
    running.stop().await.unwrap();
}
