//! Builds every component from a [`Config`], runs them, and shuts them down in order:
//! stop accepting, let in-flight requests and deliveries finish (bounded by the grace
//! period), then flush and close the store.

mod reload;

pub use reload::{ConfigSource, EnvFn, ReloadError, ReloadReport};

use crate::config::{Auth, Config, LoomisTarget};
use crate::delivery::loomis::LoomisRunner;
use crate::delivery::scheduler::Scheduler;
use crate::delivery::tool::ToolRunner;
use crate::delivery::{Destination, RetryPolicy};
use crate::edge::http::HttpState;
use crate::gateway::{Gateway, IntegrationInfo};
use crate::intake::Integrations;
use crate::live::Live;
use crate::simulator::{Simulator, SimulatorConfig, SimulatorHandle};
use crate::store::records::Target;
use crate::store::Store;
use anyhow::Context;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running gateway.
pub struct Running {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub gateway: Gateway,
    pub simulator: Option<SimulatorHandle>,
    shutdown: CancellationToken,
    servers: Vec<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    grace: Duration,
    /// What a reload replaces (see [`reload`]).
    live: Arc<reload::LiveSet>,
}

/// Loads every integration's mapping, reporting every broken file at once.
pub fn load_integrations(config: &Config) -> anyhow::Result<Integrations> {
    Ok(Arc::new(load_versioned(config)?.0))
}

/// [`load_integrations`] with the version of what was loaded (generation 1).
fn load_versioned(
    config: &Config,
) -> anyhow::Result<(
    std::collections::HashMap<String, crate::intake::IntegrationRuntime>,
    reload::Versions,
)> {
    let loaded = reload::build_integrations(config, 1)
        .map_err(|errors| anyhow::anyhow!("cannot load mappings:\n{}", errors.join("\n")))?;
    let mut customers = HashSet::new();
    for it in &config.integrations {
        if !customers.insert(&it.customer_number) {
            tracing::warn!(customer_number = %it.customer_number,
                "several integrations share this customer number: a reference used by one is refused for the others");
        }
    }
    Ok(loaded)
}

/// Re-reads the configuration, every mapping and secret, and the TLS files; puts them
/// in force only if all of them pass the start-up checks and `mapping check` (fixtures
/// included). On any error the running version keeps serving. SIGHUP and
/// `POST /v1/admin/reload` both come here.
pub async fn reload(running: &Running) -> Result<ReloadReport, ReloadError> {
    running.live.reload().await
}

/// What is built from the configuration before anything is opened or bound: every
/// problem (a mapping that does not compile, a simulator option, delivery credentials
/// that cannot be a header, a certificate that does not load) is reported at once, and
/// a start that fails here leaves no store lock or listener behind.
struct Prepared {
    integrations: std::collections::HashMap<String, crate::intake::IntegrationRuntime>,
    versions: reload::Versions,
    /// Where Dispatches go.
    loomis: Loomis,
    /// Tool delivery targets by integration name.
    tools: std::collections::HashMap<String, crate::delivery::tool::ToolTarget>,
    /// The HTTP and gRPC listeners' TLS, when `[server.tls]` is set.
    tls: Option<(Arc<crate::tls::TlsServer>, Arc<crate::tls::TlsServer>)>,
}

/// The real Loomis, or the built-in simulator's configuration.
enum Loomis {
    /// The configured endpoint, its credentials already in header form.
    Url(Destination),
    Simulator(Box<SimulatorConfig>),
}

