//! The web console at `/console`, on the HTTP listener: an overview whose figures update
//! live, incident search, one incident's timeline (live), the operators' actions
//! (replay dead letters, retry a waiting delivery now, cancel, resolve an orphan; each
//! confirmed, then audited) and the mapping playground.
//!
//! Pages are rendered on the server ([`html`]); a small script and a style sheet are
//! compiled into the binary (no build step, nothing fetched from elsewhere); live parts
//! are server-sent events ([`live`]). Sign-in exchanges the admin or read-only token for
//! a session cookie ([`session`]); every action form carries the session's CSRF token,
//! and read-only sessions are refused every action.

pub mod html;
pub mod live;
pub mod playground;
pub mod session;

use crate::gateway::Gateway;
use crate::incident::{IncidentKey, State as IncidentState};
use crate::intake::LiveIntegrations;
use crate::operator::{self, ActionError};
use crate::store::query::{Cursor, IncidentFilter};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use html::{csrf_field, esc, page, url};
use session::{Session, Sessions};
use std::collections::HashMap;
use std::fmt::Write;
use std::sync::Arc;

/// What the console's routes share.
#[derive(Clone)]
pub struct ConsoleState {
    pub gateway: Gateway,
    pub integrations: LiveIntegrations,
    pub sessions: Arc<Sessions>,
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// The embedded store's directory, for its size on the overview.
    pub store_path: std::path::PathBuf,
}

/// The console's routes, all under `/console`.
pub fn routes(state: ConsoleState) -> Router {
    Router::new()
        .route("/console", get(index))
        .route("/console/login", post(login))
        .route("/console/logout", post(logout))
        .route("/console/incidents", get(incidents))
        .route(
            "/console/incidents/{integration}/{reference}",
            get(timeline),
        )
        .route("/console/dead-letters", get(dead_letters))
        .route("/console/orphans", get(orphans))
        .route("/console/audit", get(audit))
        .route("/console/actions/{action}", post(action))
        .route(
            "/console/playground",
            get(playground::show).post(playground::run),
        )
        .route("/console/playground/fixture", post(playground::fixture))
        .route("/console/events/overview", get(live::overview_events))
        .route(
            "/console/events/incidents/{integration}/{reference}",
            get(live::timeline_events),
        )
        .route("/console/assets/console.js", get(script))
        .route("/console/assets/console.css", get(style))
        .with_state(state)
}

const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

async fn script() -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE,
    )
        .into_response()
}

/// An HTML answer that no cache keeps (pages hold operators' data).
pub(crate) fn html_response(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (http::header::CACHE_CONTROL, "no-store"),
            (http::header::X_FRAME_OPTIONS, "DENY"),
            (
                http::header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
            ),
        ],
        Html(body),
    )
        .into_response()
}

/// The sign-in page, with `error` (and `status`) when a sign-in failed.
fn sign_in(s: &ConsoleState, status: StatusCode, error: Option<&str>) -> Response {
    if !s.sessions.enabled() {
        return html_response(
            StatusCode::NOT_FOUND,
            page(
                "Console off",
                None,
                "<p>The console is off: set <code>[admin] token_env</code> (and optionally \
                 <code>read_only_token_env</code>) in gateway.toml.</p>",
            ),
        );
    }
    let error = error
        .map(|e| format!(r#"<p class="error" id="signin-error">{}</p>"#, esc(e)))
        .unwrap_or_default();
    html_response(
        status,
        page(
            "Sign in",
            None,
            &format!(
                r#"{error}<form method="post" action="/console/login" class="signin">
<label>Token <input type="password" name="token" id="token" autocomplete="current-password" required></label>
<label>Your name (for the audit log) <input type="text" name="name" id="name" maxlength="60"></label>
<button id="signin">Sign in</button></form>
<p class="hint">The admin token acts; the read-only token looks.</p>"#
            ),
        ),
    )
}

/// The request's session, or the sign-in page (401) in place of any data.
pub(crate) fn viewer(s: &ConsoleState, headers: &HeaderMap) -> Result<Session, Box<Response>> {
    s.sessions
        .find(headers)
        .ok_or_else(|| Box::new(sign_in(s, StatusCode::UNAUTHORIZED, None)))
}

/// Decodes an `application/x-www-form-urlencoded` body; repeated names keep every value.
pub(crate) fn form(body: &[u8]) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(body) {
        out.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    out
}

pub(crate) fn first<'a>(f: &'a HashMap<String, Vec<String>>, k: &str) -> &'a str {
    f.get(k)
        .and_then(|v| v.first())
        .map(String::as_str)
        .unwrap_or("")
}

