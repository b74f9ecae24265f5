//! A SOAP tool's updates, black-box: the gateway runs the shipped `remedy-hpd` mapping
//! against the built-in simulator and posts updates to a small receiver playing BMC
//! Remedy. The post carries the mapping's SOAPAction, the delivery's HTTP credentials
//! and, in the SOAP header, the password read from the environment variable the mapping
//! names. A delivery `header` auth that would replace the mapping's SOAPAction stops the
//! start instead of being silently overwritten.

use std::sync::{Arc, Mutex};

use safepoint_gateway::app;
use safepoint_gateway::config::Config;
use tokio::sync::watch;

/// What the receiver got: the headers that matter and the body.
#[derive(Debug, Clone)]
struct Post {
    soap_action: Option<String>,
    content_type: Option<String>,
    authorization: Option<String>,
    body: String,
}

const PASSWORD_ENV: &str = "REMEDY_HPD_PASSWORD";
const PASSWORD: &str = "hpd-s3cret&<pw>";

fn env(k: &str) -> Option<String> {
    match k {
        "HPD_KEY" => Some("hpd-key".into()),
        "CB_TOKEN" => Some("cb".into()),
        "HPD_TOOL_TOKEN" => Some("tool-token".into()),
        _ => None,
    }
}

fn config_text(dir: &std::path::Path, delivery_url: &str, auth: &str) -> String {
    format!(
        r#"
[server]
http_listen = "127.0.0.1:0"
grpc_listen = "127.0.0.1:0"

[store]
path = "{store}"

[loomis]
url = "simulator"

[callbacks]
auth = {{ type = "bearer", token_env = "CB_TOKEN" }}

[simulator]
ack = "body"
accept_after_ms = 60000

[[integrations]]
name = "hpd"
customer_number = "B765432"
mapping = "{manifest}/mappings/remedy-hpd.toml"
api_key_env = "HPD_KEY"

[integrations.delivery]
url = "{delivery_url}"
auth = {auth}
"#,
        store = dir.join("data").display(),
        manifest = env!("CARGO_MANIFEST_DIR"),
    )
}

#[tokio::test]
async fn updates_carry_the_soap_action_and_the_header_login_from_the_environment() {
    // The one test in this binary that reads the variable; nothing else sets it.
    std::env::set_var(PASSWORD_ENV, PASSWORD);
    let posts: Arc<Mutex<Vec<Post>>> = Default::default();
    let (seen, mut seen_rx) = watch::channel(0usize);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/arsys/services", listener.local_addr().unwrap());
    let store = posts.clone();
    let app = axum::Router::new().route(
        "/arsys/services",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let store = store.clone();
            let seen = seen.clone();
            async move {
                let h = |n: &str| {
                    headers
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                };
                store.lock().unwrap().push(Post {
                    soap_action: h("soapaction"),
                    content_type: h("content-type"),
                    authorization: h("authorization"),
                    body,
                });
                seen.send_modify(|n| *n += 1);
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        dir.path(),
        &url,
        r#"{ type = "bearer", token_env = "HPD_TOOL_TOKEN" }"#,
    );
    let cfg = Config::parse(&text, "test", false, &env).unwrap_or_else(|e| panic!("{e}"));
    let running = app::start(cfg).await.expect("gateway starts");

    let input = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("mappings/fixtures/remedy-hpd/happy.input.xml"),
    )
    .unwrap();
    let answer = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/integrations/hpd/incidents",
            running.http_addr
        ))
        .bearer_auth("hpd-key")
        .header("content-type", "text/xml; charset=utf-8")
        .header(
            "soapaction",
            "\"urn:HPD_IncidentInterface_Create_WS/HelpDesk_Submit_Service\"",
        )
        .body(input)
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status().as_u16(),
        202,
        "{}",
        answer.text().await.unwrap()
    );

    // The simulator ACKs in the Dispatch's answer: one update, posted to the tool.
    tokio::time::timeout(
        std::time::Duration::from_secs(20),
        seen_rx.wait_for(|n| *n >= 1),
    )
    .await
    .expect("an update is posted within 20 s")
    .unwrap();
    let post = posts.lock().unwrap()[0].clone();
    assert_eq!(
        post.soap_action.as_deref(),
        Some("\"urn:HPD_IncidentInterface_WS/HelpDesk_Modify_Service\"")
    );
    assert_eq!(
        post.content_type.as_deref(),
        Some("text/xml; charset=utf-8")
    );
    assert_eq!(post.authorization.as_deref(), Some("Bearer tool-token"));
    // The password from the environment, escaped, inside the SOAP header block.
    let header = post
        .body
        .split("<soapenv:Header")
        .nth(1)
        .and_then(|h| h.split("</soapenv:Header>").next())
        .unwrap_or_else(|| panic!("no SOAP header: {}", post.body));
    assert!(
        header.contains("<hpd:userName>loomis_gw</hpd:userName>")
            && header.contains("<hpd:password>hpd-s3cret&amp;&lt;pw&gt;</hpd:password>"),
        "{}",
        post.body
    );
    assert!(
        post.body.contains("<hpd:Status>Assigned</hpd:Status>"),
        "{}",
        post.body
    );
    assert!(
        post.body
            .contains("<hpd:Incident_Number>INC000000012345</hpd:Incident_Number>"),
        "{}",
        post.body
    );
    let _ = running.stop().await;

    // A header auth named like a header the mapping sets would replace it: refused.
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        dir.path(),
        &url,
        r#"{ type = "header", name = "SOAPAction", value_env = "HPD_TOOL_TOKEN" }"#,
    );
    let cfg = Config::parse(&text, "test", false, &env).unwrap_or_else(|e| panic!("{e}"));
    let err = app::start(cfg)
        .await
        .err()
        .expect("start refused")
        .to_string();
    assert!(
        err.contains("the auth header \"soapaction\" would replace a header the gateway sets"),
        "{err}"
    );
}
