//! `WatchUpdates`: one task per stream, reading the integration's durable update log.
//!
//! The task keeps `last_sent`, the sequence of the last update handed to the stream. It
//! reads `updates_after(integration, last_sent, READ_BATCH)` until it has caught up with
//! the durable watermark, then waits for the watermark to move. Replay and live updates
//! are the same loop over the same log, so there is no hand-over between them at which an
//! update could be missed or sent twice, whatever arrives meanwhile; and a client that
//! reconnects with the last sequence it saw resumes exactly after it.
//!
//! Memory is bounded per stream: updates go through a small bounded channel (as in
//! tonic's routeguide example). When the client reads slowly, HTTP/2 flow control stops
//! tonic polling the channel, the channel fills, and the task simply waits in `send`,
//! reading nothing more from the store. When the client goes away the channel closes and
//! the task ends at once, even while idle (`Sender::closed`).

use super::convert;
use super::proto::IncidentUpdate;
use crate::store::Store;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Updates queued between a stream's task and tonic. Small: it bounds the memory a slow
/// reader can pin, and the store batch behind it keeps the pipe full.
pub(crate) const CHANNEL_CAPACITY: usize = 16;
/// Updates read from the store at once. A batch stays in memory while its reader is
/// slow: with 1,000 replay streams that stopped reading, 64 cost the gateway 56 KiB per
/// stream (256 cost 119 KiB), and replay still runs at ~300,000 updates/s.
pub(crate) const READ_BATCH: usize = 64;

/// What the stream yields.
pub(crate) type UpdateStream = ReceiverStream<Result<IncidentUpdate, Status>>;

/// Starts streaming `integration`'s updates after `after`. OUT_OF_RANGE if `after` is
/// past the last durable sequence (the caller's position comes from another store, or
/// from the future), or before the oldest update retention kept.
pub(crate) fn start(
    store: Store,
    integration: String,
    after: u64,
    shutdown: CancellationToken,
) -> Result<UpdateStream, Status> {
    let mut durable = store.watch_sequence(&integration);
    let last = *durable.borrow_and_update();
    if after < store.pruned_through(&integration) {
        return Err(pruned(&store, &integration, after));
    }
    if after > last {
        return Err(Status::out_of_range(format!(
            "after_sequence {after} is past the last update of integration {integration:?} ({last}); \
             resume from {last} or lower"
        )));
    }
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    tokio::spawn(async move {
        let _active = ActiveStream::new(&integration);
        let end = pump(&store, &integration, after, durable, &tx, &shutdown).await;
        match end {
            End::ClientGone(last_sent) => {
                tracing::debug!(integration = %integration, last_sent, "watch stream closed by the client");
            }
            End::Status(status, last_sent) => {
                tracing::info!(integration = %integration, last_sent, code = ?status.code(), "watch stream ended: {}", status.message());
                // Best effort: the client may be gone, or not reading (then it sees the
                // stream end without status and reconnects all the same).
                let _ = tx.try_send(Err(status));
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Why a stream's task ended, with the last sequence it sent.
enum End {
    ClientGone(u64),
    Status(Status, u64),
}

async fn pump(
    store: &Store,
    integration: &str,
    after: u64,
    mut durable: tokio::sync::watch::Receiver<u64>,
    tx: &mpsc::Sender<Result<IncidentUpdate, Status>>,
    shutdown: &CancellationToken,
) -> End {
    let mut last_sent = after;
    loop {
        // Marks the current watermark as seen before reading, so a flush that lands
        // after this line wakes the `changed()` below.
        let upto = *durable.borrow_and_update();
        if last_sent >= upto {
            tokio::select! {
                changed = durable.changed() => {
                    if changed.is_err() {
                        return End::Status(Status::unavailable("the store closed; reconnect"), last_sent);
                    }
                }
                _ = tx.closed() => return End::ClientGone(last_sent),
                _ = shutdown.cancelled() => return shutting_down(last_sent),
            }
            continue;
        }
        let batch = match store.updates_after(integration, last_sent, READ_BATCH) {
            Ok(b) => b,
            Err(e) if e.is_passing() => {
                e.log_at_edge("grpc watch");
                return End::Status(Status::unavailable(format!("cannot read updates: the store is unavailable; reconnect with after_sequence {last_sent}")), last_sent);
            }
            Err(e) => return End::Status(super::error::store(e), last_sent),
        };
        if batch.is_empty() {
            return missing(store, integration, last_sent);
        }
        let n = batch.len() as u64;
        for u in batch {
            // Sequences are gap-free; anything else means the log lost an update.
            if u.sequence.get() != last_sent + 1 {
                return missing(store, integration, last_sent);
            }
            let seq = u.sequence;
            crate::ops_metrics::stream_lag(integration, u.received_at);
            tokio::select! {
                sent = tx.send(Ok(convert::update(u))) => {
                    if sent.is_err() {
                        return End::ClientGone(last_sent);
                    }
                }
                _ = shutdown.cancelled() => return shutting_down(last_sent),
            }
            last_sent = seq.get();
        }
        metrics::counter!("gateway_grpc_updates_streamed_total").increment(n);
    }
}

/// OUT_OF_RANGE for a position whose next update retention removed.
fn pruned(store: &Store, integration: &str, after: u64) -> Status {
    let through = store.pruned_through(integration);
    Status::out_of_range(format!(
        "updates of integration {integration:?} up to {through} were removed by retention \
         (store.retention_days); after_sequence {after} cannot be resumed: resume from {through} \
         and read the incidents' current state with GetIncident"
    ))
}

fn missing(store: &Store, integration: &str, last_sent: u64) -> End {
    if last_sent < store.pruned_through(integration) {
        return End::Status(pruned(store, integration, last_sent), last_sent);
    }
    tracing::error!(integration = %integration, last_sent, "the update log has a gap after this sequence");
    End::Status(
        Status::data_loss(format!(
            "update {} of integration {integration:?} is missing from the store",
            last_sent + 1
        )),
        last_sent,
    )
}

fn shutting_down(last_sent: u64) -> End {
    End::Status(
        Status::unavailable(format!(
            "the gateway is shutting down; reconnect with after_sequence {last_sent}"
        )),
        last_sent,
    )
}

/// Counts open watch streams in `/metrics` while it lives.
struct ActiveStream;

impl ActiveStream {
    fn new(integration: &str) -> Self {
        metrics::gauge!("gateway_grpc_watch_streams").increment(1.0);
        tracing::debug!(integration = %integration, "watch stream opened");
        ActiveStream
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        metrics::gauge!("gateway_grpc_watch_streams").decrement(1.0);
    }
}
