//! Live reload: re-read `gateway.toml`, every mapping (with its lookups) and every
//! secret, validate all of it, and swap it in at once, or change nothing.
//!
//! What a reload replaces lives in [`Live`] cells read by the edges and workers: the
//! integrations (keys, client certificate names, mappings), the legacy tools' delivery
//! targets, the callback credentials, and the TLS configuration of both listeners. A
//! request in flight keeps the snapshot it took; jobs in the outbox hold Dispatches
//! already mapped, so nothing queued is re-mapped. Settings that the running components
//! were built from (listener addresses, the store, Loomis, the set of integrations) are
//! compared, and a change is refused with "restart needed".
//!
//! Invariant: the generation and the state in the cells change together, under one lock,
//! only after every check passed.

use crate::config::{Config, ConfigError, EMBEDDED_DEFAULTS};
use crate::delivery::tool::ToolTarget;
use crate::delivery::{Destination, RetryPolicy};
use crate::edge::http::reload::{ConfigControl, ReloadRefusal};
use crate::edge::http::CallbackPolicy;
use crate::intake::{IntegrationRuntime, LiveIntegrations};
use crate::live::Live;
use crate::mapping::MappingPlan;
use crate::tls::TlsServer;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Looks up an environment variable (the process's, or a test's).
pub type EnvFn = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Where a reload reads the configuration from.
#[derive(Clone)]
pub struct ConfigSource {
    /// The file; `None` with the built-in defaults.
    pub path: Option<PathBuf>,
    pub env: EnvFn,
}

impl ConfigSource {
    /// The file `config` was read from (its origin), or the built-in defaults, with the
    /// process environment.
    pub fn of(config: &Config) -> ConfigSource {
        ConfigSource {
            path: (!config.embedded).then(|| PathBuf::from(&config.origin)),
            env: Arc::new(|k| std::env::var(k).ok()),
        }
    }

    fn read(&self) -> Result<Config, ConfigError> {
        match &self.path {
            Some(p) => Config::from_file(p, &*self.env),
            None => Config::parse(EMBEDDED_DEFAULTS, "built-in defaults", true, &*self.env),
        }
    }
}

/// What a successful reload put in force.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReloadReport {
    pub generation: u64,
    /// sha256 over every integration's mapping file (see [`Versions`]).
    pub mapping_digest: String,
    pub integrations: usize,
    pub mappings_checked: usize,
    pub fixtures_run: usize,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the configuration is invalid:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
    #[error("restart needed to change:\n{}", .0.join("\n"))]
    RestartNeeded(Vec<String>),
}

impl ReloadError {
    fn problems(&self) -> &[String] {
        match self {
            ReloadError::Invalid(p) | ReloadError::RestartNeeded(p) => p,
        }
    }
}

