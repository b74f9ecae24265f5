//! The configuration file as written: what serde reads, with defaults filled in and
//! unknown keys refused. Nothing here is validated yet; see `validate`.

use serde::Deserialize;
use std::path::PathBuf;

/// Which engine a store uses (`store.engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    #[default]
    Fjall,
    Sled,
    /// PostgreSQL: any number of instances share one database (a cluster).
    Postgres,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Fjall => "fjall",
            EngineKind::Sled => "sled",
            EngineKind::Postgres => "postgres",
        }
    }
}

/// How a party authenticates, as written in the file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum AuthSpec {
    None,
    Bearer {
        token_env: String,
    },
    Basic {
        username: String,
        password_env: String,
    },
    Header {
        name: String,
        value_env: String,
    },
}

/// Exponential backoff with jitter, and when to give up.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySpec {
    /// First delay after a failed attempt.
    pub initial_ms: u64,
    /// Delays double up to this.
    pub max_ms: u64,
    /// Give up this long after the job was queued.
    pub max_age_secs: u64,
    /// Give up after this many attempts as well (0: no attempt limit).
    pub max_attempts: u32,
}

impl RetrySpec {
    /// Toward Loomis: retried for 24 h, no attempt limit.
    pub const LOOMIS: RetrySpec = RetrySpec {
        initial_ms: 500,
        max_ms: 300_000,
        max_age_secs: 86_400,
        max_attempts: 0,
    };
    /// Toward legacy tools: 1 h or 20 attempts, then a dead letter.
    pub const TOOL: RetrySpec = RetrySpec {
        initial_ms: 500,
        max_ms: 300_000,
        max_age_secs: 3_600,
        max_attempts: 20,
    };
}

/// A `retry` table as written: keys left out take the defaults of where it stands
/// ([`RetrySpec::LOOMIS`] or [`RetrySpec::TOOL`]).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RetryTable {
    pub initial_ms: Option<u64>,
    pub max_ms: Option<u64>,
    pub max_age_secs: Option<u64>,
    pub max_attempts: Option<u32>,
}

