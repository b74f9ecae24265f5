//! Server-rendered HTML of the console: the page frame, and the pieces pages share
//! (incident rows, timeline steps, forms). Everything a caller or Loomis sent is escaped
//! with [`esc`]; nothing is loaded from elsewhere (the CSS and script come from the
//! binary, `/console/assets/...`).

use super::session::Session;
use crate::incident::{Direction, EntryOutcome, Incident};
use std::fmt::Write;

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a path segment or query value.
pub fn url(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A whole page: head, navigation (when signed in), and `body`.
pub fn page(title: &str, session: Option<&Session>, body: &str) -> String {
    let nav = match session {
        Some(s) => format!(
            r#"<nav><a href="/console">Overview</a> <a href="/console/incidents">Incidents</a> <a href="/console/dead-letters">Dead letters</a> <a href="/console/orphans">Orphans</a> <a href="/console/playground">Playground</a> <a href="/console/audit">Audit log</a>
<span class="who">{who}</span> <form method="post" action="/console/logout" class="inline"><input type="hidden" name="csrf" value="{csrf}"><button>Sign out</button></form></nav>"#,
            who = esc(&s.who()),
            csrf = esc(&s.csrf)
        ),
        None => String::new(),
    };
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · safepoint-gateway</title><link rel="stylesheet" href="/console/assets/console.css">
<script src="/console/assets/console.js" defer></script></head>
<body><header><strong>safepoint-gateway</strong> console</header>{nav}<main><h1>{title}</h1>
{body}</main></body></html>"#,
        title = esc(title)
    )
}

/// The hidden CSRF field every action form carries.
pub fn csrf_field(s: &Session) -> String {
    format!(
        r#"<input type="hidden" name="csrf" value="{}">"#,
        esc(&s.csrf)
    )
}

/// One row of the incident list.
pub fn incident_row(inc: &Incident) -> String {
    format!(
        r#"<tr><td>{created}</td><td>{integration}</td><td><a href="/console/incidents/{ui}/{ur}">{reference}</a></td><td>{id}</td><td class="state s-{state}">{state}</td><td>{subject}</td></tr>"#,
        created = esc(&crate::loomis::message::format_utc(inc.created_at)),
        integration = esc(&inc.integration),
        ui = url(&inc.integration),
        ur = url(inc.reference.as_str()),
        reference = esc(inc.reference.as_str()),
        id = esc(inc.incident_id.as_deref().unwrap_or("")),
        state = inc.state,
        subject = esc(&inc.dispatch.subject),
    )
}

/// JSON text pretty-printed, with secret-looking values redacted, escaped for HTML.
pub fn pretty_json(text: &str) -> String {
    let pretty = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| text.to_string());
    esc(&crate::store::query::redact(&pretty))
}

/// XML text indented one element a line (text kept as is), for reading.
pub fn pretty_xml(text: &str) -> String {
    let mut out = String::new();
    let mut depth: usize = 0;
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some(open) = rest.find('<') else {
            out.push_str(rest);
            break;
        };
        let (before, tag_on) = rest.split_at(open);
        let Some(close) = tag_on.find('>') else {
            out.push_str(rest);
            break;
        };
        let tag = &tag_on[..=close];
        rest = &tag_on[close + 1..];
        let text = before.trim();
        if !text.is_empty() {
            out.push_str(text);
        }
        if tag.starts_with("</") {
            depth = depth.saturating_sub(1);
            if text.is_empty() && out.ends_with('>') {
                out.push('\n');
                out.push_str(&"  ".repeat(depth));
            }
            out.push_str(tag);
        } else {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&"  ".repeat(depth));
            out.push_str(tag);
            let self_closing =
                tag.ends_with("/>") || tag.starts_with("<?") || tag.starts_with("<!");
            if !self_closing {
                depth += 1;
            }
        }
    }
    out
}

/// One step of a timeline, as a table row; `id` orders steps for live updates.
pub struct Step {
    pub at: jiff::Timestamp,
    /// Caller, to Loomis, from Loomis, gateway, to the tool, stream.
    pub lane: &'static str,
    pub kind: String,
    pub outcome: String,
    pub detail: String,
    /// Escaped HTML of the message (in a `<pre>`), if any.
    pub message: Option<String>,
    /// Show the message unfolded (what the tool sent).
    pub open: bool,
}

impl Step {
    pub fn row(&self) -> String {
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<tr class="step l-{lane}"><td>{at}</td><td>{lane}</td><td>{kind}</td><td>{outcome}</td><td>{detail}"#,
            at = esc(&crate::loomis::message::format_utc(self.at)),
            lane = self.lane,
            kind = esc(&self.kind),
            outcome = esc(&self.outcome),
            detail = esc(&self.detail),
        );
        if let Some(m) = &self.message {
            let _ = write!(
                s,
                r#"<details{open}><summary>message</summary><pre class="msg">{m}</pre></details>"#,
                open = if self.open { " open" } else { "" }
            );
        }
        s.push_str("</td></tr>");
        s
    }
}

/// The lane of a timeline entry.
pub fn lane_of(d: Direction) -> &'static str {
    match d {
        Direction::Caller => "caller",
        Direction::ToLoomis => "to-loomis",
        Direction::FromLoomis => "from-loomis",
        Direction::Gateway => "gateway",
    }
}

pub fn outcome_of(o: EntryOutcome) -> &'static str {
    match o {
        EntryOutcome::Applied => "applied",
        EntryOutcome::Ignored => "ignored",
        EntryOutcome::Conflict => "conflict",
        EntryOutcome::Delivered => "delivered",
        EntryOutcome::Note => "note",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_pretty_prints() {
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let x = pretty_xml("<a><b>1</b><c><d/></c></a>");
        assert_eq!(x, "<a>\n  <b>1</b>\n  <c>\n    <d/>\n  </c>\n</a>");
        let j = pretty_json(r#"{"token":"t1","x":1}"#);
        assert!(!j.contains("t1") && j.contains("\n"), "{j}");
    }
}