fn prepare(config: &Config) -> anyhow::Result<Prepared> {
    let mut problems = Vec::new();
    let loaded = load_versioned(config)
        .map_err(|e| problems.push(format!("{e:#}")))
        .ok();
    let loomis = match &config.loomis {
        LoomisTarget::Simulator => SimulatorConfig::from_section(&config.simulator)
            .map(|c| Loomis::Simulator(Box::new(c)))
            .map_err(|p| problems.extend(p))
            .ok(),
        LoomisTarget::Url(u) => {
            Destination::new(u, &config.loomis_auth, crate::delivery::loomis::HEADERS)
                .map(Loomis::Url)
                .map_err(|e| problems.push(format!("loomis.auth: {e}")))
                .ok()
        }
    };
    let tools = loaded.as_ref().and_then(|(integrations, _)| {
        reload::build_targets(config, integrations)
            .map_err(|e| problems.extend(e))
            .ok()
    });
    let tls = match &config.server.tls {
        None => Some(None),
        Some(section) => {
            let http = crate::tls::TlsServer::new("http", section, vec![b"h2", b"http/1.1"]);
            let grpc = crate::tls::TlsServer::new("grpc", section, vec![b"h2"]);
            match (http, grpc) {
                (Ok(h), Ok(g)) => Some(Some((h, g))),
                (Err(e), _) | (_, Err(e)) => {
                    problems.push(format!("server.tls: {e}"));
                    None
                }
            }
        }
    };
    match (loaded, loomis, tools, tls) {
        (Some((integrations, versions)), Some(loomis), Some(tools), Some(tls))
            if problems.is_empty() =>
        {
            Ok(Prepared {
                integrations,
                versions,
                loomis,
                tools,
                tls,
            })
        }
        _ => anyhow::bail!("{}", problems.join("\n")),
    }
}

/// Starts the gateway: store, schedulers, HTTP and gRPC listeners, and the built-in
/// simulator when `loomis.url = "simulator"`. Returns once everything listens.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let source = ConfigSource::of(&config);
    start_from(config, source).await
}

