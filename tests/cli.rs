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
