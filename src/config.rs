//! `gateway.toml`: parse (unknown keys are errors, with line and column), validate
//! (collecting every problem, each named by its key path), then resolve secrets from the
//! environment. Secrets never sit in the file: every one is named by a `*_env` key.

pub use crate::auth::{Auth, Secret};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The built-in defaults (`src/defaults.toml`), parsed by the same code as a file.
pub const EMBEDDED_DEFAULTS: &str = include_str!("defaults.toml");

/// The API key integrations get in embedded-defaults mode when their `*_API_KEY`
/// variable is unset. Only ever used with the built-in defaults, which listen on loopback.
pub const DEMO_API_KEY: &str = "demo";

/// Every problem found in a configuration, each with its location.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub origin: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} problem(s) in the configuration:",
            self.origin,
            self.problems.len()
        )?;
        for p in &self.problems {
            writeln!(f, "  {}: {p}", self.origin)?;
        }
        Ok(())
    }
}

/// Which engine a store uses (`store.engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    #[default]
    Fjall,
    Sled,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Fjall => "fjall",
            EngineKind::Sled => "sled",
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
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            path: PathBuf::from("./data"),
            engine: EngineKind::default(),
            cache_mb: 32,
            retention_days: 90,
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
}

impl Default for CallbacksSection {
    fn default() -> Self {
        CallbacksSection {
            auth: AuthSpec::Bearer {
                token_env: "LOOMIS_CALLBACK_TOKEN".into(),
            },
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
    pub api_key_env: String,
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
}

/// One integration, ready to run.
#[derive(Debug, Clone)]
pub struct Integration {
    pub name: String,
    pub customer_number: String,
    pub mapping: PathBuf,
    pub api_key: Secret,
    pub delivery: Option<Delivery>,
}

/// Where and how updates are posted back to a legacy tool.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub url: url::Url,
    pub auth: Auth,
    pub timeout: Duration,
    pub concurrency: usize,
    pub retry: RetrySpec,
}

/// Where Dispatches and Cancels go.
#[derive(Debug, Clone, PartialEq)]
pub enum LoomisTarget {
    Simulator,
    Url(url::Url),
}

/// The validated configuration with secrets resolved.
#[derive(Debug, Clone)]
pub struct Config {
    pub origin: String,
    /// Running on the built-in defaults (demo keys allowed, simulator announced).
    pub embedded: bool,
    pub http_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub server: ServerSection,
    pub store: StoreSection,
    pub loomis: LoomisTarget,
    pub loomis_auth: Auth,
    pub loomis_section: LoomisSection,
    /// `loomis.retry` with its defaults filled in.
    pub loomis_retry: RetrySpec,
    pub callback_auth: Auth,
    pub simulator: SimulatorSection,
    pub log: LogSection,
    pub admin_token: Option<Secret>,
    pub integrations: Vec<Integration>,
}

impl Config {
    /// `serve`'s rule: `--config FILE`, else `./gateway.toml` if present, else the
    /// built-in defaults.
    pub fn locate(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let env = |k: &str| std::env::var(k).ok();
        match explicit {
            Some(p) => Self::from_file(p, &env),
            None if Path::new("gateway.toml").exists() => {
                Self::from_file(Path::new("gateway.toml"), &env)
            }
            None => Self::parse(EMBEDDED_DEFAULTS, "built-in defaults", true, &env),
        }
    }

    pub fn from_file(
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: origin.clone(),
            problems: vec![format!("cannot read: {e}")],
        })?;
        Self::parse(&text, &origin, false, env)
    }

    /// Parses and validates `text`; `env` looks up environment variables.
    pub fn parse(
        text: &str,
        origin: &str,
        embedded: bool,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError {
            origin: origin.to_string(),
            problems: vec![toml_error(text, &e)],
        })?;
        Validator {
            problems: Vec::new(),
            embedded,
            env,
        }
        .build(file, origin)
    }
}

/// Renders a TOML error as `line L, column C: message`.
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("line {line}, column {col}: {}", e.message())
        }
        None => e.message().to_string(),
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

