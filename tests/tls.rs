//! TLS on both listeners, over real TLS from clients in the test: certificates are made
//! here with rcgen (a CA, the server's certificate, client certificates good, expired,
//! of a foreign CA and of another integration). Each refusal must carry a clear reason
//! in the log, and the listener must go on serving the next good client.

mod common;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use safepoint_gateway::app::{self, ConfigSource, Running};
use safepoint_gateway::config::Config;
use safepoint_gateway::edge::grpc::proto::incident_gateway_client::IncidentGatewayClient;
use safepoint_gateway::edge::grpc::proto::CreateIncidentRequest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

// ---- log capture: every test of this binary logs into one buffer -----------------------

struct Logs {
    text: Mutex<String>,
    changed: tokio::sync::Notify,
}

fn logs() -> &'static Logs {
    static LOGS: OnceLock<&'static Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Logs = Box::leak(Box::new(Logs {
            text: Mutex::new(String::new()),
            changed: tokio::sync::Notify::new(),
        }));
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_env_filter("safepoint_gateway=info")
            .with_writer(move || LogWriter(logs))
            .try_init();
        logs
    })
}

struct LogWriter(&'static Logs);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .text
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(buf));
        self.0.changed.notify_waiters();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits until a log line contains every one of `parts` (case-insensitive).
