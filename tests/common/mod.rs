//! Test harness: starts the real gateway on loopback ports with a temp store, and talks
//! real HTTP to it. The Loomis side is the built-in simulator (in-process or stand-alone
//! so that it survives gateway restarts) or a scripted double that checks every message
//! against the spec.
#![allow(dead_code)]

pub mod pg;

use safepoint_gateway::app::{self, Running};
use safepoint_gateway::config::Config;
use safepoint_gateway::incident::{Incident, State, Update};
use safepoint_gateway::simulator::{Simulator, SimulatorConfig, SimulatorHandle};
use std::time::Duration;

pub const SN_KEY: &str = "sn-key-123";
pub const INTERNAL_KEY: &str = "internal-key-456";
pub const CB_TOKEN: &str = "callback-token-789";
pub const ADMIN_TOKEN: &str = "admin-token-000";
/// Signs in to the console to look only.
pub const READONLY_TOKEN: &str = "readonly-token-111";
pub const REMEDY_KEY: &str = "remedy-key-321";
/// The Loomis CustomerNumber of the `remedy` integration (distinct from servicenow's).
pub const REMEDY_CUSTOMER: &str = "R555001";
pub const WAIT: Duration = Duration::from_secs(20);

pub fn env(k: &str) -> Option<String> {
    match k {
        "SN_KEY" => Some(SN_KEY.into()),
        "INTERNAL_KEY" => Some(INTERNAL_KEY.into()),
        "CB_TOKEN" => Some(CB_TOKEN.into()),
        "ADMIN_TOKEN" => Some(ADMIN_TOKEN.into()),
        "READONLY_TOKEN" => Some(READONLY_TOKEN.into()),
        "REMEDY_KEY" => Some(REMEDY_KEY.into()),
        "TOOL_PW" => Some("tool-pw".into()),
        other => pg::url_of(other),
    }
}

/// Knobs of a test gateway.
#[derive(Clone)]
pub struct Options {
    /// `None`: built-in simulator; `Some(url)`: that Loomis.
    pub loomis_url: Option<String>,
    pub simulator: String,
    pub loomis_timeout_ms: u64,
    pub retry_max_age_secs: u64,
    /// Where servicenow updates are posted back.
    pub delivery_url: Option<String>,
    pub delivery_max_attempts: u32,
    /// Also configure the `remedy` integration (SOAP 1.1 mapping, key [`REMEDY_KEY`]).
    pub remedy: bool,
    /// `server.request_timeout_ms`; `None` keeps the gateway's default.
    pub request_timeout_ms: Option<u64>,
    /// `server.header_timeout_ms`; `None` keeps the gateway's default.
    pub header_timeout_ms: Option<u64>,
    /// `server.max_body_bytes`; `None` keeps the gateway's default (1 MiB).
    pub max_body_bytes: Option<usize>,
    /// `[admin] read_only_token_env = "READONLY_TOKEN"` (the console's look-only sign-in).
    pub read_only_token: bool,
    /// `Some(url)`: the store is this PostgreSQL database (see [`pg::TestDb`]), not a
    /// directory.
    pub database_url: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            loomis_url: None,
            simulator:
                "ack = \"body\"\naccept_after_ms = 10\nclose_after_ms = 10\noutcome = \"close\"\n"
                    .into(),
            loomis_timeout_ms: 2000,
            retry_max_age_secs: 3600,
            delivery_url: None,
            delivery_max_attempts: 5,
            remedy: false,
            request_timeout_ms: None,
            header_timeout_ms: None,
            max_body_bytes: None,
            read_only_token: false,
            database_url: None,
        }
    }
}

