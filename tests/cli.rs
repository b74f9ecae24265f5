//! The operator commands run as a user would run them: the real binary, its exit code and
//! what it prints.

use std::process::Command;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_safepoint-gateway"))
}

#[test]
fn dead_letters_against_no_gateway_says_where_it_looked_and_how_to_point_it() {
    // A port nothing listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = gateway()
        .args(["dead-letters", "list", "--url"])
        .arg(format!("http://127.0.0.1:{port}"))
        .env("GATEWAY_ADMIN_TOKEN", "t")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{port}/v1/admin/dead-letters")),
        "{err}"
    );
    assert!(err.contains("Connection refused"), "{err}");
    assert!(err.contains("--url sets its HTTP address"), "{err}");
}

#[test]
fn dead_letters_without_the_token_names_the_variable() {
    let out = gateway()
        .args([
            "dead-letters",
            "list",
            "--token-env",
            "NO_SUCH_TOKEN_VARIABLE",
        ])
        .env_remove("NO_SUCH_TOKEN_VARIABLE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("set NO_SUCH_TOKEN_VARIABLE to the gateway's admin token"),
        "{err}"
    );
}

#[test]
fn serve_reports_every_configuration_problem_before_opening_anything() {
    // A mapping that does not compile and a simulator option that does not exist: both are
    // named in one run, and the store directory is never created (nothing was opened).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.toml"), "this is not = = toml\n").unwrap();
    let store = dir.path().join("data");
    let config = format!(
        r#"
[server]
http_listen = "127.0.0.1:0"
grpc_listen = "127.0.0.1:0"

[store]
path = "{store}"

[loomis]
url = "simulator"

[simulator]
ack = "sometimes"

[callbacks]
auth = {{ type = "none" }}

[[integrations]]
name = "tool"
customer_number = "A123456"
mapping = "{mapping}"
api_key_env = "TOOL_API_KEY"
"#,
        store = store.display(),
        mapping = dir.path().join("broken.toml").display(),
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, config).unwrap();
    let out = gateway()
        .args(["serve", "--config"])
        .arg(&path)
        .env("TOOL_API_KEY", "k")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.toml"), "{err}");
    assert!(err.contains("simulator.ack"), "{err}");
    assert!(
        !store.exists(),
        "the store was opened before the configuration was checked"
    );
}

#[test]
fn mapping_test_refuses_what_the_gateway_refuses() {
    // Every field maps, but the email is not one: the gateway answers 422, so
    // `mapping test` must not print a Dispatch either (it checks through the same path).
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.json");
    std::fs::write(
        &input,
        r#"{"reference":"OPS-1","device":"UG1234","contact.name":"Jo","contact.phone":"1",
            "contact.email":"not an address","subject":"Door","description":"Door",
            "fault_time":"2021-01-16T09:17:48Z"}"#,
    )
    .unwrap();
    let mapping = concat!(env!("CARGO_MANIFEST_DIR"), "/mappings/internal-grpc.toml");
    let out = gateway()
        .args(["mapping", "test", "--mapping", mapping, "--input"])
        .arg(&input)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("ContactEmail"), "{err}");
    assert!(err.contains("is not an email address"), "{err}");
    // With the address fixed the same input yields the Dispatch.
    let fixed = std::fs::read_to_string(&input)
        .unwrap()
        .replace("not an address", "jo@example.com");
    std::fs::write(&input, fixed).unwrap();
    let out = gateway()
        .args(["mapping", "test", "--mapping", mapping, "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let dispatch: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dispatch["ContactEmail"], "jo@example.com");
    assert_eq!(dispatch["MessageType"], "Dispatch");
}

#[test]
fn the_stand_alone_simulator_stops_promptly_on_sigterm() {
    use std::io::BufRead;
    let mut child = gateway()
        .args(["simulator", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it listens (its signal handler is in place by then).
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.contains("Loomis simulator listening"));
    assert!(listening, "the simulator never said it listens");
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the simulator ignored SIGTERM for 10 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("simulator stopping")),
        "{rest:?}"
    );
}
