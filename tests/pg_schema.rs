//! The PostgreSQL schema: `migrate` applies the embedded migrations once, a gateway
//! applies them at start too, and both refuse a database migrated by a later release.

mod common;

use common::pg::TestDb;
use safepoint_gateway::store::pg::{known_schema_version, PgBackend, PgSettings};
use std::process::Output;
use std::time::Duration;

fn migrate(db: &TestDb, dir: &std::path::Path) -> Output {
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nengine = \"postgres\"\nurl_env = \"SPG_MIGRATE_DB\"\n\n\
             [loomis]\nurl = \"simulator\"\n\n\
             [callbacks]\nauth = {{ type = \"bearer\", token_env = \"CB\" }}\n\n\
             [[integrations]]\nname = \"servicenow\"\ncustomer_number = \"A123456\"\n\
             mapping = \"{}/mappings/servicenow.toml\"\napi_key_env = \"SN\"\n",
            env!("CARGO_MANIFEST_DIR")
        ),
    )
    .unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_safepoint-gateway"))
        .args(["migrate", "--config"])
        .arg(&config)
        .env("SPG_MIGRATE_DB", &db.url)
        .env("CB", "callback-token")
        .env("SN", "sn-key")
        .output()
        .unwrap()
}

#[test]
fn migrate_applies_once_and_a_newer_schema_is_refused() {
    let Some(db) = TestDb::create("schema") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = migrate(&db, dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("applied V1__cluster_store"), "{stdout}");
    assert_eq!(db.count("SELECT count(*) FROM spg_leases"), 64);
    // Again: nothing left to apply.
    let out = migrate(&db, dir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("(0 migration(s) applied now)"), "{stdout}");

    // A later release migrated the database: this one refuses it, by name.
    db.execute(
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
         VALUES (999, 'from_the_future', '2030-01-01T00:00:00Z', '0')",
    );
    let out = migrate(&db, dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let known = known_schema_version();
    assert!(
        stderr.contains(&format!(
            "schema is version 999, newer than this build knows ({known})"
        )),
        "{stderr}"
    );
    let err = PgBackend::open(PgSettings {
        url: db.url.clone(),
        pool_size: 2,
        statement_timeout: Duration::from_secs(5),
        lease: Duration::from_secs(15),
    })
    .err()
    .expect("a gateway does not start on a newer schema");
    assert!(
        err.to_string().contains("newer than this build knows"),
        "{err}"
    );
}