pub fn config_text(dir: &std::path::Path, o: &Options) -> String {
    let manifest = env!("CARGO_MANIFEST_DIR");
    let loomis = o.loomis_url.clone().unwrap_or_else(|| "simulator".into());
    let mut t = format!(
        r#"
[server]
http_listen = "127.0.0.1:0"
grpc_listen = "127.0.0.1:0"
shutdown_grace_ms = 3000
{server_extra}
[store]
path = "{store}"
{store_extra}
[loomis]
url = "{loomis}"
timeout_ms = {timeout}
connect_timeout_ms = 500
retry = {{ initial_ms = 20, max_ms = 200, max_age_secs = {age} }}

[callbacks]
auth = {{ type = "bearer", token_env = "CB_TOKEN" }}

[simulator]
{sim}
[admin]
token_env = "ADMIN_TOKEN"
{read_only}

[[integrations]]
name = "servicenow"
customer_number = "A123456"
mapping = "{manifest}/mappings/servicenow.toml"
api_key_env = "SN_KEY"
"#,
        store = dir.join("data").display(),
        timeout = o.loomis_timeout_ms,
        age = o.retry_max_age_secs,
        sim = o.simulator,
        server_extra = server_extra(o),
        read_only = if o.read_only_token {
            "read_only_token_env = \"READONLY_TOKEN\""
        } else {
            ""
        },
        store_extra = o
            .database_url
            .as_deref()
            .map(pg::store_lines)
            .unwrap_or_default(),
    );
    if let Some(url) = &o.delivery_url {
        t.push_str(&format!(
            "[integrations.delivery]\nurl = \"{url}\"\nauth = {{ type = \"basic\", username = \"gw\", password_env = \"TOOL_PW\" }}\nretry = {{ initial_ms = 20, max_ms = 100, max_age_secs = 3600, max_attempts = {} }}\n",
            o.delivery_max_attempts
        ));
    }
    t.push_str(&format!(
        "\n[[integrations]]\nname = \"internal\"\ncustomer_number = \"B777\"\nmapping = \"{manifest}/mappings/internal-grpc.toml\"\napi_key_env = \"INTERNAL_KEY\"\n"
    ));
    if o.remedy {
        t.push_str(&format!(
            "\n[[integrations]]\nname = \"remedy\"\ncustomer_number = \"{REMEDY_CUSTOMER}\"\nmapping = \"{manifest}/mappings/remedy.toml\"\napi_key_env = \"REMEDY_KEY\"\n"
        ));
    }
    t
}

/// The optional `[server]` lines of [`Options`] (empty when all are defaults).
fn server_extra(o: &Options) -> String {
    let mut s = String::new();
    if let Some(ms) = o.request_timeout_ms {
        s.push_str(&format!("request_timeout_ms = {ms}\n"));
    }
    if let Some(ms) = o.header_timeout_ms {
        s.push_str(&format!("header_timeout_ms = {ms}\n"));
    }
    if let Some(b) = o.max_body_bytes {
        s.push_str(&format!("max_body_bytes = {b}\n"));
    }
    s
}

/// A running gateway with its temp directory.
pub struct Harness {
    pub running: Option<Running>,
    pub dir: tempfile::TempDir,
    pub options: Options,
    pub client: reqwest::Client,
}