async fn wait_log(parts: &[&str]) -> String {
    let logs = logs();
    let found = || {
        logs.text
            .lock()
            .unwrap()
            .lines()
            .find(|l| {
                let l = l.to_ascii_lowercase();
                parts.iter().all(|p| l.contains(&p.to_ascii_lowercase()))
            })
            .map(str::to_string)
    };
    tokio::time::timeout(WAIT, async {
        loop {
            let notified = logs.changed.notified();
            if let Some(line) = found() {
                return line;
            }
            notified.await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no log line with {parts:?}"))
}

// ---- certificates -----------------------------------------------------------------------

struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Ca {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ca(CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    /// A leaf certificate and its key (PEM).
    fn leaf(&self, cn: &str, sans: &[&str], client: bool, expired: bool) -> (String, String) {
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The certificates of one test, written where the gateway reads them.
struct Pki {
    ca: Ca,
    ca_pem: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let ca = Ca::new("Test Client And Server CA");
        let (cert, key) = ca.leaf("gateway", &["localhost", "127.0.0.1"], false, false);
        let pki = Pki {
            ca_pem: dir.join("ca.pem"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            ca,
        };
        std::fs::write(&pki.ca_pem, pki.ca.pem()).unwrap();
        std::fs::write(&pki.cert, cert).unwrap();
        std::fs::write(&pki.key, key).unwrap();
        pki
    }
}

// ---- the gateway ------------------------------------------------------------------------

/// The common test configuration plus TLS and three integrations that authenticate by
/// client certificate: `certonly` and `other` (XML), `grpccert` (gRPC field maps).
fn config_text(dir: &Path, pki: &Pki, client_auth: &str, callback_cert: bool) -> String {
    let manifest = env!("CARGO_MANIFEST_DIR");
    let options = Options {
        // The built-in simulator calls back over plain HTTP: ACK in the body only.
        simulator: "ack = \"body\"\noutcome = \"none\"\n".into(),
        ..Options::default()
    };
    let mut t = common::config_text(dir, &options);
    if callback_cert {
        t = t.replace(
            "[callbacks]\n",
            "[callbacks]\nclient_cert = \"CN=loomis-callbacks\"\n",
        );
    }
    t.push_str(&format!(
        r#"
[[integrations]]
name = "certonly"
customer_number = "C100"
mapping = "{manifest}/mappings/servicenow.toml"
client_cert = "CN=remedy-prod"

[[integrations]]
name = "other"
customer_number = "C200"
mapping = "{manifest}/mappings/servicenow.toml"
client_cert = "CN=other-tool"

[[integrations]]
name = "grpccert"
customer_number = "C300"
mapping = "{manifest}/mappings/internal-grpc.toml"
client_cert = "DNS=remedy.bank.example"

[server.tls]
cert = "{cert}"
key = "{key}"
client_ca = "{ca}"
client_auth = "{client_auth}"
watch_secs = 0
"#,
        cert = pki.cert.display(),
        key = pki.key.display(),
        ca = pki.ca_pem.display(),
    ));
    t
}

async fn start(dir: &Path, text: &str) -> Running {
    logs();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::from_file(&path, &env).unwrap_or_else(|e| panic!("{e}\n{text}"));
    app::start_from(
        config,
        ConfigSource {
            path: Some(path),
            env: Arc::new(env),
        },
    )
    .await
    .expect("gateway starts")
}

/// An HTTPS client trusting `ca` and presenting `identity` (certificate, key) if any.
fn https(ca: &str, identity: Option<&(String, String)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// POSTs an incident to `integration`, with `key` as bearer token if given.
async fn post(
    client: &reqwest::Client,
    running: &Running,
    integration: &str,
    reference: &str,
    key: Option<&str>,
) -> Result<(u16, String), reqwest::Error> {
    let mut r = client
        .post(format!(
            "https://127.0.0.1:{}/v1/integrations/{integration}/incidents",
            running.http_addr.port()
        ))
        .header("content-type", "application/xml")
        .body(sn_xml(reference, "UG1234", "AC12"));
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let resp = r.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await?))
}

#[tokio::test]
async fn http_over_tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let running = start(dir.path(), &config_text(dir.path(), &pki, "optional", true)).await;
    let ca = pki.ca.pem();
    let good = pki
        .ca
        .leaf("remedy-prod", &["remedy.bank.example"], true, false);
    let other = pki.ca.leaf("other-tool", &[], true, false);
    let expired = pki.ca.leaf("remedy-prod", &[], true, true);
    let foreign = Ca::new("Someone Else's CA").leaf("remedy-prod", &[], true, false);

    // The certificate authenticates its integration, with no bearer key.
    let (s, b) = post(
        &https(&ca, Some(&good)),
        &running,
        "certonly",
        "TLS-1",
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, 202, "{b}");
    let inc = running
        .gateway
        .get("certonly", "TLS-1")
        .unwrap()
        .expect("stored");
    assert!(
        inc.timeline[0]
            .detail
            .contains("mapped by servicenow.toml sha256:"),
        "{:?}",
        inc.timeline[0]
    );

    // Client certificates are optional here: a bearer key still works without one.
    let (s, b) = post(
        &https(&ca, None),
        &running,
        "servicenow",
        "TLS-2",
        Some(SN_KEY),
    )
    .await
    .unwrap();
    assert_eq!(s, 202, "{b}");
    // ... but a certificate-only integration cannot be reached without its certificate.
    let (s, b) = post(&https(&ca, None), &running, "certonly", "TLS-3", None)
        .await
        .unwrap();
    assert_eq!(s, 401, "{b}");
    assert!(b.contains("client certificate"), "{b}");

    // Another integration's certificate: refused, with the reason logged.
    let (s, b) = post(
        &https(&ca, Some(&other)),
        &running,
        "certonly",
        "TLS-4",
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, 403, "{b}");
    assert!(b.contains("CN=other-tool"), "{b}");
    wait_log(&["legacy request refused", "CN=other-tool", "certonly"]).await;

    // An expired certificate and one of a foreign CA fail the handshake.
    let err = post(
        &https(&ca, Some(&expired)),
        &running,
        "certonly",
        "TLS-5",
        None,
    )
    .await;
    assert!(err.is_err(), "{err:?}");
    wait_log(&["TLS connection refused", "listener=\"http\"", "expired"]).await;
    let err = post(
        &https(&ca, Some(&foreign)),
        &running,
        "certonly",
        "TLS-6",
        None,
    )
    .await;
    assert!(err.is_err(), "{err:?}");
    wait_log(&[
        "TLS connection refused",
        "listener=\"http\"",
        "unknownissuer",
    ])
    .await;

    // Callbacks require Loomis's certificate: an integration's is refused with why.
    let callback = |client: reqwest::Client| {
        let url = format!(
            "https://127.0.0.1:{}/v1/loomis/messages",
            running.http_addr.port()
        );
        async move {
            let r = client
                .post(url)
                .bearer_auth(CB_TOKEN)
                .json(&serde_json::json!({"MessageType": "ACK", "CustomerNumber": "C100",
                    "IncidentReference": "TLS-1", "IncidentId": "L-1", "DateTime": "2021-01-16T15:17:48Z"}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (s, b) = callback(https(&ca, Some(&good))).await;
    assert_eq!(s, 401, "{b}");
    assert!(b.contains("CN=loomis-callbacks"), "{b}");
    let loomis = pki.ca.leaf("loomis-callbacks", &[], true, false);
    let (s, b) = callback(https(&ca, Some(&loomis))).await;
    assert_ne!(s, 401, "{b}");

    // After every refusal the listener still serves the next good client.
    let (s, b) = post(
        &https(&ca, Some(&good)),
        &running,
        "certonly",
        "TLS-7",
        None,
    )
    .await
    .unwrap();
    assert_eq!(s, 202, "{b}");
    running.stop().await.unwrap();
}

// ---- gRPC -------------------------------------------------------------------------------

/// A gRPC channel over TLS (ALPN h2) trusting `ca`, presenting `identity` if any.
async fn grpc(
    running: &Running,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<IncidentGatewayClient<tonic::transport::Channel>, tonic::transport::Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let addr = running.grpc_addr;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let name = ServerName::try_from("127.0.0.1").unwrap();
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await?;
    Ok(IncidentGatewayClient::new(channel))
}

fn create(integration: &str, reference: &str) -> CreateIncidentRequest {
    let fields: HashMap<String, String> = [
        ("reference", reference),
        ("device", "ug1234"),
        ("contact.name", "John Smith"),
        ("contact.phone", "123-123-1234"),
        ("subject", "Safe door does not open"),
        ("description", "The door is stuck."),
        ("fault_code", "ac12"),
        ("fault_time", "2021-01-16T16:17:48+01:00"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    CreateIncidentRequest {
        integration: integration.into(),
        fields,
    }
}

/// A CreateIncident over a fresh TLS connection: the code, or OK.
async fn grpc_create(
    running: &Running,
    ca: &str,
    identity: Option<&(String, String)>,
    integration: &str,
    reference: &str,
) -> tonic::Code {
    match grpc(running, ca, identity).await {
        Err(_) => tonic::Code::Unavailable,
        Ok(mut c) => match c.create_incident(create(integration, reference)).await {
            Ok(_) => tonic::Code::Ok,
            Err(s) => s.code(),
        },
    }
}

#[tokio::test]
async fn grpc_over_tls_requires_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let running = start(
        dir.path(),
        &config_text(dir.path(), &pki, "required", false),
    )
    .await;
    let ca = pki.ca.pem();
    let good = pki
        .ca
        .leaf("remedy-prod", &["remedy.bank.example"], true, false);
    let other = pki.ca.leaf("other-tool", &[], true, false);
    let expired = pki
        .ca
        .leaf("remedy-prod", &["remedy.bank.example"], true, true);

    // The certificate's DNS name authenticates `grpccert`; no bearer key is sent.
    assert_eq!(
        grpc_create(&running, &ca, Some(&good), "grpccert", "G-1").await,
        tonic::Code::Ok
    );
    // No certificate at all: refused in the handshake.
    assert_ne!(
        grpc_create(&running, &ca, None, "grpccert", "G-2").await,
        tonic::Code::Ok
    );
    wait_log(&[
        "TLS connection refused",
        "listener=\"grpc\"",
        "no certificates",
    ])
    .await;
    // Expired: refused in the handshake.
    assert_ne!(
        grpc_create(&running, &ca, Some(&expired), "grpccert", "G-3").await,
        tonic::Code::Ok
    );
    wait_log(&["TLS connection refused", "listener=\"grpc\"", "expired"]).await;
    // Another integration's certificate: PERMISSION_DENIED, and why in the log.
    assert_eq!(
        grpc_create(&running, &ca, Some(&other), "grpccert", "G-4").await,
        tonic::Code::PermissionDenied
    );
    wait_log(&["gRPC call refused", "CN=other-tool", "grpccert"]).await;
    // The listener still serves a good client.
    assert_eq!(
        grpc_create(&running, &ca, Some(&good), "grpccert", "G-5").await,
        tonic::Code::Ok
    );
    // The HTTP listener refuses a client without a certificate too (required).
    assert!(post(
        &https(&ca, None),
        &running,
        "servicenow",
        "G-6",
        Some(SN_KEY)
    )
    .await
    .is_err());
    running.stop().await.unwrap();
}

#[tokio::test]
async fn a_rotated_certificate_is_served_and_a_bad_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let running = start(
        dir.path(),
        &config_text(dir.path(), &pki, "optional", false),
    )
    .await;
    let ca = pki.ca.pem();
    let serves = || async {
        let (status, _) = post(
            &https(&ca, None),
            &running,
            "servicenow",
            "R-0",
            Some(SN_KEY),
        )
        .await
        .unwrap();
        status
    };
    assert_eq!(serves().await, 202);

    // A key that is not the certificate's: the reload is refused, the old pair serves.
    let (_, wrong_key) = pki.ca.leaf("x", &["127.0.0.1"], false, false);
    let (new_cert, new_key) = pki.ca.leaf("gateway-2", &["127.0.0.1"], false, false);
    std::fs::write(&pki.cert, &new_cert).unwrap();
    std::fs::write(&pki.key, &wrong_key).unwrap();
    let err = app::reload(&running).await.unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
    assert_eq!(serves().await, 200);

    // The right pair: in force for the next connection.
    std::fs::write(&pki.key, &new_key).unwrap();
    let report = app::reload(&running).await.unwrap();
    assert_eq!(report.generation, 2);
    let cert = served_certificate(&running, &ca).await;
    assert_eq!(cert, new_cert_der(&new_cert));
    running.stop().await.unwrap();
}

fn new_cert_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// The leaf certificate the HTTP listener presents now.
async fn served_certificate(running: &Running, ca: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(running.http_addr)
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn changed_files_are_picked_up_without_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let text = config_text(dir.path(), &pki, "optional", false)
        .replace("watch_secs = 0", "watch_secs = 1");
    let running = start(dir.path(), &text).await;
    let ca = pki.ca.pem();
    let cert_path = pki.cert.display().to_string();
    let first = served_certificate(&running, &ca).await;

    // A key that is no key: logged, and the old pair keeps serving.
    std::fs::write(&pki.key, "not a key\n").unwrap();
    let line = wait_log(&["do not load", "listener=\"http\"", &cert_path]).await;
    assert!(line.contains("holds no PEM private key"), "{line}");
    assert_eq!(served_certificate(&running, &ca).await, first);

    // A good new pair: served from the next connection on.
    let (cert, key) = pki.ca.leaf("gateway-3", &["127.0.0.1"], false, false);
    std::fs::write(&pki.key, &key).unwrap();
    std::fs::write(&pki.cert, &cert).unwrap();
    // Only the new pair loads (the new key with the old certificate does not), so the
    // first success logged for these files is the new pair.
    wait_log(&["(re)loaded", "listener=\"http\"", &cert_path]).await;
    assert_eq!(served_certificate(&running, &ca).await, new_cert_der(&cert));
    running.stop().await.unwrap();
}

#[tokio::test]
async fn the_console_cookie_is_secure_when_the_listener_serves_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let running = start(
        dir.path(),
        &config_text(dir.path(), &pki, "optional", false),
    )
    .await;
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca.pem().as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client
        .post(format!(
            "https://127.0.0.1:{}/console/login",
            running.http_addr.port()
        ))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    for part in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    running.stop().await.unwrap();
}
