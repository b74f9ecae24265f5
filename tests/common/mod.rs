//! Test harness: starts the real gateway on loopback ports with a temp store, and talks
//! real HTTP to it. The Loomis side is the built-in simulator (in-process or stand-alone
//! so that it survives gateway restarts) or a scripted double that checks every message
//! against the spec.
#![allow(dead_code)]

use safepoint_gateway::app::{self, Running};
use safepoint_gateway::config::Config;
use safepoint_gateway::incident::{Incident, State, Update};
use safepoint_gateway::loomis::simulator::{Simulator, SimulatorConfig, SimulatorHandle};
use std::time::Duration;

pub const SN_KEY: &str = "sn-key-123";
pub const INTERNAL_KEY: &str = "internal-key-456";
pub const CB_TOKEN: &str = "callback-token-789";
pub const ADMIN_TOKEN: &str = "admin-token-000";
pub const WAIT: Duration = Duration::from_secs(20);

pub fn env(k: &str) -> Option<String> {
    match k {
        "SN_KEY" => Some(SN_KEY.into()),
        "INTERNAL_KEY" => Some(INTERNAL_KEY.into()),
        "CB_TOKEN" => Some(CB_TOKEN.into()),
        "ADMIN_TOKEN" => Some(ADMIN_TOKEN.into()),
        "TOOL_PW" => Some("tool-pw".into()),
        _ => None,
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

[store]
path = "{store}"

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
    t
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
        self.running.take().unwrap().stop().await;
        self.running = Some(boot(self.dir.path(), &self.options).await);
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
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
    safepoint_gateway::telemetry::init(false, Some("warn"));
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
