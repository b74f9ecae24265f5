//! Builds every component from a [`Config`], runs them, and shuts them down in order:
//! stop accepting, let in-flight requests and deliveries finish (bounded by the grace
//! period), then flush and close the store.

use crate::config::{Auth, Config, LoomisTarget};
use crate::delivery::loomis::LoomisRunner;
use crate::delivery::scheduler::Scheduler;
use crate::delivery::tool::{ToolRunner, ToolTarget};
use crate::delivery::{Destination, RetryPolicy};
use crate::edge::http::HttpState;
use crate::gateway::{Gateway, IntegrationInfo};
use crate::intake::{IntegrationRuntime, Integrations};
use crate::mapping::MappingPlan;
use crate::simulator::{Simulator, SimulatorConfig, SimulatorHandle};
use crate::store::records::Target;
use crate::store::Store;
use anyhow::Context;
use std::collections::{HashMap, HashSet};
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
}

/// Loads every integration's mapping, reporting every broken file at once.
pub fn load_integrations(config: &Config) -> anyhow::Result<Integrations> {
    let mut map = HashMap::new();
    let mut errors = Vec::new();
    for it in &config.integrations {
        match MappingPlan::load(&it.mapping) {
            Ok(plan) => {
                map.insert(
                    it.name.clone(),
                    IntegrationRuntime {
                        name: it.name.clone(),
                        customer_number: it.customer_number.clone(),
                        api_key: it.api_key.clone(),
                        plan: Arc::new(plan),
                    },
                );
            }
            Err(e) => errors.push(format!("integration {:?}: {e}", it.name)),
        }
    }
    if !errors.is_empty() {
        anyhow::bail!("cannot load mappings:\n{}", errors.join("\n"));
    }
    let mut customers = HashSet::new();
    for it in &config.integrations {
        if !customers.insert(&it.customer_number) {
            tracing::warn!(customer_number = %it.customer_number,
                "several integrations share this customer number: a reference used by one is refused for the others");
        }
    }
    Ok(Arc::new(map))
}

fn simulator_config(config: &Config) -> anyhow::Result<SimulatorConfig> {
    use clap::ValueEnum;
    let s = &config.simulator;
    let mut sim = SimulatorConfig::default();
    if let Some(a) = &s.ack {
        sim.ack =
            ValueEnum::from_str(a, true).map_err(|e| anyhow::anyhow!("simulator.ack: {e}"))?;
    }
    if let Some(o) = &s.outcome {
        sim.outcome =
            ValueEnum::from_str(o, true).map_err(|e| anyhow::anyhow!("simulator.outcome: {e}"))?;
    }
    if let Some(ms) = s.accept_after_ms {
        sim.accept_after = Duration::from_millis(ms);
    }
    if let Some(ms) = s.close_after_ms {
        sim.close_after = Duration::from_millis(ms);
    }
    if let Some(d) = &s.devices {
        sim.devices = d.clone();
    }
    if let Some(f) = &s.fault_codes {
        sim.fault_codes = f.clone();
    }
    if let Some(r) = s.fail_rate {
        sim.faults.fail_rate = r;
    }
    if let Some(r) = s.timeout_rate {
        sim.faults.timeout_rate = r;
    }
    let problems = sim.problems();
    if !problems.is_empty() {
        anyhow::bail!("simulator: {}", problems.join("; "));
    }
    Ok(sim)
}

/// Starts the gateway: store, schedulers, HTTP and gRPC listeners, and the built-in
/// simulator when `loomis.url = "simulator"`. Returns once everything listens.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let integrations = load_integrations(&config)?;
    // The recorder first: the store, the gateway and the runners take their metric
    // handles (the store sets gateway_store_healthy) when they are built.
    let metrics = crate::edge::http::metrics_handle();
    let store = Store::open_configured(&config.store)?;
    let infos = config
        .integrations
        .iter()
        .map(|i| IntegrationInfo {
            name: i.name.clone(),
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
    let (loomis_url, simulator) = match &config.loomis {
        LoomisTarget::Url(u) => (u.clone(), None),
        LoomisTarget::Simulator => {
            let sim_listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
            let sim = Simulator::start(simulator_config(&config)?, sim_listener).await?;
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
            tracing::warn!(url = %sim.incidents_url(),
                "LOOMIS SIMULATOR IN USE: no message leaves this machine; set loomis.url in gateway.toml to talk to Loomis");
            (url::Url::parse(&sim.incidents_url())?, Some(sim))
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
        to: Destination::new(
            &loomis_url,
            &config.loomis_auth,
            crate::delivery::loomis::HEADERS,
        )
        .map_err(anyhow::Error::msg)?,
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
    let mut targets = HashMap::new();
    for it in &config.integrations {
        if let Some(d) = &it.delivery {
            let plan = integrations[&it.name].plan.clone();
            let render: crate::delivery::tool::Renderer = Arc::new(move |u| {
                plan.render_update(&crate::edge::legacy::update_view(u))
                    .map_err(|e| e.to_string())
            });
            targets.insert(
                it.name.clone(),
                ToolTarget {
                    to: Destination::new(
                        &d.url,
                        &d.auth,
                        integrations[&it.name].plan.update_headers(),
                    )
                    .map_err(anyhow::Error::msg)?,
                    delivery: d.clone(),
                    policy: RetryPolicy::from(&d.retry),
                    render,
                },
            );
        }
    }
    let tool_runner = ToolRunner {
        gateway: gateway.clone(),
        client,
        targets: Arc::new(targets),
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
    let http_state = HttpState {
        gateway: gateway.clone(),
        callback_auth: config.callback_auth.clone(),
        admin_token: config.admin_token.clone(),
        ready: ready.clone(),
        metrics,
    };
    let legacy = crate::edge::legacy::routes(crate::edge::legacy::LegacyState {
        gateway: gateway.clone(),
        integrations: integrations.clone(),
        limits: crate::edge::legacy::Limits::from(&config.server),
    });
    let router = crate::edge::http::layered(
        crate::edge::http::routes(http_state, config.server.max_callback_bytes).merge(legacy),
        Duration::from_millis(config.server.request_timeout_ms),
    );
    let servers = vec![
        tokio::spawn(crate::edge::http::serve(
            http_listener,
            router,
            shutdown.clone(),
            Duration::from_millis(config.server.header_timeout_ms),
        )),
        crate::edge::grpc::serve(
            grpc_listener,
            gateway.clone(),
            integrations.clone(),
            shutdown.clone(),
        ),
    ];
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(http = %http_addr, grpc = %grpc_addr, store = %config.store.path.display(), integrations = config.integrations.len(), "gateway listening");
    Ok(Running {
        http_addr,
        grpc_addr,
        gateway,
        simulator,
        shutdown,
        servers,
        workers,
        grace: Duration::from_millis(config.server.shutdown_grace_ms),
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

/// Runs until SIGTERM or Ctrl-C, then shuts down gracefully.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    // Listening for signals before "gateway listening" is logged: a SIGTERM sent by
    // whoever waits for that line must not find the default action (exit 143).
    let signal = shutdown_signal();
    let running = start(config).await?;
    let token = running.shutdown_token();
    tokio::select! {
        _ = signal => tracing::info!("shutdown requested"),
        _ = token.cancelled() => {}
    }
    running.stop().await?;
    Ok(())
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
