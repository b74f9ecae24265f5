//! systemd service notifications, for `Type=notify` units (deploy/systemd): `READY=1`
//! once the store is open and both listeners are bound, `WATCHDOG=1` pings while the
//! gateway is alive, and `STOPPING=1` when shutdown begins. The messages are sent by the
//! `sd-notify` crate to the socket named by `NOTIFY_SOCKET`; outside systemd that
//! variable is unset and every function here does nothing.
//!
//! The watchdog follows the same rule as `GET /healthz`: once the store has refused
//! writes for [`crate::edge::http::STORE_FAILURE_LIVENESS`], pings stop, and systemd restarts
//! the gateway (`WatchdogSec=` with `Restart=on-failure`), as a Kubernetes liveness probe
//! would. A wedged runtime stops the pings too, since they are sent from a tokio task.

use crate::store::Store;
use sd_notify::NotifyState;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Tells systemd the gateway serves, with a status line for `systemctl status`.
pub fn ready(http: SocketAddr, grpc: SocketAddr) {
    let status = format!("serving: http {http}, grpc {grpc}");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Tells systemd the gateway has begun its graceful shutdown.
/// Tells systemd a reload began (`RELOADING=1`); [`reloaded`] ends it.
pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

/// Tells systemd a reload ended, whatever its outcome (the running version serves).
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining in-flight work"),
    ]);
}

fn send(state: &[NotifyState]) {
    // A lost notification is not worth failing over: systemd then times the start out,
    // which says more than an error here could.
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}

/// The interval between watchdog pings, from the `WATCHDOG_USEC` and `WATCHDOG_PID`
/// variables systemd sets: half the watchdog timeout, as sd_watchdog_enabled(3) advises,
/// so one late ping never trips it. `None` when the watchdog is off, the value is not a
/// positive number of microseconds, or the variables are meant for another process.
pub(crate) fn ping_interval(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != own_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

/// Whether the watchdog may ping, given how long the store has been failing: the rule of
/// `GET /healthz`, so systemd and a liveness probe restart the gateway alike.
pub(crate) fn alive(store_failing_for: Option<Duration>) -> bool {
    store_failing_for.is_none_or(|d| d < crate::edge::http::STORE_FAILURE_LIVENESS)
}

/// The watchdog pinger; dropping it stops the pings (when the process is about to exit).
pub struct Watchdog(JoinHandle<()>);

impl Watchdog {
    /// Starts pinging when systemd asked for a watchdog (`WatchdogSec=`), else `None`.
    pub fn start(store: Store) -> Option<Watchdog> {
        let every = ping_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )?;
        tracing::info!(
            every_ms = every.as_millis() as u64,
            "systemd watchdog enabled"
        );
        Some(Watchdog(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut silent = false;
            loop {
                tick.tick().await;
                let alive = alive(store.failing_for());
                if alive {
                    send(&[NotifyState::Watchdog]);
                } else if !silent {
                    tracing::error!("the store keeps failing: watchdog pings stopped, so systemd restarts the gateway");
                }
                silent = !alive;
            }
        })))
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::{alive, ping_interval};
    use crate::edge::http::STORE_FAILURE_LIVENESS;
    use std::time::Duration;

    #[test]
    fn pings_stop_once_the_store_has_failed_as_long_as_liveness_allows() {
        assert!(alive(None));
        assert!(alive(Some(Duration::from_secs(5))));
        assert!(alive(Some(
            STORE_FAILURE_LIVENESS - Duration::from_millis(1)
        )));
        assert!(!alive(Some(STORE_FAILURE_LIVENESS)));
        assert!(!alive(Some(Duration::from_secs(3600))));
    }

    #[test]
    fn pings_at_half_the_watchdog_timeout() {
        assert_eq!(
            ping_interval(Some("30000000"), None, 7),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            ping_interval(Some("200000"), Some("7"), 7),
            Some(Duration::from_millis(100))
        );
    }

    #[test]
    fn no_watchdog_when_unset_zero_garbage_or_for_another_process() {
        assert_eq!(ping_interval(None, None, 7), None);
        assert_eq!(ping_interval(Some("0"), None, 7), None);
        assert_eq!(ping_interval(Some("30s"), None, 7), None);
        assert_eq!(ping_interval(Some("-5"), None, 7), None);
        assert_eq!(ping_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(ping_interval(Some("30000000"), Some("x"), 7), None);
    }

    #[test]
    fn a_tiny_timeout_still_pings_at_a_positive_interval() {
        assert_eq!(
            ping_interval(Some("1"), None, 7),
            Some(Duration::from_millis(1))
        );
    }
}
