//! The live parts of the console: the overview's figures and an incident's timeline,
//! rendered once into the page and then refreshed by server-sent events (the script
//! swaps in what changed; nothing to reload).
//!
//! Figures come from the store (outbox, dead letters, orphans, update sequences, the
//! store's size on disk) and from the gateway's own Prometheus series (intake, delivery
//! and Loomis answers, open streams), read from the same registry `/metrics` serves;
//! rates are the difference between two samples.

use super::html::{self, esc, Step};
use super::{viewer, ConsoleState};
use crate::incident::{Direction, Incident, IncidentKey, Update};
use crate::store::query::RawInput;
use crate::store::records::{DeadLetter, Job, JobKind, Target};
use crate::store::StoreError;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::time::{Duration, Instant};

/// How often an open overview is refreshed.
const OVERVIEW_EVERY: Duration = Duration::from_secs(2);
/// How often an open timeline looks for new steps.
const TIMELINE_EVERY: Duration = Duration::from_millis(500);
/// How often an open timeline reads its waiting deliveries again though nothing else moved.
const TIMELINE_FULL_EVERY: Duration = Duration::from_secs(5);

/// What an open timeline's event stream keeps between looks.
struct Follow {
    s: ConsoleState,
    key: IncidentKey,
    /// The rows last sent.
    rows: String,
    /// The incident's `updated_at`, timeline length, update and attempt counts at the
    /// last full read.
    seen: Option<(jiff::Timestamp, usize, usize, usize)>,
    read_at: Instant,
}

/// Counters read from the metrics registry, by series and labels.
#[derive(Default, Clone)]
struct Counters(HashMap<String, f64>);

impl Counters {
    /// Parses Prometheus text: `name{labels} value` lines.
    fn parse(text: &str) -> Self {
        let mut map = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some((series, value)) = line.rsplit_once(' ') {
                if let Ok(v) = value.parse::<f64>() {
                    map.insert(series.to_string(), v);
                }
            }
        }
        Counters(map)
    }

    /// The sum of every series `name` whose labels include all of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| {
                let (n, rest) = series.split_once('{').unwrap_or((series.as_str(), ""));
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
            })
            .map(|(_, v)| v)
            .fold(0.0, |a, b| a + b)
    }
}

/// A counter's value as people write it: whole numbers without a fraction.
fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.1}")
    }
}

/// Samples the overview, keeping the previous sample for rates.
pub struct Overview {
    state: ConsoleState,
    previous: Option<(Instant, Counters)>,
}

/// The overview's figures: element id -> text, in display order.
pub type Figures = Vec<(String, String, String)>;

impl Overview {
    pub fn new(state: &ConsoleState) -> Self {
        Overview {
            state: state.clone(),
            previous: None,
        }
    }

