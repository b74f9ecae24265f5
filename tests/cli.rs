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