impl Harness {
    pub async fn start(options: Options) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let running = boot(dir.path(), &options).await;
        Harness {
            running: Some(running),
            dir,
            options,
            client: reqwest::Client::new(),
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.running().http_addr)
    }

    pub fn callback_url(&self) -> String {
        format!("{}/v1/loomis/messages", self.base())
    }

    pub fn sim(&self) -> &SimulatorHandle {
        self.running()
            .simulator
            .as_ref()
            .expect("built-in simulator")
    }

    /// Graceful stop, then start again on the same store.
    pub async fn restart(&mut self) {
        self.running.take().unwrap().stop().await.unwrap();
        self.running = Some(boot(self.dir.path(), &self.options).await);
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.unwrap();
        }
    }

    /// POSTs an XML incident for servicenow.
    pub async fn create(&self, xml: &str) -> (u16, String) {
        self.post_xml(
            "/v1/integrations/servicenow/incidents",
            xml,
            "application/xml",
        )
        .await
    }

    pub async fn post_xml(&self, path: &str, xml: &str, content_type: &str) -> (u16, String) {
        let r = self
            .client
            .post(format!("{}{path}", self.base()))
            .bearer_auth(SN_KEY)
            .header("content-type", content_type)
            .body(xml.to_string())
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    pub async fn callback(&self, msg: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(self.callback_url())
            .bearer_auth(CB_TOKEN)
            .json(&msg)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// Whether `/metrics` has a `gateway_loomis_messages_total` series with these labels.
    pub async fn loomis_message_counted(&self, kind: &str, outcome: &str, via: &str) -> bool {
        self.counted(
            "gateway_loomis_messages_total",
            &[("kind", kind), ("outcome", outcome), ("via", via)],
        )
        .await
    }

    /// Whether `/metrics` has a non-zero `series` with these labels.
    pub async fn counted(&self, series: &str, labels: &[(&str, &str)]) -> bool {
        let metrics = scrape(&self.client, &self.base()).await;
        metrics.lines().any(|l| {
            l.starts_with(&format!("{series}{{"))
                && labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
                && l.rsplit(' ').next().is_some_and(|n| n != "0")
        })
    }

    pub fn incident(&self, reference: &str) -> Option<Incident> {
        self.running().gateway.get("servicenow", reference).unwrap()
    }

    pub fn updates(&self, integration: &str) -> Vec<Update> {
        self.running()
            .gateway
            .store()
            .updates_after(integration, 0, 1_000_000)
            .unwrap()
    }

    pub fn updates_of(&self, reference: &str) -> Vec<Update> {
        self.updates("servicenow")
            .into_iter()
            .filter(|u| u.incident_reference == reference)
            .collect()
    }

    /// Waits until the incident satisfies `pred`, waking on every durable update and
    /// on a short tick (states like Sent produce no update to wake on).
    pub async fn wait_for(
        &self,
        reference: &str,
        what: &str,
        pred: impl Fn(&Incident) -> bool,
    ) -> Incident {
        let mut watch = self.running().gateway.store().watch_sequence("servicenow");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(i) = self.incident(reference) {
                if pred(&i) {
                    // A read can see a batch a moment before its flush; an empty write
                    // completes only after the next flush, when all before it is durable
                    // and its updates are published.
                    self.running()
                        .gateway
                        .store()
                        .write(|_| Ok(()))
                        .await
                        .unwrap();
                    return i;
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{reference}: timed out waiting for {what}; now {:?}",
                    self.incident(reference).map(|i| (i.state, i.timeline))
                );
            }
            tokio::select! {
                _ = watch.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    }

    pub async fn wait_state(&self, reference: &str, state: State) -> Incident {
        self.wait_for(reference, state.as_str(), |i| i.state == state)
            .await
    }
}

pub async fn boot(dir: &std::path::Path, o: &Options) -> Running {
    let text = config_text(dir, o);
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("warn")
        .try_init();
    let config =
        Config::parse(&text, "test", false, &env).unwrap_or_else(|e| panic!("{e}\n{text}"));
    app::start(config).await.expect("gateway starts")
}

/// A stand-alone simulator (survives gateway restarts).
pub async fn simulator(mut config: SimulatorConfig) -> SimulatorHandle {
    config.accept_after = Duration::from_millis(10);
    config.close_after = Duration::from_millis(10);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    Simulator::start(config, l).await.unwrap()
}

/// A ServiceNow-style export.
/// POSTs a ServiceNow incident to the gateway at `base`, for tests that run a gateway
/// without a [`Harness`].
pub async fn post_sn(client: &reqwest::Client, base: &str, reference: &str) -> (u16, String) {
    let r = client
        .post(format!("{base}/v1/integrations/servicenow/incidents"))
        .bearer_auth(SN_KEY)
        .header("content-type", "application/xml")
        .body(sn_xml(reference, "UG1234", "AC12"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The gateway's `/metrics` text.
pub async fn scrape(client: &reqwest::Client, base: &str) -> String {
    client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub fn sn_xml(reference: &str, device: &str, fault: &str) -> String {
    format!(
        "<incident><number>{reference}</number><cmdb_ci><serial_number>{device}</serial_number></cmdb_ci>\
<caller_id><name>John Smith</name><phone>123-123-1234</phone><email>john.smith@example.com</email></caller_id>\
<short_description>Safe Door Issue</short_description><description>Cannot open the door</description>\
<u_fault_code>{fault}</u_fault_code><opened_at>2021-01-16 09:17:48</opened_at></incident>"
    )
}

pub fn kinds(updates: &[Update]) -> Vec<&'static str> {
    updates.iter().map(|u| u.kind.as_str()).collect()
}

/// An HTTP answer as the caller saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    /// The `content-type` header, empty when absent.
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    /// The body parsed as XML; panics (showing the body) when it is not well-formed.
    pub fn xml(&self) -> XmlNode {
        parse_xml(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer {} is not well-formed XML: {e}\n{}",
                self.status, self.body
            )
        })
    }
}

impl Harness {
    /// Sends `req` and reads the whole answer.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let r = req.send().await.expect("request reaches the gateway");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = r.text().await.expect("answer body");
        Reply {
            status,
            content_type,
            headers,
            body,
        }
    }

    /// POSTs `body` to `path` with an optional bearer `key` and content type.
    pub async fn post(
        &self,
        path: &str,
        key: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        let mut req = self.client.post(format!("{}{path}", self.base()));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        self.send(req.body(body)).await
    }

    /// GETs `path` with an optional bearer `key`.
    pub async fn get(&self, path: &str, key: Option<&str>) -> Reply {
        let mut req = self.client.get(format!("{}{path}", self.base()));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        self.send(req).await
    }

    /// The incident `reference` of any integration, as last committed.
    pub fn incident_in(&self, integration: &str, reference: &str) -> Option<Incident> {
        self.running().gateway.get(integration, reference).unwrap()
    }

    /// [`Harness::wait_for`] for any integration.
    pub async fn wait_for_in(
        &self,
        integration: &str,
        reference: &str,
        what: &str,
        pred: impl Fn(&Incident) -> bool,
    ) -> Incident {
        let mut watch = self.running().gateway.store().watch_sequence(integration);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(i) = self.incident_in(integration, reference) {
                if pred(&i) {
                    return i;
                }
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{integration}/{reference}: timed out waiting for {what}; now {:?}",
                    self.incident_in(integration, reference)
                        .map(|i| (i.state, i.timeline))
                );
            }
            tokio::select! {
                _ = watch.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(10)) => {}
            }
        }
    }
}