struct Validator<'a> {
    problems: Vec<String>,
    embedded: bool,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Validator<'_> {
    fn problem(&mut self, key: &str, msg: impl fmt::Display) {
        self.problems.push(format!("{key}: {msg}"));
    }

    fn secret(&mut self, key: &str, var: &str) -> Secret {
        match (self.env)(var) {
            Some(v) if !v.is_empty() => Secret::new(v),
            _ => {
                self.problem(key, format!("environment variable {var} is not set"));
                Secret::new(String::new())
            }
        }
    }

    fn auth(&mut self, key: &str, spec: &AuthSpec) -> Auth {
        let auth = self.auth_unchecked(key, spec);
        if let Err(why) = auth.header() {
            self.problem(
                key,
                format!(
                    "{why}: the secret holds a character a header cannot carry (a line break?)"
                ),
            );
        }
        auth
    }

    fn auth_unchecked(&mut self, key: &str, spec: &AuthSpec) -> Auth {
        match spec {
            AuthSpec::None => Auth::None,
            AuthSpec::Bearer { token_env } => {
                Auth::Bearer(self.secret(&format!("{key}.token_env"), token_env))
            }
            AuthSpec::Basic {
                username,
                password_env,
            } => {
                if username.is_empty() || username.contains(':') {
                    self.problem(
                        &format!("{key}.username"),
                        "must be non-empty and contain no ':'",
                    );
                }
                Auth::Basic {
                    username: username.clone(),
                    password: self.secret(&format!("{key}.password_env"), password_env),
                }
            }
            AuthSpec::Header { name, value_env } => {
                let name = match http::HeaderName::from_bytes(name.as_bytes()) {
                    Ok(n) => n,
                    Err(_) => {
                        self.problem(
                            &format!("{key}.name"),
                            format!("{name:?} is not a valid header name"),
                        );
                        http::HeaderName::from_static("x-invalid")
                    }
                };
                Auth::Header {
                    name,
                    value: self.secret(&format!("{key}.value_env"), value_env),
                }
            }
        }
    }

    fn addr(&mut self, key: &str, s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| {
            self.problem(
                key,
                format!("{s:?} is not an address such as 127.0.0.1:8080"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    }

    fn url(&mut self, key: &str, s: &str) -> Option<url::Url> {
        match url::Url::parse(s) {
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                self.problem(
                    key,
                    "credentials in the URL are not sent: remove them and set the auth next to it (secrets come from the environment)",
                );
                None
            }
            Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
            _ => {
                self.problem(key, format!("{s:?} is not an http(s) URL"));
                None
            }
        }
    }

    /// The outbound proxy variables: a proxy reached over TLS is not supported (the
    /// tunnel to it is plain HTTP; TLS to Loomis runs end to end inside it). The value is
    /// never shown: it may hold the proxy's password.
    fn proxies(&mut self) {
        for var in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
            "all_proxy",
        ] {
            if (self.env)(var)
                .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("https://"))
            {
                self.problem(
                    var,
                    "a proxy reached over TLS (https://) is not supported: give it as http://host:port (TLS to Loomis still runs end to end through it)",
                );
            }
        }
    }

    fn retry(&mut self, key: &str, r: &RetrySpec) {
        if r.initial_ms == 0 || r.max_ms < r.initial_ms {
            self.problem(key, "needs 0 < initial_ms <= max_ms");
        }
        if r.max_age_secs == 0 {
            self.problem(&format!("{key}.max_age_secs"), "must be positive");
        }
    }

    fn build(mut self, f: FileConfig, origin: &str) -> Result<Config, ConfigError> {
        let http_listen = self.addr("server.http_listen", &f.server.http_listen);
        let grpc_listen = self.addr("server.grpc_listen", &f.server.grpc_listen);
        if f.server.max_body_bytes == 0
            || f.server.max_xml_depth == 0
            || f.server.max_xml_elements == 0
        {
            self.problem(
                "server",
                "max_body_bytes, max_xml_depth and max_xml_elements must be positive",
            );
        }
        let loomis = if f.loomis.url == "simulator" {
            LoomisTarget::Simulator
        } else {
            self.url("loomis.url", &f.loomis.url)
                .map(LoomisTarget::Url)
                .unwrap_or(LoomisTarget::Simulator)
        };
        let loomis_auth = self.auth("loomis.auth", &f.loomis.auth);
        if f.loomis.concurrency == 0 {
            self.problem("loomis.concurrency", "must be positive");
        }
        self.proxies();
        let loomis_retry = f.loomis.retry.resolve(&RetrySpec::LOOMIS);
        self.retry("loomis.retry", &loomis_retry);
        let callback_auth = if self.embedded {
            match &f.callbacks.auth {
                // The built-in simulator is the only caller; a random token protects the
                // route when none is given.
                AuthSpec::Bearer { token_env } if (self.env)(token_env).is_none() => {
                    Auth::Bearer(Secret::new(random_token()))
                }
                other => self.auth("callbacks.auth", other),
            }
        } else {
            self.auth("callbacks.auth", &f.callbacks.auth)
        };
        if f.loomis.url == "simulator"
            && !matches!(f.callbacks.auth, AuthSpec::None | AuthSpec::Bearer { .. })
        {
            self.problem(
                "callbacks.auth",
                "with loomis.url = \"simulator\" it must be bearer or none (the built-in simulator calls back with a bearer token)",
            );
        }
        if callback_auth == Auth::None && !self.embedded {
            tracing::warn!("callbacks.auth is none: anyone who can reach the HTTP listener can post Loomis messages");
        }
        let admin_token = f
            .admin
            .token_env
            .as_ref()
            .map(|v| self.secret("admin.token_env", v));
        if let Some(fmt) = &f.log.format {
            if fmt != "text" && fmt != "json" {
                self.problem("log.format", format!("{fmt:?} is not text or json"));
            }
        }
        let mut integrations = Vec::new();
        let mut names = std::collections::HashSet::new();
        if f.integrations.is_empty() {
            self.problem("integrations", "at least one [[integrations]] is needed");
        }
        for (i, it) in f.integrations.iter().enumerate() {
            let key = format!("integrations[{i}]");
            if it.name.is_empty()
                || !it
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                self.problem(
                    &format!("{key}.name"),
                    format!("{:?} must match [a-z0-9-]+", it.name),
                );
            }
            if !names.insert(it.name.clone()) {
                self.problem(
                    &format!("{key}.name"),
                    format!("{:?} is used twice", it.name),
                );
            }
            if it.customer_number.trim().is_empty() {
                self.problem(&format!("{key}.customer_number"), "must not be empty");
            }
            let api_key = match (self.env)(&it.api_key_env) {
                Some(v) if !v.is_empty() => Secret::new(v),
                _ if self.embedded => Secret::new(DEMO_API_KEY),
                _ => {
                    self.problem(
                        &format!("{key}.api_key_env"),
                        format!("environment variable {} is not set", it.api_key_env),
                    );
                    Secret::new(String::new())
                }
            };
            let delivery = it.delivery.as_ref().and_then(|d| {
                let dkey = format!("{key}.delivery");
                let url = self.url(&format!("{dkey}.url"), &d.url);
                let auth = self.auth(&format!("{dkey}.auth"), &d.auth);
                let retry = d.retry.resolve(&RetrySpec::TOOL);
                self.retry(&format!("{dkey}.retry"), &retry);
                if d.concurrency == 0 {
                    self.problem(&format!("{dkey}.concurrency"), "must be positive");
                }

                url.map(|url| Delivery {
                    url,
                    auth,
                    timeout: Duration::from_millis(d.timeout_ms),
                    concurrency: d.concurrency.max(1),
                    retry,
                })
            });
            integrations.push(Integration {
                name: it.name.clone(),
                customer_number: it.customer_number.clone(),
                mapping: it.mapping.clone(),
                api_key,
                delivery,
            });
        }
        if !self.problems.is_empty() {
            return Err(ConfigError {
                origin: origin.to_string(),
                problems: self.problems,
            });
        }
        Ok(Config {
            origin: origin.to_string(),
            embedded: self.embedded,
            http_listen,
            grpc_listen,
            server: f.server,
            store: f.store,
            loomis,
            loomis_auth,
            loomis_section: f.loomis,
            loomis_retry,
            callback_auth,
            simulator: f.simulator,
            log: f.log,
            admin_token,
            integrations,
        })
    }
}

/// A random 32-byte hex token.
pub fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
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
            all.contains(
                "callbacks.auth: with loomis.url = \"simulator\" it must be bearer or none"
            ),
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
    fn the_shipped_example_is_valid() {
        let text = include_str!("../deploy/gateway.example.toml");
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
}