    /// One sample: `(id, label, value)` triples.
    pub fn sample(&mut self) -> Figures {
        let counters = Counters::parse(&self.state.metrics.render());
        let now = Instant::now();
        let rate = |name: &str, labels: &[(&str, &str)]| -> String {
            match &self.previous {
                Some((then, prev)) => {
                    let secs = now.duration_since(*then).as_secs_f64().max(0.001);
                    let d = counters.sum(name, labels) - prev.sum(name, labels);
                    format!("{:.1}/s", d.max(0.0) / secs)
                }
                None => "…".into(),
            }
        };
        let mut out: Figures = Vec::new();
        let store = self.state.gateway.store();
        let integrations = self.state.integrations.get();
        let mut names: Vec<&String> = integrations.keys().collect();
        names.sort();
        let last = store.last_sequences();
        for name in names {
            let l = [("integration", name.as_str())];
            out.push((
                format!("{name}-intake"),
                format!("{name}: intake"),
                rate("gateway_incidents_created_total", &l),
            ));
            out.push((
                format!("{name}-posted"),
                format!("{name}: posts to the tool"),
                rate(
                    "gateway_tool_posts_total",
                    &[("integration", name), ("result", "ok")],
                ),
            ));
            out.push((
                format!("{name}-updates"),
                format!("{name}: last update sequence"),
                last.get(name.as_str()).copied().unwrap_or(0).to_string(),
            ));
        }
        for (class, label) in [
            ("ok", "accepted"),
            ("retry", "to retry"),
            ("refused", "refused"),
        ] {
            out.push((
                format!("loomis-{class}"),
                format!("Loomis answers: {label}"),
                format!(
                    "{} ({})",
                    number(counters.sum("gateway_loomis_requests_total", &[("result", class)])),
                    rate("gateway_loomis_requests_total", &[("result", class)])
                ),
            ));
        }
        for kind in ["ACK", "NAK", "Accept", "Close", "Cancel"] {
            out.push((
                format!("loomis-msg-{}", kind.to_ascii_lowercase()),
                format!("Loomis {kind} messages"),
                number(counters.sum("gateway_loomis_messages_total", &[("kind", kind)])),
            ));
        }
        match store.jobs() {
            Ok(jobs) => {
                let now_t = jiff::Timestamp::now();
                for (target, label) in [(Target::Loomis, "loomis"), (Target::Tool, "tools")] {
                    let of: Vec<&Job> = jobs.iter().filter(|j| j.target == target).collect();
                    out.push((
                        format!("outbox-{label}"),
                        format!("Outbox to {label}"),
                        of.len().to_string(),
                    ));
                    let oldest = of
                        .iter()
                        .map(|j| j.created_at)
                        .min()
                        .map(|t| format!("{} s", now_t.duration_since(t).as_secs().max(0)))
                        .unwrap_or_else(|| "–".into());
                    out.push((
                        format!("oldest-{label}"),
                        format!("Oldest job to {label}"),
                        oldest,
                    ));
                }
            }
            Err(e) => out.push(("outbox-loomis".into(), "Outbox".into(), e.to_string())),
        }
        out.push((
            "dead-letters".into(),
            "Dead letters".into(),
            store
                .dead_letter_count()
                .map(|n| n.to_string())
                .unwrap_or_else(|e| e.to_string()),
        ));
        out.push((
            "orphans".into(),
            "Orphans".into(),
            store
                .orphans(100_000)
                .map(|o| o.len().to_string())
                .unwrap_or_else(|e| e.to_string()),
        ));
        out.push((
            "streams".into(),
            "Open WatchUpdates streams".into(),
            number(counters.sum("gateway_grpc_watch_streams", &[])),
        ));
        out.push((
            "streamed".into(),
            "Updates streamed".into(),
            rate("gateway_grpc_updates_streamed_total", &[]),
        ));
        out.push((
            "store-size".into(),
            "Store size".into(),
            format!(
                "{:.1} MiB",
                dir_size(&self.state.store_path) as f64 / 1048576.0
            ),
        ));
        out.push((
            "store-health".into(),
            "Store".into(),
            store.failure().unwrap_or_else(|| "healthy".into()),
        ));
        self.previous = Some((now, counters));
        out
    }
}

