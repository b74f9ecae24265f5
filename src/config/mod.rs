//! `gateway.toml`: parse (unknown keys are errors, with line and column), validate
//! (collecting every problem, each named by its key path), then resolve secrets from the
//! environment. Secrets never sit in the file: every one is named by a `*_env` key.
//!
//! Three steps, one file each: [`file`] is the file as written (serde, every section
//! `deny_unknown_fields`), `validate` collects every problem and builds the [`Config`]
//! below, with secrets resolved. A leaf above [`crate::auth`]: no runtime code.

mod file;
mod telemetry;
mod tls;
mod validate;

pub use crate::auth::{Auth, Secret};
pub use file::*;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
pub use telemetry::{TelemetrySection, Traces};
pub use tls::{CertName, ClientAuth, PeerIdentity, TlsSection};
use validate::Validator;
pub use validate::{line_col, random_token, toml_error};

/// The built-in defaults (`src/defaults.toml`), parsed by the same code as a file.
pub const EMBEDDED_DEFAULTS: &str = include_str!("../defaults.toml");

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

/// One integration, ready to run.
#[derive(Debug, Clone)]
pub struct Integration {
    pub name: String,
    pub customer_number: String,
    pub mapping: PathBuf,
    /// Empty when the integration authenticates by client certificate only.
    pub api_key: Secret,
    /// The client certificate name that authenticates this integration's callers.
    pub client_cert: Option<CertName>,
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
    /// Engine "postgres": the database URL read from `store.url_env` (a secret: it may
    /// carry the password).
    pub store_url: Option<Secret>,
    pub loomis: LoomisTarget,
    pub loomis_auth: Auth,
    pub loomis_section: LoomisSection,
    /// `loomis.retry` with its defaults filled in.
    pub loomis_retry: RetrySpec,
    pub callback_auth: Auth,
    /// The name Loomis's client certificate must carry, when set.
    pub callback_client_cert: Option<CertName>,
    pub simulator: SimulatorSection,
    pub log: LogSection,
    pub admin_token: Option<Secret>,
    /// `[admin] read_only_token_env`: signs in to the console to look only.
    pub read_only_token: Option<Secret>,
    pub integrations: Vec<Integration>,
    /// Where traces go (`[telemetry]`); `None`: traces are off.
    pub traces: Option<Traces>,
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

#[cfg(test)]
mod tests;