impl RetryTable {
    pub fn resolve(&self, defaults: &RetrySpec) -> RetrySpec {
        RetrySpec {
            initial_ms: self.initial_ms.unwrap_or(defaults.initial_ms),
            max_ms: self.max_ms.unwrap_or(defaults.max_ms),
            max_age_secs: self.max_age_secs.unwrap_or(defaults.max_age_secs),
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    pub http_listen: String,
    pub grpc_listen: String,
    /// Largest request body on the legacy routes (default 1 MiB).
    pub max_body_bytes: usize,
    /// Largest Loomis callback body (default 64 KiB).
    pub max_callback_bytes: usize,
    /// Time a whole request may take, reading included (slow senders are cut off).
    pub request_timeout_ms: u64,
    /// Time a client has to send its request headers.
    pub header_timeout_ms: u64,
    /// XML limits.
    pub max_xml_depth: usize,
    pub max_xml_elements: usize,
    /// Time given to in-flight work at shutdown.
    pub shutdown_grace_ms: u64,
    /// TLS on both listeners; absent: plain text.
    pub tls: Option<super::TlsSection>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            http_listen: "127.0.0.1:8080".into(),
            grpc_listen: "127.0.0.1:50051".into(),
            max_body_bytes: 1 << 20,
            max_callback_bytes: 64 << 10,
            request_timeout_ms: 30_000,
            header_timeout_ms: 10_000,
            max_xml_depth: 64,
            max_xml_elements: 10_000,
            shutdown_grace_ms: 10_000,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    pub path: PathBuf,
    /// The key-value engine: fjall (default) or sled (stores written by earlier builds).
    pub engine: EngineKind,
    /// The engine's block (page) cache, in MiB.
    pub cache_mb: u64,
    /// Terminal incidents, updates, dead letters and orphans older than this many days
    /// are removed (see `retention`); 0 keeps everything.
    pub retention_days: u32,
    /// Engine "postgres": the environment variable holding the `postgres://` URL (its
    /// password is a secret, so the URL is never in the file).
    pub url_env: Option<String>,
    /// Engine "postgres": connections to the database for reads (the writer has one more
    /// of its own, and so do the lease keeper and the update watcher).
    pub pool_size: usize,
    /// Engine "postgres": the longest one statement may run before the database cancels
    /// it (an outage is then noticed within this time).
    pub statement_timeout_ms: u64,
    /// Engine "postgres": how long an instance's claim on a delivery lane lasts without
    /// renewal; a dead instance's lanes are taken over after it.
    pub lease_secs: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            path: PathBuf::from("./data"),
            engine: EngineKind::default(),
            cache_mb: 32,
            retention_days: 90,
            url_env: None,
            pool_size: 8,
            statement_timeout_ms: 5_000,
            lease_secs: 15,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoomisSection {
    /// The incidents endpoint, or `"simulator"` for the built-in simulator.
    pub url: String,
    pub auth: AuthSpec,
    /// Whole-request timeout.
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Idle pooled connections are closed after this, below common server keep-alives.
    pub pool_idle_timeout_ms: u64,
    /// Requests in flight to Loomis at once.
    pub concurrency: usize,
    pub retry: RetryTable,
}

impl Default for LoomisSection {
    fn default() -> Self {
        LoomisSection {
            url: "simulator".into(),
            auth: AuthSpec::None,
            timeout_ms: 10_000,
            connect_timeout_ms: 3_000,
            pool_idle_timeout_ms: 30_000,
            concurrency: 64,
            retry: RetryTable::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbacksSection {
    pub auth: AuthSpec,
    /// A name Loomis's client certificate must carry (`CN=...`, `DNS=...`); needs
    /// `server.tls.client_ca`.
    #[serde(default)]
    pub client_cert: Option<String>,
}

impl Default for CallbacksSection {
    fn default() -> Self {
        CallbacksSection {
            auth: AuthSpec::Bearer {
                token_env: "LOOMIS_CALLBACK_TOKEN".into(),
            },
            client_cert: None,
        }
    }
}

/// Options of the built-in simulator when `loomis.url = "simulator"`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SimulatorSection {
    /// `body`, `callback` or `both`.
    pub ack: Option<String>,
    pub accept_after_ms: Option<u64>,
    pub close_after_ms: Option<u64>,
    /// `close`, `cancel`, `none` or `close-before-accept`.
    pub outcome: Option<String>,
    pub devices: Option<Vec<String>>,
    pub fault_codes: Option<Vec<String>>,
    pub fail_rate: Option<f64>,
    pub timeout_rate: Option<f64>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `text` (default) or `json`.
    pub format: Option<String>,
    /// A tracing filter such as `info` or `safepoint_gateway=debug`.
    pub level: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Bearer token for `/v1/admin/*` (dead letters, orphans). Unset: admin routes are off.
    pub token_env: Option<String>,
    /// A second token that signs in to the web console (`/console`) to look, never to
    /// act. Unset: only the admin token signs in.
    pub read_only_token_env: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    pub url: String,
    #[serde(default = "auth_none")]
    pub auth: AuthSpec,
    #[serde(default = "default_tool_timeout")]
    pub timeout_ms: u64,
    /// Posts in flight to this tool at once (a slow tool holds only its own slots).
    #[serde(default = "default_tool_concurrency")]
    pub concurrency: usize,
    #[serde(default)]
    pub retry: RetryTable,
}

fn auth_none() -> AuthSpec {
    AuthSpec::None
}
fn default_tool_timeout() -> u64 {
    10_000
}
fn default_tool_concurrency() -> usize {
    8
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationSection {
    pub name: String,
    pub customer_number: String,
    pub mapping: PathBuf,
    /// Callers send this key as a bearer token. Optional when `client_cert` is set.
    pub api_key_env: Option<String>,
    /// A name the caller's client certificate carries (`CN=...`, `DNS=...`): such a
    /// certificate authenticates the caller instead of the bearer key.
    pub client_cert: Option<String>,
    pub delivery: Option<DeliverySection>,
}

/// The file as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub server: ServerSection,
    pub store: StoreSection,
    pub loomis: LoomisSection,
    pub callbacks: CallbacksSection,
    pub simulator: SimulatorSection,
    pub log: LogSection,
    pub admin: AdminSection,
    pub integrations: Vec<IntegrationSection>,
    pub telemetry: super::TelemetrySection,
}