/// The mapping version in force: the configuration generation (1 at start, one more per
/// successful reload) and the sha256 of each mapping file.
#[derive(Debug, Clone, Default)]
pub struct Versions {
    pub generation: u64,
    /// `sha256:<hex>` over the sorted (integration, file digest) pairs.
    pub digest: String,
    /// Per integration: `sha256:<hex>` of its mapping file.
    pub files: BTreeMap<String, String>,
    pub loaded_at: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compiles every integration's mapping, noting its file digest; every broken file is
/// reported.
pub(crate) fn build_integrations(
    config: &Config,
    generation: u64,
) -> Result<(HashMap<String, IntegrationRuntime>, Versions), Vec<String>> {
    let mut map = HashMap::new();
    let mut files = BTreeMap::new();
    let mut errors = Vec::new();
    for it in &config.integrations {
        // Read once: the digest is of exactly the text that was compiled.
        let loaded = std::fs::read_to_string(&it.mapping)
            .map_err(|_| MappingPlan::load(&it.mapping).err())
            .and_then(|text| {
                MappingPlan::from_str(&text, &it.mapping.display().to_string())
                    .map(|plan| (plan, sha256_hex(text.as_bytes())))
                    .map_err(Some)
            });
        match loaded {
            Ok((plan, digest)) => {
                let file = it
                    .mapping
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let version = format!(
                    "{file} sha256:{} (configuration generation {generation})",
                    &digest[..12]
                );
                files.insert(it.name.clone(), format!("sha256:{digest}"));
                map.insert(
                    it.name.clone(),
                    IntegrationRuntime {
                        name: it.name.clone(),
                        customer_number: it.customer_number.clone(),
                        api_key: it.api_key.clone(),
                        client_cert: it.client_cert.clone(),
                        plan: Arc::new(plan),
                        mapping_version: version.into(),
                    },
                );
            }
            Err(Some(e)) => errors.push(format!("integration {:?}: {e}", it.name)),
            Err(None) => errors.push(format!(
                "integration {:?}: cannot read {}",
                it.name,
                it.mapping.display()
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let all: String = files.iter().map(|(n, d)| format!("{n}={d}\n")).collect();
    let versions = Versions {
        generation,
        digest: format!("sha256:{}", sha256_hex(all.as_bytes())),
        files,
        loaded_at: jiff::Timestamp::now().to_string(),
    };
    Ok((map, versions))
}

/// The delivery targets of the integrations that post updates back.
pub(crate) fn build_targets(
    config: &Config,
    integrations: &HashMap<String, IntegrationRuntime>,
) -> Result<HashMap<String, ToolTarget>, Vec<String>> {
    let mut targets = HashMap::new();
    let mut errors = Vec::new();
    for it in &config.integrations {
        let (Some(d), Some(rt)) = (&it.delivery, integrations.get(&it.name)) else {
            continue;
        };
        let plan = rt.plan.clone();
        let render: crate::delivery::tool::Renderer = Arc::new(move |u| {
            plan.render_update(&crate::edge::legacy::update_view(u))
                .map_err(|e| e.to_string())
        });
        match Destination::new(&d.url, &d.auth, &rt.plan.update_headers()) {
            Ok(to) => {
                targets.insert(
                    it.name.clone(),
                    ToolTarget {
                        to,
                        delivery: d.clone(),
                        policy: RetryPolicy::from(&d.retry),
                        render,
                    },
                );
            }
            Err(e) => errors.push(format!("integrations.{}.delivery: {e}", it.name)),
        }
    }
    if errors.is_empty() {
        Ok(targets)
    } else {
        Err(errors)
    }
}

/// Every setting that the running components were built from and a reload cannot
/// change, each named with its old and new value where they are not secret.
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut differs = |what: &str, changed: bool| {
        if changed {
            out.push(format!("{what} changed: restart needed"));
        }
    };
    differs(
        &format!(
            "server.http_listen ({} -> {})",
            old.http_listen, new.http_listen
        ),
        old.http_listen != new.http_listen,
    );
    differs(
        &format!(
            "server.grpc_listen ({} -> {})",
            old.grpc_listen, new.grpc_listen
        ),
        old.grpc_listen != new.grpc_listen,
    );
    differs(
        &format!(
            "store.engine ({} -> {})",
            old.store.engine.name(),
            new.store.engine.name()
        ),
        old.store.engine != new.store.engine,
    );
    differs(
        &format!(
            "store.path ({} -> {})",
            old.store.path.display(),
            new.store.path.display()
        ),
        old.store.path != new.store.path,
    );
    // The rest is compared as a whole section (none of it is secret in the Debug form).
    let other_store = |c: &Config| (c.store.cache_mb, c.store.retention_days);
    differs(
        "store (cache_mb, retention_days)",
        other_store(old) != other_store(new),
    );
    let server = |c: &Config| {
        let mut s = c.server.clone();
        s.tls = None;
        format!("{s:?}")
    };
    differs("server (limits and timeouts)", server(old) != server(new));
    differs(
        "server.tls (turned on or off)",
        old.server.tls.is_some() != new.server.tls.is_some(),
    );
    differs(
        "loomis",
        old.loomis != new.loomis
            || old.loomis_auth != new.loomis_auth
            || format!("{:?}", old.loomis_section) != format!("{:?}", new.loomis_section),
    );
    differs(
        "simulator",
        format!("{:?}", old.simulator) != format!("{:?}", new.simulator),
    );
    differs("log", format!("{:?}", old.log) != format!("{:?}", new.log));
    differs("telemetry", old.traces != new.traces);
    differs("admin.token_env", old.admin_token != new.admin_token);
    differs(
        "admin.read_only_token_env",
        old.read_only_token != new.read_only_token,
    );
    // The built-in simulator was given the callback token when it started.
    differs(
        "callbacks.auth (the built-in simulator calls back with the old token)",
        new.loomis == crate::config::LoomisTarget::Simulator
            && !new.embedded
            && old.callback_auth != new.callback_auth,
    );
    let names = |c: &Config| {
        c.integrations
            .iter()
            .map(|i| (i.name.clone(), i.delivery.is_some()))
            .collect::<BTreeMap<_, _>>()
    };
    let (was, now) = (names(old), names(new));
    for name in was.keys().filter(|n| !now.contains_key(*n)) {
        out.push(format!("integration {name:?} removed: restart needed"));
    }
    for name in now.keys().filter(|n| !was.contains_key(*n)) {
        out.push(format!("integration {name:?} added: restart needed"));
    }
    for (name, delivers) in &now {
        if was.get(name).is_some_and(|d| d != delivers) {
            out.push(format!(
                "integrations {name:?}: [integrations.delivery] added or removed: restart needed"
            ));
        }
    }
    out
}

/// Everything a reload replaces, owned by the running app.
pub(crate) struct LiveSet {
    pub(crate) source: ConfigSource,
    pub(crate) integrations: LiveIntegrations,
    pub(crate) targets: Live<HashMap<String, ToolTarget>>,
    pub(crate) callbacks: Live<CallbackPolicy>,
    /// The TLS side of each listener (HTTP, gRPC) when TLS is on.
    pub(crate) tls: Vec<Arc<TlsServer>>,
    /// The configuration in force and its versions; also serializes reloads.
    pub(crate) current: tokio::sync::Mutex<Config>,
    pub(crate) versions: Mutex<Versions>,
}

impl LiveSet {
    /// Sets the version metrics (at start and after each reload).
    pub(crate) fn publish(&self, old_digest: Option<&str>) {
        let v = self
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        metrics::gauge!("gateway_config_generation").set(v.generation as f64);
        if let Some(old) = old_digest.filter(|o| *o != v.digest) {
            metrics::gauge!("gateway_config_info", "mapping_digest" => old.to_string()).set(0.0);
        }
        metrics::gauge!("gateway_config_info", "mapping_digest" => v.digest.clone()).set(1.0);
    }

    /// Re-reads and validates everything; swaps it in only if all of it is good.
    pub(crate) async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let mut current = self.current.lock().await;
        let source = self.source.clone();
        let generation = self
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation
            + 1;
        let old = current.clone();
        let tls = self.tls.clone();
        // Files and fixtures: off the async threads.
        let prepared =
            tokio::task::spawn_blocking(move || prepare(&source, &old, &tls, generation))
                .await
                .map_err(|e| ReloadError::Invalid(vec![format!("the reload task failed: {e}")]))?;
        let result = match prepared {
            Ok(p) => {
                let old_digest = {
                    let mut v = self.versions.lock().unwrap_or_else(|e| e.into_inner());
                    std::mem::replace(&mut *v, p.versions.clone()).digest
                };
                self.integrations.set(p.integrations);
                self.targets.set(p.targets);
                self.callbacks.set(p.callbacks);
                for (server, tls) in self.tls.iter().zip(p.tls) {
                    server.install(tls);
                }
                *current = p.config;
                self.publish(Some(&old_digest));
                Ok(p.report)
            }
            Err(e) => Err(e),
        };
        match &result {
            Ok(r) => {
                metrics::counter!("gateway_config_reloads_total").increment(1);
                tracing::info!(generation = r.generation, mapping_digest = %r.mapping_digest,
                    integrations = r.integrations, fixtures = r.fixtures_run, "configuration reloaded");
            }
            Err(e) => {
                metrics::counter!("gateway_config_reload_failures_total").increment(1);
                tracing::error!(error = %e, "reload refused; the running configuration keeps serving");
            }
        }
        result
    }

    /// The version in force, for `/v1/admin/config`.
    pub(crate) fn status(&self) -> serde_json::Value {
        let v = self
            .versions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        serde_json::json!({
            "generation": v.generation,
            "mapping_digest": v.digest,
            "loaded_at": v.loaded_at,
            "mappings": v.files,
            "source": self.source.path.as_ref().map(|p| p.display().to_string())
                .unwrap_or_else(|| "built-in defaults".into()),
        })
    }
}

/// A new version, checked and built, not yet in force.
struct Prepared {
    config: Config,
    integrations: HashMap<String, IntegrationRuntime>,
    targets: HashMap<String, ToolTarget>,
    callbacks: CallbackPolicy,
    tls: Vec<crate::tls::Prepared>,
    versions: Versions,
    report: ReloadReport,
}

fn prepare(
    source: &ConfigSource,
    old: &Config,
    tls: &[Arc<TlsServer>],
    generation: u64,
) -> Result<Prepared, ReloadError> {
    let mut config = source.read().map_err(|e| {
        ReloadError::Invalid(
            e.problems
                .iter()
                .map(|p| format!("{}: {p}", e.origin))
                .collect(),
        )
    })?;
    if config.embedded {
        // The built-in defaults draw a new random callback token at every read; the
        // simulator knows the first one.
        config.callback_auth = old.callback_auth.clone();
    }
    let restart = restart_needed(old, &config);
    if !restart.is_empty() {
        return Err(ReloadError::RestartNeeded(restart));
    }
    let mut problems = Vec::new();
    let built = build_integrations(&config, generation).map_err(|e| problems.extend(e));
    // The same checks as `mapping check`: every mapping and its golden fixtures.
    let mut files: Vec<PathBuf> = config
        .integrations
        .iter()
        .map(|i| i.mapping.clone())
        .collect();
    files.sort();
    files.dedup();
    let check = crate::mapping::check::check_paths(&files);
    problems.extend(check.errors.iter().cloned());
    let mut prepared_tls = Vec::new();
    if let Some(section) = &config.server.tls {
        for server in tls {
            match server.prepare(section) {
                Ok(p) => prepared_tls.push(p),
                Err(e) => problems.push(e.to_string()),
            }
        }
    }
    let (integrations, versions) = match built {
        Ok(b) if problems.is_empty() => b,
        _ => {
            problems.dedup();
            return Err(ReloadError::Invalid(problems));
        }
    };
    let targets = build_targets(&config, &integrations).map_err(ReloadError::Invalid)?;
    let report = ReloadReport {
        generation,
        mapping_digest: versions.digest.clone(),
        integrations: integrations.len(),
        mappings_checked: check.mappings_checked,
        fixtures_run: check.fixtures_run,
    };
    Ok(Prepared {
        callbacks: CallbackPolicy {
            auth: config.callback_auth.clone(),
            client_cert: config.callback_client_cert.clone(),
        },
        config,
        integrations,
        targets,
        tls: prepared_tls,
        versions,
        report,
    })
}

/// The admin routes' handle on reload.
pub(crate) struct Control(pub(crate) Arc<LiveSet>);

impl ConfigControl for Control {
    fn reload(
        &self,
    ) -> futures::future::BoxFuture<'static, Result<serde_json::Value, ReloadRefusal>> {
        let live = self.0.clone();
        Box::pin(async move {
            match live.reload().await {
                Ok(r) => Ok(serde_json::to_value(r).unwrap_or_default()),
                Err(e) => Err(ReloadRefusal {
                    restart_needed: matches!(e, ReloadError::RestartNeeded(_)),
                    problems: e.problems().to_vec(),
                }),
            }
        })
    }

    fn status(&self) -> serde_json::Value {
        self.0.status()
    }
}

#[cfg(test)]
mod tests {
    use super::restart_needed;
    use crate::config::Config;

    #[test]
    fn turning_traces_on_or_changing_them_needs_a_restart() {
        let base = r#"
[callbacks]
auth = { type = "none" }
[[integrations]]
name = "servicenow"
customer_number = "A123456"
mapping = "mappings/servicenow.toml"
api_key_env = "KEY"
"#;
        let env = |k: &str| (k == "KEY").then(|| "k".to_string());
        let parse = |extra: &str| {
            Config::parse(&format!("{base}{extra}"), "gateway.toml", false, &env).unwrap()
        };
        let off = parse("");
        let on = parse("[telemetry]\notlp_endpoint = \"http://collector:4318\"\n");
        let sampled =
            parse("[telemetry]\notlp_endpoint = \"http://collector:4318\"\nsample_ratio = 0.5\n");
        assert!(restart_needed(&off, &off).is_empty());
        for (old, new) in [(&off, &on), (&on, &off), (&on, &sampled)] {
            assert_eq!(
                restart_needed(old, new),
                vec!["telemetry changed: restart needed".to_string()]
            );
        }
    }
}