/// [`start`], with reloads reading the configuration from `source`.
pub async fn start_from(config: Config, source: ConfigSource) -> anyhow::Result<Running> {
    let Prepared {
        integrations,
        versions,
        loomis,
        tools,
        tls,
    } = prepare(&config)?;
    // The recorder first: the store, the gateway and the runners take their metric
    // handles (the store sets gateway_store_healthy) when they are built.
    let metrics = crate::edge::http::metrics_handle();
    crate::ops_metrics::register();
    let store = Store::open_config(&config.store, config.store_url.as_ref())?;
    let infos = config
        .integrations
        .iter()
        .map(|i| IntegrationInfo {
            name: i.name.clone(),
            customer_number: i.customer_number.clone(),
            delivers: i.delivery.is_some(),
        })
        .collect();
    let shutdown = CancellationToken::new();
    let gateway = Gateway::new(store.clone(), infos).stopping_with(shutdown.clone());
    let ready = Arc::new(AtomicBool::new(false));

    let http_listener = crate::edge::listen::bind(config.http_listen).with_context(|| {
        format!(
            "cannot listen on {} (server.http_listen)",
            config.http_listen
        )
    })?;
    let http_addr = http_listener.local_addr()?;
    let grpc_listener = crate::edge::listen::bind(config.grpc_listen).with_context(|| {
        format!(
            "cannot listen on {} (server.grpc_listen)",
            config.grpc_listen
        )
    })?;
    let grpc_addr = grpc_listener.local_addr()?;

    // Loomis: the real endpoint, or the built-in simulator calling us back on loopback.
    let (loomis_to, simulator) = match loomis {
        Loomis::Url(to) => (to, None),
        Loomis::Simulator(sim_config) => {
            let sim_listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
            let sim = Simulator::start(*sim_config, sim_listener).await?;
            let token = match &config.callback_auth {
                Auth::Bearer(t) => Some(t.expose().to_string()),
                Auth::None => None,
                _ => anyhow::bail!(
                    "with loomis.url = \"simulator\", callbacks.auth must be bearer or none"
                ),
            };
            let cb_host = if http_addr.ip().is_unspecified() {
                SocketAddr::from(([127, 0, 0, 1], http_addr.port()))
            } else {
                http_addr
            };
            sim.set_callback(format!("http://{cb_host}/v1/loomis/messages"), token);
            if config.server.tls.is_some() {
                tracing::warn!("the built-in simulator calls back over plain HTTP, which the TLS listener refuses: set simulator.ack = \"body\" (callbacks then fail and are logged)");
            }
            tracing::warn!(url = %sim.incidents_url(),
                "LOOMIS SIMULATOR IN USE: no message leaves this machine; set loomis.url in gateway.toml to talk to Loomis");
            let url = url::Url::parse(&sim.incidents_url())?;
            let to = Destination::new(&url, &config.loomis_auth, crate::delivery::loomis::HEADERS)
                .map_err(anyhow::Error::msg)?;
            (to, Some(sim))
        }
    };
    if config.embedded {
        tracing::warn!("running on the built-in defaults; integrations without a *_API_KEY variable accept the demo key \"{}\"", crate::config::DEMO_API_KEY);
    }

    // Delivery: schedulers attach to the store before reading the outbox, so no job
    // committed in between is missed (duplicates are dropped by id).
    let mut workers = Vec::new();
    let (loomis_tx, loomis_rx) = tokio::sync::mpsc::unbounded_channel();
    store.attach_jobs(Target::Loomis, loomis_tx);
    let (tool_tx, tool_rx) = tokio::sync::mpsc::unbounded_channel();
    store.attach_jobs(Target::Tool, tool_tx);
    let outbox = store.jobs()?;
    let (loomis_jobs, tool_jobs): (Vec<_>, Vec<_>) =
        outbox.into_iter().partition(|j| j.target == Target::Loomis);
    if !loomis_jobs.is_empty() || !tool_jobs.is_empty() {
        tracing::info!(
            loomis = loomis_jobs.len(),
            tools = tool_jobs.len(),
            "resuming deliveries from the outbox"
        );
    }
    let ls = &config.loomis_section;
    // One pool of connections for Loomis and the tools.
    let client = crate::client::Client::new(
        Duration::from_millis(ls.connect_timeout_ms),
        Duration::from_millis(ls.pool_idle_timeout_ms),
    );
    let loomis_runner = LoomisRunner {
        gateway: gateway.clone(),
        client: client.clone(),
        to: loomis_to,
        timeout: Duration::from_millis(ls.timeout_ms),
        policy: RetryPolicy::from(&config.loomis_retry),
        concurrency: ls.concurrency,
        recovered: Mutex::new(
            loomis_jobs
                .iter()
                .filter(|j| j.kind == crate::store::records::JobKind::Dispatch)
                .map(|j| j.id)
                .collect(),
        ),
        metrics: Arc::new(crate::delivery::loomis::AttemptMetrics::default()),
    };
    workers.push(tokio::spawn(
        Scheduler::new("loomis", Arc::new(loomis_runner)).run(
            loomis_jobs,
            loomis_rx,
            shutdown.clone(),
        ),
    ));
    let targets = Live::new(tools);
    let tool_runner = ToolRunner {
        gateway: gateway.clone(),
        client,
        targets: targets.clone(),
    };
    workers.push(tokio::spawn(
        Scheduler::new("tools", Arc::new(tool_runner)).run(tool_jobs, tool_rx, shutdown.clone()),
    ));

    // Health comes back by itself when the disk does (see Store::probe_while_failing).
    tokio::spawn(
        store
            .clone()
            .probe_while_failing(Duration::from_secs(5), shutdown.clone()),
    );

    if config.store.retention_days > 0 {
        // Not joined at shutdown: a pass cut short by the store closing is simply
        // repeated at the next start.
        tokio::spawn(crate::retention::run(
            store.clone(),
            Duration::from_secs(u64::from(config.store.retention_days) * 86_400),
            shutdown.clone(),
        ));
    }

    // HTTP: Loomis callbacks, legacy XML routes, health, metrics, operators.
    let live_integrations = Live::new(integrations);
    let live = Arc::new(reload::LiveSet {
        source,
        integrations: live_integrations.clone(),
        targets,
        callbacks: Live::new(crate::edge::http::CallbackPolicy {
            auth: config.callback_auth.clone(),
            client_cert: config.callback_client_cert.clone(),
        }),
        tls: tls
            .iter()
            .flat_map(|(h, g)| [h.clone(), g.clone()])
            .collect(),
        current: tokio::sync::Mutex::new(config.clone()),
        versions: std::sync::Mutex::new(versions),
    });
    live.publish(None);
    if let (Some((h, g)), Some(section)) = (&tls, &config.server.tls) {
        let every = Duration::from_secs(section.watch_secs);
        h.clone().watch(every, shutdown.clone());
        g.clone().watch(every, shutdown.clone());
    }
    let http_state = HttpState {
        gateway: gateway.clone(),
        callback_auth: live.callbacks.clone(),
        admin_token: config.admin_token.clone(),
        control: Some(Arc::new(reload::Control(live.clone()))),
        ready: ready.clone(),
        metrics,
    };
    let legacy = crate::edge::legacy::routes(crate::edge::legacy::LegacyState {
        gateway: gateway.clone(),
        integrations: live_integrations.clone(),
        limits: crate::edge::legacy::Limits::from(&config.server),
    });
    let console = crate::edge::console::routes(crate::edge::console::ConsoleState {
        gateway: gateway.clone(),
        integrations: live_integrations.clone(),
        sessions: Arc::new(crate::edge::console::session::Sessions::new(
            config.admin_token.clone(),
            config.read_only_token.clone(),
            config.server.tls.is_some(),
        )),
        metrics: http_state.metrics.clone(),
        store_path: config.store.path.clone(),
    });
    let router = crate::edge::http::layered(
        crate::edge::http::routes(http_state, config.server.max_callback_bytes)
            .merge(legacy)
            .merge(console),
        Duration::from_millis(config.server.request_timeout_ms),
    );
    let servers = vec![
        tokio::spawn(crate::edge::http::serve(
            http_listener,
            router,
            shutdown.clone(),
            Duration::from_millis(config.server.header_timeout_ms),
            tls.as_ref().map(|(h, _)| h.clone()),
        )),
        crate::edge::grpc::serve(
            grpc_listener,
            gateway.clone(),
            live_integrations,
            shutdown.clone(),
            tls.as_ref().map(|(_, g)| g.clone()),
        ),
    ];
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(http = %http_addr, grpc = %grpc_addr, tls = tls.is_some(), store = %config.store.path.display(), integrations = config.integrations.len(), "gateway listening");
    Ok(Running {
        http_addr,
        grpc_addr,
        gateway,
        simulator,
        shutdown,
        servers,
        workers,
        grace: Duration::from_millis(config.server.shutdown_grace_ms),
        live,
    })
}

