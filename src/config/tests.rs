//! The configuration's parse and validation rules.
use super::*;

fn env(k: &str) -> Option<String> {
    match k {
        "TOKEN" | "KEY" | "PW" => Some("s3cret".into()),
        _ => None,
    }
}

const GOOD: &str = r#"
[server]
http_listen = "127.0.0.1:0"
grpc_listen = "127.0.0.1:0"
[loomis]
url = "https://loomis.example/safepoint/incidents"
auth = { type = "bearer", token_env = "TOKEN" }
[callbacks]
auth = { type = "basic", username = "loomis", password_env = "PW" }
[[integrations]]
name = "servicenow"
customer_number = "A123456"
mapping = "mappings/servicenow.toml"
api_key_env = "KEY"
[integrations.delivery]
url = "https://itsm.example/api"
auth = { type = "header", name = "x-api-key", value_env = "KEY" }
"#;

#[test]
fn parses_a_full_file_and_resolves_secrets() {
    let c = Config::parse(GOOD, "gateway.toml", false, &env).unwrap();
    assert_eq!(c.loomis_auth, Auth::Bearer(Secret::new("s3cret")));
    assert!(matches!(c.loomis, LoomisTarget::Url(_)));
    assert_eq!(
        c.integrations[0]
            .delivery
            .as_ref()
            .unwrap()
            .retry
            .max_attempts,
        20
    );
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "secrets must not show in Debug"
    );
}

#[test]
fn a_secret_no_header_can_carry_is_refused_without_showing_it() {
    let env = |k: &str| match k {
        "KEY" => Some("line\r\nX-Injected: yes".to_string()),
        other => env(other),
    };
    let e = Config::parse(GOOD, "gateway.toml", false, &env).unwrap_err();
    let all = e.problems.join("\n");
    assert!(all.contains("integrations[0].delivery.auth: "), "{all}");
    assert!(all.contains("line break"), "{all}");
    assert!(!all.contains("Injected"), "the secret must not show: {all}");
}

#[test]
fn deliveries_that_could_not_work_as_configured_are_refused() {
    let env = |k: &str| match k {
        "HTTPS_PROXY" => Some("https://user:pw@proxy.example:3128".to_string()),
        other => env(other),
    };
    let text = GOOD.replace(
        "https://itsm.example/api",
        "https://svc:hunter2@itsm.example/api",
    );
    let e = Config::parse(&text, "gateway.toml", false, &env).unwrap_err();
    let all = e.problems.join("\n");
    assert!(
        all.contains("integrations[0].delivery.url: credentials in the URL"),
        "{all}"
    );
    assert!(
        all.contains("HTTPS_PROXY: a proxy reached over TLS"),
        "{all}"
    );
    assert!(
        !all.contains("hunter2") && !all.contains("pw@"),
        "no secret shown: {all}"
    );
}

#[test]
fn unknown_key_is_an_error_with_line_and_column() {
    let text = GOOD
        .replace("timeout_ms", "x")
        .replace("[loomis]\n", "[loomis]\nretries = 3\n");
    let e = Config::parse(&text, "gateway.toml", false, &env).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("line 6, column 1"), "{msg}");
    assert!(msg.contains("retries"), "{msg}");
}

#[test]
fn validation_collects_every_problem() {
    let text = GOOD
        .replace("\"KEY\"", "\"MISSING\"")
        .replace("name = \"servicenow\"", "name = \"Service Now\"")
        .replace("127.0.0.1:0\"\ngrpc", "nowhere\"\ngrpc");
    let e = Config::parse(&text, "gateway.toml", false, &env).unwrap_err();
    let all = e.problems.join("\n");
    assert!(all.contains("server.http_listen"), "{all}");
    assert!(all.contains("integrations[0].name"), "{all}");
    assert!(all.contains("integrations[0].api_key_env"), "{all}");
    assert!(
        all.contains("integrations[0].delivery.auth.value_env"),
        "{all}"
    );
}