fn store_failed(e: crate::store::StoreError) -> Response {
    e.log_at_edge("console");
    html_response(
        StatusCode::SERVICE_UNAVAILABLE,
        page(
            "Store unavailable",
            None,
            "<p>The store cannot answer now; try again.</p>",
        ),
    )
}

fn see_other(to: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(http::header::LOCATION, to.to_string())],
    )
        .into_response()
}

async fn index(State(s): State<ConsoleState>, headers: HeaderMap) -> Response {
    let Some(session) = s.sessions.find(&headers) else {
        return sign_in(&s, StatusCode::OK, None);
    };
    let figures = live::Overview::new(&s).sample();
    let body = live::overview_html(&figures);
    html_response(StatusCode::OK, page("Overview", Some(&session), &body))
}

async fn login(State(s): State<ConsoleState>, body: axum::body::Bytes) -> Response {
    let f = form(&body);
    let Some(role) = s.sessions.role_of(first(&f, "token")) else {
        tracing::info!("console sign-in refused: wrong token");
        return sign_in(
            &s,
            StatusCode::UNAUTHORIZED,
            Some("That token does not sign in here."),
        );
    };
    let id = s.sessions.open(role, first(&f, "name"));
    tracing::info!(role = role.as_str(), "console sign-in");
    (
        StatusCode::SEE_OTHER,
        [
            (http::header::LOCATION, "/console".to_string()),
            (http::header::SET_COOKIE, s.sessions.cookie(Some(&id))),
        ],
    )
        .into_response()
}

async fn logout(
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let f = form(&body);
    if let Some(session) = s.sessions.find(&headers) {
        if session.csrf_matches(first(&f, "csrf")) {
            s.sessions.close(&headers);
        }
    }
    (
        StatusCode::SEE_OTHER,
        [
            (http::header::LOCATION, "/console".to_string()),
            (http::header::SET_COOKIE, s.sessions.cookie(None)),
        ],
    )
        .into_response()
}

/// Reads a time given as RFC 3339 or as a browser's `datetime-local` (taken as UTC).
fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    s.parse::<jiff::Timestamp>().ok().or_else(|| {
        let dt: jiff::civil::DateTime = s.parse().ok()?;
        jiff::tz::TimeZone::UTC.to_timestamp(dt).ok()
    })
}

/// The search form's fields, from the query string.
fn filter_of(q: &HashMap<String, Vec<String>>) -> IncidentFilter {
    let opt = |k: &str| Some(first(q, k).trim().to_string()).filter(|v| !v.is_empty());
    IncidentFilter {
        reference: opt("reference"),
        incident_id: opt("incident_id"),
        integration: opt("integration"),
        state: IncidentState::ALL
            .into_iter()
            .find(|s| s.as_str() == first(q, "state")),
        since: parse_time(first(q, "since")),
        until: parse_time(first(q, "until")),
    }
}