impl Running {
    /// A token that, when cancelled, begins shutdown.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, waits for in-flight work up to the grace period, flushes the store.
    /// The error is the store's, if its last flush failed.
    pub async fn stop(self) -> Result<(), crate::store::StoreError> {
        self.shutdown.cancel();
        let deadline = tokio::time::Instant::now() + self.grace;
        for h in self.servers.into_iter().chain(self.workers) {
            if tokio::time::timeout_at(deadline, h).await.is_err() {
                tracing::warn!("shutdown grace period over; abandoning in-flight work (it stays in the outbox)");
                break;
            }
        }
        if let Some(sim) = self.simulator {
            sim.shutdown().await;
        }
        match self.gateway.store().close().await {
            Ok(()) => {
                tracing::info!("gateway stopped; store flushed");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "gateway stopped; the store's last flush failed (what was acknowledged had been flushed before)");
                Err(e)
            }
        }
    }
}

/// Runs until SIGTERM or Ctrl-C, then shuts down gracefully. SIGHUP reloads.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    // Listening for signals before "gateway listening" is logged: a SIGTERM sent by
    // whoever waits for that line must not find the default action (exit 143), and
    // SIGHUP's default action would end the process.
    let stop = shutdown_signal();
    let mut hangups = Hangups::new();
    let running = start(config).await?;
    // systemd (Type=notify): ready now that the store is open and the listeners bound.
    crate::systemd::ready(running.http_addr, running.grpc_addr);
    let _watchdog = crate::systemd::Watchdog::start(running.gateway.store().clone());
    let token = running.shutdown_token();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => { tracing::info!("shutdown requested"); break }
            _ = token.cancelled() => break,
            _ = hangups.next() => {
                tracing::info!("SIGHUP: reloading the configuration");
                crate::systemd::reloading();
                // The outcome is logged and counted by the reload itself.
                let status = match reload(&running).await {
                    Ok(_) => "configuration reloaded".to_string(),
                    Err(e) => format!("reload refused, the running configuration serves: {e}"),
                };
                crate::systemd::reloaded(&status);
            }
        }
    }
    crate::systemd::stopping();
    running.stop().await?;
    Ok(())
}

/// SIGHUP as a stream of reload requests; one that never fires where there is none.
struct Hangups(#[cfg(unix)] Option<tokio::signal::unix::Signal>);

impl Hangups {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Hangups(signal(SignalKind::hangup()).ok())
        }
        #[cfg(not(unix))]
        Hangups()
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(s) = &mut self.0 {
            if s.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT). The handlers are in place when this returns
/// (not at the first poll), so call it before announcing readiness. Needs a runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (term, int) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = wait(term) => {}
                _ = wait(int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
