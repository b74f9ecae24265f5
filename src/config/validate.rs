//! Step two: every problem of a [`FileConfig`] collected with its key path, then the
//! [`Config`] built with its secrets read from the environment.

use super::*;

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

pub(super) struct Validator<'a> {
    pub(super) problems: Vec<String>,
    pub(super) embedded: bool,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
}

impl Validator<'_> {
    pub(super) fn problem(&mut self, key: &str, msg: impl fmt::Display) {
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

    pub(super) fn url(&mut self, key: &str, s: &str) -> Option<url::Url> {
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

    /// A configured certificate name; one can only be verified with a client CA.
    fn cert_name(&mut self, key: &str, s: &str, server: &ServerSection) -> Option<CertName> {
        let name = CertName::parse(s).map_err(|e| self.problem(key, e)).ok()?;
        let verifies = server
            .tls
            .as_ref()
            .is_some_and(|t| t.client_ca.is_some() && t.client_auth() != ClientAuth::None);
        if !verifies {
            self.problem(
                key,
                "client certificates are not verified: set server.tls.client_ca (and client_auth optional or required)",
            );
        }
        Some(name)
    }

    /// `[server.tls]`: the files are read when the listeners start (and at each reload);
    /// here only what can be told without them.
    fn tls(&mut self, server: &ServerSection) {
        let Some(t) = &server.tls else { return };
        if t.client_ca.is_none() && t.client_auth.is_some_and(|m| m != ClientAuth::None) {
            self.problem(
                "server.tls.client_auth",
                "optional or required needs server.tls.client_ca (the CA bundle client certificates chain to)",
            );
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

    /// `[store]`: the engine's own keys, and for PostgreSQL the URL from the environment.
    fn store(&mut self, s: &StoreSection) -> Option<Secret> {
        if s.engine != EngineKind::Postgres {
            return None;
        }
        if s.pool_size == 0 {
            self.problem("store.pool_size", "must be positive");
        }
        if s.statement_timeout_ms == 0 {
            self.problem("store.statement_timeout_ms", "must be positive");
        }
        if s.lease_secs < 3 {
            self.problem(
                "store.lease_secs",
                "must be at least 3 (the lease is renewed every third of it)",
            );
        }
        let Some(var) = &s.url_env else {
            self.problem(
                "store.url_env",
                "engine \"postgres\" needs the name of the variable holding its URL, e.g. url_env = \"SPG_DATABASE_URL\"",
            );
            return None;
        };
        let url = self.secret("store.url_env", var);
        let text = url.expose();
        let scheme_ok = text.starts_with("postgres://") || text.starts_with("postgresql://");
        if !text.is_empty() && !scheme_ok {
            self.problem(
                "store.url_env",
                format!("environment variable {var} must hold a postgres:// URL"),
            );
        }
        Some(url)
    }

    pub(super) fn build(mut self, f: FileConfig, origin: &str) -> Result<Config, ConfigError> {
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
        let store_url = self.store(&f.store);
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
        let callback_client_cert = f
            .callbacks
            .client_cert
            .as_ref()
            .and_then(|c| self.cert_name("callbacks.client_cert", c, &f.server));
        self.tls(&f.server);
        let admin_token = f
            .admin
            .token_env
            .as_ref()
            .map(|v| self.secret("admin.token_env", v));
        let read_only_token = f
            .admin
            .read_only_token_env
            .as_ref()
            .map(|v| self.secret("admin.read_only_token_env", v));
        if let Some(fmt) = &f.log.format {
            if fmt != "text" && fmt != "json" {
                self.problem("log.format", format!("{fmt:?} is not text or json"));
            }
        }
        let traces = self.telemetry(&f.telemetry);
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
            let client_cert = it
                .client_cert
                .as_ref()
                .and_then(|c| self.cert_name(&format!("{key}.client_cert"), c, &f.server));
            let api_key = match &it.api_key_env {
                None if it.client_cert.is_some() => Secret::new(String::new()),
                None => {
                    self.problem(
                        &format!("{key}.api_key_env"),
                        "missing: an integration needs api_key_env, client_cert, or both",
                    );
                    Secret::new(String::new())
                }
                Some(var) => match (self.env)(var) {
                    Some(v) if !v.is_empty() => Secret::new(v),
                    _ if self.embedded => Secret::new(DEMO_API_KEY),
                    _ => {
                        self.problem(
                            &format!("{key}.api_key_env"),
                            format!("environment variable {var} is not set"),
                        );
                        Secret::new(String::new())
                    }
                },
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
                client_cert,
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
            store_url,
            loomis,
            loomis_auth,
            loomis_section: f.loomis,
            loomis_retry,
            callback_auth,
            callback_client_cert,
            simulator: f.simulator,
            log: f.log,
            admin_token,
            read_only_token,
            integrations,
            traces,
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
