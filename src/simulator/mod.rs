//! A built-in Loomis SafePoint, for demos, tests and onboarding rehearsals.
//!
//! It accepts `Dispatch` and customer `Cancel` messages as Loomis would (strictly
//! checked against the vendor spec), answers ACK/NAK in the response body, by callback
//! or both, then plays each incident's script of `Accept` and `Close` (or a Loomis
//! `Cancel`) callbacks after configurable delays, strictly in order per incident. It
//! can be told to misbehave, at start or at run time: answer `503`, hang and drop the
//! connection, be down for a while, send callbacks twice or out of order. Every random
//! choice comes from one seeded RNG, so a run can be replayed.
//!
//! Routes, all on one listener:
//! - any path except `/_sim/...`: `POST` one Dispatch or Cancel (the incident path);
//! - `GET /_sim/state`: configuration (tokens redacted), faults, counters, as JSON;
//! - `POST /_sim/faults`: change faults, e.g. `{"fail_rate":0.2,"down_for_ms":5000}`;
//!   keys left out keep their value, `down_for_ms` starts counting now;
//! - `GET /_sim/received?limit=N`: the newest received requests.
//!
//! The control routes are never subject to faults or auth: bind the simulator to a
//! loopback address (the default) unless the network is trusted.

mod callback;
mod config;
mod incident;
mod server;
mod state;

pub use config::{
    AckMode, CallbackRetry, DownMode, Faults, FaultsPatch, Outcome, Secret, SimulatorArgs,
    SimulatorConfig, DEFAULT_DEVICES, DEFAULT_FAULT_CODES,
};
pub use state::{ReceivedKind, ReceivedMessage, SimulatorStats};

use state::Shared;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Starts simulators; see [`Simulator::start`].
pub struct Simulator;

impl Simulator {
    /// Serves `config` on `listener` until [`SimulatorHandle::shutdown`]. Fails on an
    /// invalid configuration (every problem named) or if the listener has no address.
    pub async fn start(
        config: SimulatorConfig,
        listener: TcpListener,
    ) -> std::io::Result<SimulatorHandle> {
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config)?);
        tracing::info!(
            %local_addr,
            seed = shared.seed,
            ack = ?shared.config.ack,
            outcome = ?shared.config.outcome,
            "Loomis simulator listening; POST Dispatch/Cancel to http://{local_addr}/safepoint/incidents"
        );
        let server = tokio::spawn(server::accept_loop(shared.clone(), listener));
        Ok(SimulatorHandle {
            shared,
            local_addr,
            server: Some(server),
        })
    }
}

/// A running simulator. Dropping it stops the simulator without waiting; prefer
/// [`SimulatorHandle::shutdown`], which waits for every task to end.
pub struct SimulatorHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    server: Option<JoinHandle<()>>,
}

impl SimulatorHandle {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A URL for the incident path (any path but `/_sim/...` would do).
    pub fn incidents_url(&self) -> String {
        format!("http://{}/safepoint/incidents", self.local_addr)
    }

    /// The base URL of the control API (`.../_sim/state`, `.../_sim/faults`).
    pub fn control_url(&self) -> String {
        format!("http://{}/_sim", self.local_addr)
    }

    /// Where callbacks go from now on (pending retries included), and the bearer token
    /// they carry. An invalid URL is logged and ignored.
    pub fn set_callback(&self, url: String, bearer_token: Option<String>) {
        if let Err(e) = self.shared.set_callback(url, bearer_token.map(Secret::new)) {
            tracing::error!("simulator callback URL not changed: {e}");
        }
    }

    /// Replaces the faults in force; `down_for_ms` counts from now. Out-of-range
    /// rates are logged and the change is ignored.
    pub fn set_faults(&self, faults: Faults) {
        if let Err(e) = self.shared.set_faults(faults) {
            tracing::error!("simulator faults not changed: {e}");
        }
    }

    /// The received requests still in the ring, oldest first.
    pub fn received(&self) -> Vec<ReceivedMessage> {
        let rt = self.shared.lock();
        rt.received.iter().map(|r| r.message()).collect()
    }

    /// The counters now.
    pub fn stats(&self) -> SimulatorStats {
        self.shared.stats.borrow().clone()
    }

    /// The seed in use (drawn at random when the configuration had none).
    pub fn seed(&self) -> u64 {
        self.shared.seed
    }

    /// Waits until `pred` holds for the counters, woken by each change rather than by
    /// polling; `false` if `timeout` passed first.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&SimulatorStats) -> bool,
        timeout: Duration,
    ) -> bool {
        let mut rx = self.shared.stats.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|s| pred(s)))
            .await
            .is_ok_and(|r| r.is_ok());
        reached
    }

    /// Stops accepting, drops open connections, stops every incident script and
    /// pending callback, and waits for all of it.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        if let Some(server) = self.server.take() {
            if let Err(e) = server.await {
                tracing::error!("simulator accept loop failed: {e}");
            }
        }
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        tracing::info!(local_addr = %self.local_addr, "Loomis simulator stopped");
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}
