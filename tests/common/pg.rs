//! A PostgreSQL database of the test's own: created with a unique name on the server
//! that `SPG_TEST_DATABASE_URL` names (default `postgres://postgres@127.0.0.1:5432/test`),
//! dropped when the guard goes. When `CI` is set an unreachable server fails the test;
//! otherwise the test is skipped with a line that says why.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

/// Database URLs handed to test gateways, by the environment variable name their
/// configuration names (`url_env`): tests run in parallel in one process, so the
/// process environment is not used.
static URLS: Mutex<Option<HashMap<String, String>>> = Mutex::new(None);

/// The URL registered under the variable name `var`.
pub fn url_of(var: &str) -> Option<String> {
    URLS.lock().unwrap().as_ref()?.get(var).cloned()
}

/// `[store]` lines for a test gateway on the database at `url`: engine postgres, the URL
/// under a variable name of its own, a short lease (takeover within seconds).
pub fn store_lines(url: &str) -> String {
    let var = format!("SPG_TEST_DB_{}", COUNTER.fetch_add(1, Ordering::SeqCst));
    URLS.lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(var.clone(), url.to_string());
    format!("engine = \"postgres\"\nurl_env = \"{var}\"\nlease_secs = 3\n")
}

/// The server every test database is created on.
pub fn server_url() -> String {
    std::env::var("SPG_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// `url` with its database name replaced by `db`.
fn with_database(url: &str, db: &str) -> String {
    let (head, tail) = match url.find('?') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let base = match head.rfind('/') {
        Some(i) if i > "postgres://".len() => &head[..i],
        _ => head,
    };
    format!("{base}/{db}{tail}")
}

/// A database created for one test; dropped (with its connections) on drop.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    /// Creates a fresh database, or `None` (with a printed reason) when the server cannot
    /// be reached outside CI. In CI an unreachable server panics.
    pub fn create(test: &str) -> Option<TestDb> {
        let name = format!(
            "spg_{}_{}_{}",
            test.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(30)
                .collect::<String>()
                .to_lowercase(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let server = server_url();
        match run_admin(&server, &format!("CREATE DATABASE \"{name}\"")) {
            Ok(()) => Some(TestDb {
                url: with_database(&server, &name),
                name,
            }),
            Err(e) => {
                if std::env::var_os("CI").is_some() {
                    panic!("PostgreSQL at {server} is needed in CI and cannot be used: {e}");
                }
                println!("skipped: PostgreSQL at {server} cannot be used ({e}); set SPG_TEST_DATABASE_URL");
                None
            }
        }
    }
}

impl TestDb {
    /// The number a counting query (`SELECT count(...) ...`) gives in this database.
    pub fn count(&self, sql: &str) -> i64 {
        query_number(&self.url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs statements in this database.
    pub fn execute(&self, sql: &str) {
        run_admin(&self.url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = run_admin(
            &server_url(),
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        );
    }
}

/// The first column of the first row of `sql` as a number (on a thread of its own).
fn query_number(url: &str, sql: &str) -> Result<i64, String> {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            let driver = tokio::spawn(conn);
            let out = client
                .query_one(&sql, &[])
                .await
                .map(|r| r.get::<_, i64>(0))
                .map_err(|e| e.to_string());
            drop(client);
            let _ = driver.await;
            out
        })
    })
    .join()
    .map_err(|_| "query thread panicked".to_string())?
}

/// Runs one statement on the server's own database, on a runtime of its own (callers may
/// be inside a test's runtime or not).
fn run_admin(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_string(), sql.to_string());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async {
            let mut cfg: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
            cfg.connect_timeout(std::time::Duration::from_secs(5));
            let (client, conn) = cfg
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| e.to_string())?;
            let driver = tokio::spawn(conn);
            let out = client.batch_execute(&sql).await.map_err(|e| e.to_string());
            drop(client);
            let _ = driver.await;
            out
        })
    })
    .join()
    .map_err(|_| "admin thread panicked".to_string())?
}
