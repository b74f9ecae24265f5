//! Refused HTTP requests, logged at `info`: a caller whose requests are all refused
//! (a wrong key, a wrong content type, a mapping that rejects every document) must be
//! visible to the operator without raising the log level. Each error response carries a
//! [`Refusal`] (set by the edges' error types); [`log`] writes one line per 4xx with
//! method, route, status, integration and reason. Never the body, never a credential:
//! the reason is the error's code and message (which quote at most a name or a
//! reference) and the names of the fields a validation refused, not their values.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

/// Why a request was refused, attached to the response by the error that answered it.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
    /// The fields a validation refused (names only).
    pub fields: Vec<String>,
}

/// How much of a refusal's message a log line repeats.
const MESSAGE_LIMIT: usize = 200;

/// Logs every 4xx answer at `info`.
pub async fn log(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    let status = resp.status();
    if status.is_client_error() {
        let (route, integration) = route_of(&path);
        let refusal = resp.extensions().get::<Refusal>();
        let code = refusal.map_or("", |r| r.code);
        let reason = refusal.map_or(String::new(), |r| clip(&r.message));
        let fields = refusal.map_or(String::new(), |r| r.fields.join(","));
        tracing::info!(
            method = %method,
            route,
            status = status.as_u16(),
            integration = integration.map(clip).unwrap_or_default(),
            code,
            reason,
            fields,
            "request refused"
        );
    }
    resp
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(MESSAGE_LIMIT) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The route a path matches, as its template (caller values left out), and the
/// integration it names.
fn route_of(path: &str) -> (&'static str, Option<&str>) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match parts.as_slice() {
        ["v1", "integrations", name, "incidents"] => {
            ("/v1/integrations/{name}/incidents", Some(name))
        }
        ["v1", "integrations", name, "incidents", _] => {
            ("/v1/integrations/{name}/incidents/{reference}", Some(name))
        }
        ["v1", "integrations", name, "incidents", _, "cancel"] => (
            "/v1/integrations/{name}/incidents/{reference}/cancel",
            Some(name),
        ),
        ["v1", "loomis", "messages"] => ("/v1/loomis/messages", None),
        ["v1", "admin", "dead-letters"] => ("/v1/admin/dead-letters", None),
        ["v1", "admin", "dead-letters", _, "replay"] => {
            ("/v1/admin/dead-letters/{id}/replay", None)
        }
        ["v1", "admin", "orphans"] => ("/v1/admin/orphans", None),
        ["healthz"] => ("/healthz", None),
        ["readyz"] => ("/readyz", None),
        ["metrics"] => ("/metrics", None),
        ["v1", "integrations", name, ..] => ("(no such route)", Some(name)),
        _ => ("(no such route)", None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_leave_caller_values_out_but_name_the_integration() {
        assert_eq!(
            route_of("/v1/integrations/servicenow/incidents/INC1/cancel"),
            (
                "/v1/integrations/{name}/incidents/{reference}/cancel",
                Some("servicenow")
            )
        );
        assert_eq!(
            route_of("/v1/integrations/remedy/incidents"),
            ("/v1/integrations/{name}/incidents", Some("remedy"))
        );
        assert_eq!(route_of("/v1/loomis/messages").0, "/v1/loomis/messages");
        assert_eq!(route_of("/secret/path"), ("(no such route)", None));
        assert_eq!(clip(&"é".repeat(300)).chars().count(), MESSAGE_LIMIT + 1);
    }
}