/// Polls `probe` (on a short tick, for state that raises no event) until it yields a
/// value, or panics after [`WAIT`] naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A file of the shipped mappings' fixtures, e.g. `fixture("remedy/happy.input.xml")`.
pub fn fixture(name: &str) -> String {
    let p = format!("{}/mappings/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// An element of a parsed answer, namespaces resolved. Written for the tests, on
/// quick-xml directly, so that answers are checked by other code than the gateway's.
#[derive(Debug, Clone, PartialEq)]
pub struct XmlNode {
    /// The name as written (with its prefix).
    pub name: String,
    /// The namespace URI of the element, empty for none.
    pub ns: String,
    /// Attributes as written, namespace declarations included, values unescaped.
    pub attrs: Vec<(String, String)>,
    pub children: Vec<XmlNode>,
    /// The element's own text (not its descendants'), references resolved.
    pub text: String,
}

impl XmlNode {
    /// The name without its prefix.
    pub fn local(&self) -> &str {
        self.name.rsplit(':').next().unwrap_or(&self.name)
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The children with this local name.
    pub fn all(&self, local: &str) -> impl Iterator<Item = &XmlNode> + '_ {
        let local = local.to_string();
        self.children.iter().filter(move |c| c.local() == local)
    }

    /// The one child with this local name; panics when there is none or several.
    pub fn one(&self, local: &str) -> &XmlNode {
        let found: Vec<_> = self.all(local).collect();
        assert_eq!(
            found.len(),
            1,
            "<{}> has {} <{local}> children: {self:#?}",
            self.name,
            found.len()
        );
        found[0]
    }

    /// The text of the one child with this local name.
    pub fn text_of(&self, local: &str) -> &str {
        &self.one(local).text
    }

    /// The text of the child with this local name, if there is one.
    pub fn opt_text(&self, local: &str) -> Option<&str> {
        self.all(local).next().map(|c| c.text.as_str())
    }

    /// The local names of the children, in order.
    pub fn child_names(&self) -> Vec<&str> {
        self.children.iter().map(|c| c.local()).collect()
    }
}

/// Parses a complete XML document: one root, every element closed with its own name,
/// no DOCTYPE, only predefined and character references, namespace prefixes declared.
pub fn parse_xml(s: &str) -> Result<XmlNode, String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(s);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<XmlNode> = Vec::new();
    // Namespace bindings in scope: (prefix, uri), innermost last; one frame per element.
    let mut scopes: Vec<Vec<(String, String)>> = Vec::new();
    let mut root: Option<XmlNode> = None;
    let resolve = |scopes: &Vec<Vec<(String, String)>>, prefix: &str| -> Option<String> {
        if prefix == "xml" {
            return Some("http://www.w3.org/XML/1998/namespace".into());
        }
        for frame in scopes.iter().rev() {
            if let Some((_, uri)) = frame.iter().rev().find(|(p, _)| p == prefix) {
                return Some(uri.clone());
            }
        }
        if prefix.is_empty() {
            Some(String::new())
        } else {
            None
        }
    };
    loop {
        let ev = reader
            .read_event()
            .map_err(|e| format!("at byte {}: {e}", reader.buffer_position()))?;
        let empty = matches!(ev, Event::Empty(_));
        match ev {
            Event::Start(e) | Event::Empty(e) => {
                if root.is_some() {
                    return Err("more than one root element".into());
                }
                let name = e.name().into_inner().to_string();
                let mut attrs = Vec::new();
                let mut frame = Vec::new();
                for a in e.attributes() {
                    let a = a.map_err(|e| e.to_string())?;
                    let k = a.key.into_inner().to_string();
                    let v = a
                        .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                        .map_err(|e| e.to_string())?
                        .into_owned();
                    if k == "xmlns" {
                        frame.push((String::new(), v.clone()));
                    } else if let Some(p) = k.strip_prefix("xmlns:") {
                        frame.push((p.to_string(), v.clone()));
                    }
                    attrs.push((k, v));
                }
                scopes.push(frame);
                let prefix = name.rsplit_once(':').map(|(p, _)| p).unwrap_or("");
                let ns = resolve(&scopes, prefix)
                    .ok_or_else(|| format!("prefix {prefix:?} of <{name}> is not declared"))?;
                stack.push(XmlNode {
                    name,
                    ns,
                    attrs,
                    children: Vec::new(),
                    text: String::new(),
                });
                if empty {
                    close(&mut stack, &mut scopes, &mut root);
                }
            }
            Event::End(_) => close(&mut stack, &mut scopes, &mut root),
            Event::Text(t) => {
                let t = t.xml10_content();
                match stack.last_mut() {
                    Some(n) => n.text.push_str(&t),
                    None if t.trim().is_empty() => {}
                    None => return Err(format!("text outside the root: {t:?}")),
                }
            }
            Event::CData(c) => match stack.last_mut() {
                Some(n) => n.text.push_str(&c.xml10_content()),
                None => return Err("CDATA outside the root".into()),
            },
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(c) => c,
                    None => match &*r {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        other => return Err(format!("undefined entity &{other};")),
                    },
                };
                match stack.last_mut() {
                    Some(n) => n.text.push(c),
                    None => return Err("reference outside the root".into()),
                }
            }
            Event::DocType(_) => return Err("DOCTYPE in an answer".into()),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if let Some(open) = stack.last() {
        return Err(format!("<{}> is not closed", open.name));
    }
    root.ok_or_else(|| "no root element".into())
}

fn close(
    stack: &mut Vec<XmlNode>,
    scopes: &mut Vec<Vec<(String, String)>>,
    root: &mut Option<XmlNode>,
) {
    let node = stack.pop().expect("an open element");
    scopes.pop();
    match stack.last_mut() {
        Some(parent) => parent.children.push(node),
        None => *root = Some(node),
    }
}

/// The `<Error>` of a legacy answer: the document itself, or the detail of a SOAP 1.1
/// or 1.2 fault. Checks it has a `<Code>` and a non-empty `<Message>`.
pub fn legacy_error(doc: &XmlNode) -> XmlNode {
    let err = if doc.local() == "Envelope" {
        let fault = doc.one("Body").one("Fault");
        let detail = fault
            .all("detail")
            .chain(fault.all("Detail"))
            .next()
            .expect("fault has a detail");
        detail.one("Error").clone()
    } else {
        doc.clone()
    };
    assert_eq!(err.local(), "Error", "{doc:#?}");
    assert!(!err.text_of("Code").is_empty(), "{err:#?}");
    assert!(!err.text_of("Message").trim().is_empty(), "{err:#?}");
    err
}

/// The `field` attributes of an `<Error>`'s `<Problem>`s, in order.
pub fn problem_fields(err: &XmlNode) -> Vec<String> {
    err.all("Problem")
        .map(|p| p.attr("field").expect("Problem has field").to_string())
        .collect()
}

/// A legacy tool's update endpoint that answers every post with the status it is set to
/// (change it with `status.store(..)`); returns its URL.
pub async fn status_tool(status: std::sync::Arc<std::sync::atomic::AtomicU16>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/updates", l.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/updates",
        axum::routing::post(move || {
            let s = status.load(std::sync::atomic::Ordering::SeqCst);
            async move { axum::http::StatusCode::from_u16(s).unwrap() }
        }),
    );
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    url
}