#[test]
fn simulator_with_callbacks_it_cannot_make_is_refused_with_the_rest() {
    // The built-in simulator calls back with a bearer token only; saying so at
    // validation (with every other problem) beats failing after the store opened.
    let text = GOOD
        .replace("https://loomis.example/safepoint/incidents", "simulator")
        .replace("\"KEY\"", "\"MISSING\"");
    let e = Config::parse(&text, "gateway.toml", false, &env).unwrap_err();
    let all = e.problems.join("\n");
    assert!(
        all.contains("callbacks.auth: with loomis.url = \"simulator\" it must be bearer or none"),
        "{all}"
    );
    assert!(all.contains("integrations[0].api_key_env"), "{all}");
    let text = GOOD
        .replace("https://loomis.example/safepoint/incidents", "simulator")
        .replace(
            "{ type = \"basic\", username = \"loomis\", password_env = \"PW\" }",
            "{ type = \"bearer\", token_env = \"TOKEN\" }",
        );
    assert!(Config::parse(&text, "gateway.toml", false, &env).is_ok());
}

#[test]
fn store_engine_is_fjall_unless_sled_is_named() {
    let c = Config::parse(GOOD, "gateway.toml", false, &env).unwrap();
    assert_eq!(c.store.engine, EngineKind::Fjall);
    let text = format!("{GOOD}\n[store]\nengine = \"sled\"\n");
    let c = Config::parse(&text, "gateway.toml", false, &env).unwrap();
    assert_eq!(c.store.engine, EngineKind::Sled);
    let text = format!("{GOOD}\n[store]\nengine = \"rocksdb\"\n");
    let msg = Config::parse(&text, "gateway.toml", false, &env)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("rocksdb") && msg.contains("fjall") && msg.contains("sled"),
        "{msg}"
    );
}

#[test]
fn postgres_takes_its_url_from_the_environment_and_every_problem_is_named() {
    let text =
        format!("{GOOD}\n[store]\nengine = \"postgres\"\nurl_env = \"DB_URL\"\npool_size = 4\n");
    let with_url = |k: &str| match k {
        "DB_URL" => Some("postgres://gw:pw@db.example:5432/spg".into()),
        other => env(other),
    };
    let c = Config::parse(&text, "gateway.toml", false, &with_url).unwrap();
    assert_eq!(c.store.engine, EngineKind::Postgres);
    assert_eq!(c.store.pool_size, 4);
    assert_eq!(c.store.lease_secs, 15, "default lease");
    // The URL (with its password) is a secret: never printed.
    assert!(!format!("{c:?}").contains("pw@"));
    assert_eq!(
        c.store_url.as_ref().map(|u| u.expose().to_string()),
        Some("postgres://gw:pw@db.example:5432/spg".into())
    );
    // Unset variable, and bad settings, all reported at once.
    let text = format!(
        "{GOOD}\n[store]\nengine = \"postgres\"\nurl_env = \"DB_URL\"\npool_size = 0\nlease_secs = 1\n"
    );
    let msg = Config::parse(&text, "gateway.toml", false, &env)
        .unwrap_err()
        .to_string();
    for want in [
        "store.url_env: environment variable DB_URL is not set",
        "store.pool_size",
        "store.lease_secs",
    ] {
        assert!(msg.contains(want), "{want} in {msg}");
    }
    let text = format!("{GOOD}\n[store]\nengine = \"postgres\"\n");
    let msg = Config::parse(&text, "gateway.toml", false, &env)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("store.url_env"), "{msg}");
    let text = format!("{GOOD}\n[store]\nengine = \"postgres\"\nurl_env = \"DB_URL\"\n");
    let msg = Config::parse(&text, "gateway.toml", false, &|k: &str| match k {
        "DB_URL" => Some("mysql://db".into()),
        other => env(other),
    })
    .unwrap_err()
    .to_string();
    assert!(msg.contains("postgres:// URL"), "{msg}");
}

#[test]
fn the_shipped_example_is_valid() {
    let text = include_str!("../../deploy/gateway.example.toml");
    Config::parse(text, "deploy/gateway.example.toml", false, &|_| {
        Some("x".into())
    })
    .unwrap();
}

#[test]
fn embedded_defaults_serve_without_any_environment() {
    let c = Config::parse(EMBEDDED_DEFAULTS, "built-in defaults", true, &|_| None).unwrap();
    assert_eq!(c.loomis, LoomisTarget::Simulator);
    assert_eq!(c.http_listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.grpc_listen.to_string(), "127.0.0.1:50051");
    assert_eq!(c.integrations.len(), 3);
    assert!(matches!(c.callback_auth, Auth::Bearer(ref s) if s.expose().len() == 64));
}