async fn incidents(
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let session = match viewer(&s, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let q = form(query.unwrap_or_default().as_bytes());
    let filter = filter_of(&q);
    let cursor = Cursor::decode(first(&q, "cursor"));
    let limit = first(&q, "limit").parse().unwrap_or(50);
    let page_ = match s
        .gateway
        .store()
        .incidents_page(&filter, cursor.as_ref(), limit)
    {
        Ok(p) => p,
        Err(e) => return store_failed(e),
    };
    let integrations = s.integrations.get();
    let mut names: Vec<&String> = integrations.keys().collect();
    names.sort();
    let mut body = String::new();
    let sel = |v: &str, cur: &str| if v == cur { " selected" } else { "" };
    let _ = write!(
        body,
        r#"<form method="get" action="/console/incidents" class="search" id="search">
<label>Reference <input name="reference" id="q-reference" value="{r}"></label>
<label>Loomis IncidentId <input name="incident_id" value="{id}"></label>
<label>Integration <select name="integration"><option value="">any</option>{ints}</select></label>
<label>State <select name="state"><option value="">any</option>{states}</select></label>
<label>From <input type="datetime-local" name="since" value="{since}"></label>
<label>To <input type="datetime-local" name="until" value="{until}"></label>
<button id="search-go">Search</button></form>"#,
        r = esc(first(&q, "reference")),
        id = esc(first(&q, "incident_id")),
        ints = names
            .iter()
            .map(|n| format!(
                "<option{}>{}</option>",
                sel(n, first(&q, "integration")),
                esc(n)
            ))
            .collect::<String>(),
        states = IncidentState::ALL
            .iter()
            .map(|st| format!(
                "<option{}>{st}</option>",
                sel(st.as_str(), first(&q, "state"))
            ))
            .collect::<String>(),
        since = esc(first(&q, "since")),
        until = esc(first(&q, "until")),
    );
    if page_.incidents.is_empty() {
        body.push_str(r#"<p id="no-incidents">No incident matches.</p>"#);
    } else {
        body.push_str(r#"<div class="scroll"><table id="incidents"><thead><tr><th>Created (UTC)</th><th>Integration</th><th>Reference</th><th>Loomis IncidentId</th><th>State</th><th>Subject</th></tr></thead><tbody>"#);
        for inc in &page_.incidents {
            body.push_str(&html::incident_row(inc));
        }
        body.push_str("</tbody></table></div>");
    }
    if let Some(next) = &page_.next {
        let mut params: Vec<String> = [
            "reference",
            "incident_id",
            "integration",
            "state",
            "since",
            "until",
        ]
        .iter()
        .filter(|k| !first(&q, k).is_empty())
        .map(|k| format!("{k}={}", url(first(&q, k))))
        .collect();
        params.push(format!("cursor={}", url(&next.encode())));
        let _ = write!(
            body,
            r#"<p><a id="next-page" href="/console/incidents?{}">Next page</a></p>"#,
            params.join("&amp;")
        );
    }
    html_response(StatusCode::OK, page("Incidents", Some(&session), &body))
}

async fn timeline(
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    Path((integration, reference)): Path<(String, String)>,
) -> Response {
    let session = match viewer(&s, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let key = IncidentKey::new(&integration, reference.as_str());
    let view = match live::TimelineView::read(&s, &key) {
        Ok(Some(v)) => v,
        Ok(None) => {
            return html_response(
                StatusCode::NOT_FOUND,
                page(
                    "No such incident",
                    Some(&session),
                    &format!("<p>No incident {}.</p>", esc(&key.to_string())),
                ),
            )
        }
        Err(e) => return store_failed(e),
    };
    let inc = &view.incident;
    let mut body = String::new();
    let _ = write!(
        body,
        r#"<dl class="facts"><dt>Integration</dt><dd>{i}</dd><dt>Reference</dt><dd>{r}</dd><dt>State</dt><dd id="state" class="state s-{st}">{st}</dd><dt>Loomis IncidentId</dt><dd id="incident-id">{id}</dd><dt>CustomerNumber</dt><dd>{c}</dd><dt>SLA</dt><dd>{sla}</dd></dl>"#,
        i = esc(&inc.integration),
        r = esc(inc.reference.as_str()),
        st = inc.state,
        id = esc(inc.incident_id.as_deref().unwrap_or("–")),
        c = esc(&inc.customer_number),
        sla = inc
            .sla_time
            .map(crate::loomis::message::format_utc)
            .unwrap_or_else(|| "–".into()),
    );
    if session.can_act() {
        body.push_str(r#"<section class="actions"><h2>Actions</h2>"#);
        let back = format!(
            "/console/incidents/{}/{}",
            url(&inc.integration),
            url(inc.reference.as_str())
        );
        for job in &view.jobs {
            let _ = write!(
                body,
                r#"<form method="post" action="/console/actions/retry" class="inline">{csrf}<input type="hidden" name="job" value="{id}"><input type="hidden" name="back" value="{back}"><button class="retry">Retry {kind:?} to {target:?} now</button> <span class="hint">attempt {n}, next at {next}{err}</span></form>"#,
                csrf = csrf_field(&session),
                id = job.id,
                back = esc(&back),
                kind = job.kind,
                target = job.target,
                n = job.attempts,
                next = crate::loomis::message::format_utc(job.next_attempt_at),
                err = job
                    .last_error
                    .as_deref()
                    .map(|e| format!(", last error: {}", esc(e)))
                    .unwrap_or_default(),
            );
        }
        for dl in &view.dead_letters {
            let _ = write!(
                body,
                r#"<form method="post" action="/console/actions/replay" class="inline">{csrf}<input type="hidden" name="id" value="{id}"><input type="hidden" name="back" value="{back}"><button class="replay">Replay dead letter {id}</button> <span class="hint">{reason}</span></form>"#,
                csrf = csrf_field(&session),
                id = dl.id,
                back = esc(&back),
                reason = esc(&dl.reason),
            );
        }
        if !inc.state.is_terminal() {
            let _ = write!(
                body,
                r#"<form method="post" action="/console/actions/cancel" class="inline">{csrf}<input type="hidden" name="integration" value="{i}"><input type="hidden" name="reference" value="{r}"><input type="hidden" name="back" value="{back}"><input name="reason" placeholder="reason for Loomis"><button id="cancel" class="danger">Cancel at Loomis</button></form>"#,
                csrf = csrf_field(&session),
                i = esc(&inc.integration),
                r = esc(inc.reference.as_str()),
                back = esc(&back),
            );
        }
        body.push_str("</section>");
    }
    let _ = write!(
        body,
        r#"<h2>Timeline</h2><div class="scroll"><table class="timeline"><thead><tr><th>At (UTC)</th><th>Lane</th><th>Step</th><th>Outcome</th><th>Detail</th></tr></thead><tbody id="steps" data-live="/console/events/incidents/{ui}/{ur}">{rows}</tbody></table></div>"#,
        ui = url(&inc.integration),
        ur = url(inc.reference.as_str()),
        rows = view.rows(),
    );
    html_response(
        StatusCode::OK,
        page(
            &format!("Incident {}", inc.reference),
            Some(&session),
            &body,
        ),
    )
}

async fn dead_letters(State(s): State<ConsoleState>, headers: HeaderMap) -> Response {
    let session = match viewer(&s, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let list = match s.gateway.store().dead_letters(1000) {
        Ok(l) => l,
        Err(e) => return store_failed(e),
    };
    let mut body = String::new();
    if list.is_empty() {
        body.push_str(r#"<p id="no-dead-letters">No dead letters.</p>"#);
    } else {
        let act = session.can_act();
        if act {
            let _ = write!(
                body,
                r#"<form method="post" action="/console/actions/replay">{}<input type="hidden" name="back" value="/console/dead-letters">"#,
                csrf_field(&session)
            );
        }
        body.push_str(r#"<div class="scroll"><table id="dead-letters"><thead><tr><th></th><th>Id</th><th>Failed at (UTC)</th><th>Incident</th><th>Job</th><th>Reason</th></tr></thead><tbody>"#);
        for dl in &list {
            let _ = write!(
                body,
                r#"<tr><td>{check}</td><td>{id}</td><td>{at}</td><td><a href="/console/incidents/{ui}/{ur}">{key}</a></td><td>{kind:?}</td><td>{reason}</td></tr>"#,
                check = if act {
                    format!(
                        r#"<input type="checkbox" name="id" value="{}" class="pick">"#,
                        dl.id
                    )
                } else {
                    String::new()
                },
                id = dl.id,
                at = crate::loomis::message::format_utc(dl.failed_at),
                ui = url(&dl.job.incident.integration),
                ur = url(dl.job.incident.reference.as_str()),
                key = esc(&dl.job.incident.to_string()),
                kind = dl.job.kind,
                reason = esc(&dl.reason),
            );
        }
        body.push_str("</tbody></table></div>");
        if act {
            body.push_str(r#"<button id="replay-selected">Replay selected</button></form>"#);
        }
    }
    html_response(StatusCode::OK, page("Dead letters", Some(&session), &body))
}

async fn orphans(State(s): State<ConsoleState>, headers: HeaderMap) -> Response {
    let session = match viewer(&s, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let list = match s.gateway.store().orphans(1000) {
        Ok(l) => l,
        Err(e) => return store_failed(e),
    };
    let mut body = String::new();
    if list.is_empty() {
        body.push_str("<p>No orphans.</p>");
    }
    for o in &list {
        let _ = write!(
            body,
            r#"<article class="orphan"><h2>Orphan {id}</h2><p>{at}: {reason}</p><pre class="msg">{msg}</pre>"#,
            id = o.id,
            at = crate::loomis::message::format_utc(o.received_at),
            reason = esc(&o.reason),
            msg = html::pretty_json(&o.message.to_string()),
        );
        if session.can_act() {
            let _ = write!(
                body,
                r#"<form method="post" action="/console/actions/resolve-orphan">{csrf}<input type="hidden" name="id" value="{id}"><input type="hidden" name="back" value="/console/orphans"><input name="note" placeholder="what was done"><button>Resolve</button></form>"#,
                csrf = csrf_field(&session),
                id = o.id,
            );
        }
        body.push_str("</article>");
    }
    html_response(StatusCode::OK, page("Orphans", Some(&session), &body))
}

async fn audit(State(s): State<ConsoleState>, headers: HeaderMap) -> Response {
    let session = match viewer(&s, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let list = match s.gateway.store().audit_log(500) {
        Ok(l) => l,
        Err(e) => return store_failed(e),
    };
    let mut body = String::from(
        r#"<div class="scroll"><table id="audit"><thead><tr><th>At (UTC)</th><th>Who</th><th>Action</th><th>On</th><th>Outcome</th></tr></thead><tbody>"#,
    );
    for a in &list {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            crate::loomis::message::format_utc(a.at),
            esc(&a.who),
            esc(&a.action),
            esc(&a.target),
            esc(&a.outcome)
        );
    }
    body.push_str("</tbody></table></div>");
    html_response(StatusCode::OK, page("Audit log", Some(&session), &body))
}

/// Every action: signed in as admin, the session's CSRF token, then a confirmation page
/// (the same form again with `confirmed=yes`), then the action, audited.
async fn action(
    State(s): State<ConsoleState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let session = match viewer(&s, &headers) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let f = form(&body);
    let refuse = |why: &str| {
        html_response(
            StatusCode::FORBIDDEN,
            page(
                "Not allowed",
                Some(&session),
                &format!(r#"<p class="error" id="refused">{}</p>"#, esc(why)),
            ),
        )
    };
    if !session.can_act() {
        tracing::info!(action = %name, who = %session.who(), "console action refused: read-only");
        return refuse("You are signed in read-only: you can look, not act.");
    }
    if !session.csrf_matches(first(&f, "csrf")) {
        tracing::info!(action = %name, "console action refused: CSRF token missing or wrong");
        return refuse("This form is stale or came from elsewhere; open the page again.");
    }
    let back = Some(first(&f, "back"))
        .filter(|b| b.starts_with("/console") && !b.starts_with("//"))
        .unwrap_or("/console")
        .to_string();
    let what = match name.as_str() {
        "replay" => {
            let ids: Vec<&String> = f.get("id").map(|v| v.iter().collect()).unwrap_or_default();
            if ids.is_empty() {
                return refuse("Pick at least one dead letter.");
            }
            format!(
                "Replay dead letter{} {}",
                if ids.len() == 1 { "" } else { "s" },
                ids.iter().map(|i| esc(i)).collect::<Vec<_>>().join(", ")
            )
        }
        "retry" => format!("Retry job {} now", esc(first(&f, "job"))),
        "cancel" => format!(
            "Cancel incident {}/{} at Loomis",
            esc(first(&f, "integration")),
            esc(first(&f, "reference"))
        ),
        "resolve-orphan" => format!("Resolve orphan {}", esc(first(&f, "id"))),
        _ => return refuse("No such action."),
    };
    if first(&f, "confirmed") != "yes" {
        let mut hidden = String::new();
        for (k, vs) in &f {
            for v in vs {
                let _ = write!(
                    hidden,
                    r#"<input type="hidden" name="{}" value="{}">"#,
                    esc(k),
                    esc(v)
                );
            }
        }
        return html_response(
            StatusCode::OK,
            page(
                "Confirm",
                Some(&session),
                &format!(
                    r#"<p id="confirm-what">{what}?</p><form method="post" action="/console/actions/{n}">{hidden}<input type="hidden" name="confirmed" value="yes"><button id="confirm" class="danger">Confirm</button> <a href="{b}">Back</a></form>"#,
                    n = esc(&name),
                    b = esc(&back)
                ),
            ),
        );
    }
    let who = session.who();
    let gw = &s.gateway;
    let result: Result<(), ActionError> = match name.as_str() {
        "replay" => {
            let mut r = Ok(());
            for id in f.get("id").into_iter().flatten() {
                let Ok(id) = id.parse() else {
                    r = Err(ActionError::NotFound(format!("dead letter {id:?}")));
                    break;
                };
                if let Err(e) = operator::replay(gw, id, &who).await {
                    r = Err(e);
                    break;
                }
            }
            r
        }
        "retry" => match first(&f, "job").parse() {
            Ok(id) => operator::retry_now(gw, id, &who).await.map(drop),
            Err(_) => Err(ActionError::NotFound("job".into())),
        },
        "cancel" => {
            let key = IncidentKey::new(first(&f, "integration"), first(&f, "reference"));
            operator::cancel(gw, &key, first(&f, "reason"), &who).await
        }
        _ => match first(&f, "id").parse() {
            Ok(id) => operator::resolve_orphan(gw, id, first(&f, "note"), &who).await,
            Err(_) => Err(ActionError::NotFound("orphan".into())),
        },
    };
    match result {
        Ok(()) => {
            tracing::info!(action = %name, who = %who, "console action taken");
            see_other(&back)
        }
        Err(ActionError::Store(e)) => store_failed(e),
        Err(e) => html_response(
            StatusCode::CONFLICT,
            page(
                "Not done",
                Some(&session),
                &format!(
                    r#"<p class="error" id="not-done">{}</p><p><a href="{}">Back</a></p>"#,
                    esc(&e.to_string()),
                    esc(&back)
                ),
            ),
        ),
    }
}