/// Bytes of the files under `dir` (the store's size on disk).
fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The overview's body: figures as a definition list, each value with its id.
pub fn overview_html(figures: &Figures) -> String {
    let mut s =
        String::from(r#"<dl class="figures" id="figures" data-live="/console/events/overview">"#);
    for (id, label, value) in figures {
        let _ = write!(
            s,
            r#"<div><dt>{}</dt><dd id="f-{}">{}</dd></div>"#,
            esc(label),
            esc(id),
            esc(value)
        );
    }
    s.push_str("</dl>");
    s
}

/// `GET /console/events/overview`: the figures as JSON every [`OVERVIEW_EVERY`].
pub async fn overview_events(State(s): State<ConsoleState>, headers: HeaderMap) -> Response {
    if let Err(r) = viewer(&s, &headers) {
        return *r;
    }
    let overview = Overview::new(&s);
    let stream = futures::stream::unfold(overview, |mut o| async move {
        tokio::time::sleep(OVERVIEW_EVERY).await;
        // Sampling reads the store and the registry: off the async workers.
        let (o, figures) = tokio::task::spawn_blocking(move || {
            let f = o.sample();
            (o, f)
        })
        .await
        .ok()?;
        let map: BTreeMap<String, String> = figures
            .into_iter()
            .map(|(id, _, v)| (format!("f-{id}"), v))
            .collect();
        let event = Event::default()
            .event("figures")
            .data(serde_json::to_string(&map).unwrap_or_default());
        Some((Ok::<_, std::convert::Infallible>(event), o))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Everything an incident's timeline shows, read at one moment.
pub struct TimelineView {
    pub incident: Incident,
    pub raw: Option<RawInput>,
    pub updates: Vec<Update>,
    /// Its jobs waiting in the outbox.
    pub jobs: Vec<Job>,
    /// Its dead letters.
    pub dead_letters: Vec<DeadLetter>,
    /// Whether its integration posts updates to the tool.
    pub delivers: bool,
    /// The last durable update sequence of its integration (streams have up to it).
    pub watermark: u64,
    /// Its latest delivery attempts since the gateway started, with their latency.
    pub attempts: Vec<crate::attempts::Attempt>,
}

impl TimelineView {
    pub fn read(s: &ConsoleState, key: &IncidentKey) -> Result<Option<Self>, StoreError> {
        let store = s.gateway.store();
        let Some(incident) = store.incident(key)? else {
            return Ok(None);
        };
        let raw = store.raw_input(key)?;
        let updates = store.updates_of(key, 1000)?;
        let jobs = store
            .jobs()?
            .into_iter()
            .filter(|j| j.incident == *key)
            .collect();
        let dead_letters = store
            .dead_letters(10_000)?
            .into_iter()
            .filter(|d| d.job.incident == *key)
            .collect();
        let delivers = s.gateway.delivers_to_tool(&key.integration);
        let watermark = store
            .last_sequences()
            .get(&key.integration)
            .copied()
            .unwrap_or(0);
        let attempts = s
            .gateway
            .attempts()
            .of(&key.integration, key.reference.as_str());
        Ok(Some(TimelineView {
            attempts,
            incident,
            raw,
            updates,
            jobs,
            dead_letters,
            delivers,
            watermark,
        }))
    }

    /// Every step in time order.
    pub fn steps(&self) -> Vec<Step> {
        let inc = &self.incident;
        let mut steps = Vec::new();
        if let Some(raw) = &self.raw {
            let body = if raw.format == "xml" {
                esc(&html::pretty_xml(&raw.body))
            } else {
                html::pretty_json(&raw.body)
            };
            steps.push(Step {
                at: raw.received_at,
                lane: "caller",
                kind: "Received".into(),
                outcome: "input".into(),
                detail: format!(
                    "what the tool sent ({}, {} bytes{})",
                    raw.format,
                    raw.size,
                    if raw.truncated {
                        ", cut for display"
                    } else {
                        ""
                    }
                ),
                message: Some(body),
                open: true,
            });
        }
        for e in &inc.timeline {
            let kind = if e.direction == Direction::Caller && e.kind == "Dispatch" {
                "Dispatch (mapped)".to_string()
            } else {
                e.kind.clone()
            };
            steps.push(Step {
                at: e.at,
                lane: html::lane_of(e.direction),
                kind,
                outcome: html::outcome_of(e.outcome).into(),
                detail: e.detail.clone(),
                message: inc
                    .timeline_message(e)
                    .map(|m| html::pretty_json(m.as_str())),
                open: false,
            });
        }
        if inc.timeline_dropped > 0 {
            steps.push(Step {
                at: inc.updated_at,
                lane: "gateway",
                kind: "Timeline full".into(),
                outcome: "note".into(),
                detail: format!("{} later entries were not kept", inc.timeline_dropped),
                message: None,
                open: false,
            });
        }
        for u in &self.updates {
            let seq = u.sequence.get();
            let post = if !self.delivers {
                "not posted (the integration has no delivery URL)".to_string()
            } else if let Some(d) = self
                .dead_letters
                .iter()
                .find(|d| d.job.kind == (JobKind::PostUpdate { sequence: seq }))
            {
                format!("post dead-lettered ({}): {}", d.id, d.reason)
            } else if let Some(j) = self
                .jobs
                .iter()
                .find(|j| j.kind == (JobKind::PostUpdate { sequence: seq }))
            {
                format!(
                    "post pending, {} attempt(s){}",
                    j.attempts,
                    j.last_error
                        .as_deref()
                        .map(|e| format!(", last error: {e}"))
                        .unwrap_or_default()
                )
            } else {
                "posted to the tool".to_string()
            };
            let stream = if seq <= self.watermark {
                "available to WatchUpdates streams"
            } else {
                "not yet durable for streams"
            };
            steps.push(Step {
                at: u.received_at,
                lane: "to-tool",
                kind: format!("Update #{seq} {}", u.kind),
                outcome: u.state.to_string(),
                detail: format!(
                    "{post}; {stream}{}",
                    u.response_text
                        .as_deref()
                        .map(|t| format!("; {t}"))
                        .unwrap_or_default()
                ),
                message: None,
                open: false,
            });
        }
        for a in &self.attempts {
            steps.push(Step {
                at: a.at,
                lane: if a.target == "loomis" {
                    "to-loomis"
                } else {
                    "to-tool"
                },
                kind: format!("Attempt: {}", a.what),
                outcome: a.outcome.clone(),
                detail: format!("answered in {} ms", a.latency.as_millis()),
                message: None,
                open: false,
            });
        }
        steps.sort_by_key(|s| s.at);
        steps
    }

    /// The steps as table rows.
    pub fn rows(&self) -> String {
        self.steps().iter().map(Step::row).collect()
    }
}

/// `GET /console/events/incidents/{integration}/{reference}`: the timeline's rows (and
/// state) again whenever they change.
pub async fn timeline_events(
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    Path((integration, reference)): Path<(String, String)>,
) -> Response {
    if let Err(r) = viewer(&s, &headers) {
        return *r;
    }
    let key = IncidentKey::new(integration, reference);
    let start = Follow {
        s,
        key,
        rows: String::new(),
        seen: None,
        read_at: Instant::now(),
    };
    let stream = futures::stream::unfold(start, |mut f| async move {
        loop {
            // The whole view reads the outbox and the dead letters; the probe reads the
            // incident and its update index only. Read it all when the probe moved, and
            // every few seconds for deliveries waiting (attempts, errors).
            let (s2, key2) = (f.s.clone(), f.key.clone());
            let probe = tokio::task::spawn_blocking(
                move || -> Result<Option<(jiff::Timestamp, usize, usize, usize)>, StoreError> {
                    let store = s2.gateway.store();
                    let Some(inc) = store.incident(&key2)? else {
                        return Ok(None);
                    };
                    Ok(Some((
                        inc.updated_at,
                        inc.timeline.len(),
                        store.updates_of(&key2, 1000)?.len(),
                        s2.gateway
                            .attempts()
                            .of(&key2.integration, key2.reference.as_str())
                            .len(),
                    )))
                },
            )
            .await
            .ok()?;
            let Ok(Some(probe)) = probe else {
                // Gone (retention) or the store failing: end; the page keeps what it shows.
                return None;
            };
            if f.seen != Some(probe) || f.read_at.elapsed() >= TIMELINE_FULL_EVERY {
                f.seen = Some(probe);
                f.read_at = Instant::now();
                let (s2, key2) = (f.s.clone(), f.key.clone());
                let view = tokio::task::spawn_blocking(move || TimelineView::read(&s2, &key2))
                    .await
                    .ok()?;
                let Ok(Some(view)) = view else {
                    return None;
                };
                let rows = view.rows();
                if rows != f.rows {
                    let data = serde_json::json!({
                        "rows": rows,
                        "state": view.incident.state.as_str(),
                        "incident_id": view.incident.incident_id.as_deref().unwrap_or("–"),
                    });
                    let event = Event::default().event("steps").data(data.to_string());
                    f.rows = rows;
                    return Some((Ok::<_, std::convert::Infallible>(event), f));
                }
            }
            tokio::time::sleep(TIMELINE_EVERY).await;
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
