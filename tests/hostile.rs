//! Hostile input over real HTTP to the create route: entity expansion and external
//! entities, absurd nesting and namespace floods, oversized and undecodable bodies, and
//! a sender that stalls mid-body. Each gets its error, and the gateway stays healthy:
//! `/healthz` answers and a normal incident is still accepted afterwards.

mod common;

use common::*;
use std::io::ErrorKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SN_INCIDENTS: &str = "/v1/integrations/servicenow/incidents";

/// Posts `body` as XML to servicenow's create route and checks the `<Error>` answer.
async fn refused(h: &Harness, body: impl Into<reqwest::Body>, status: u16, code: &str) -> XmlNode {
    let r = h
        .post(SN_INCIDENTS, Some(SN_KEY), Some("application/xml"), body)
        .await;
    assert_eq!(r.status, status, "{}", r.body);
    let err = legacy_error(&r.xml());
    assert_eq!(err.text_of("Code"), code, "{}", r.body);
    err
}

/// The gateway still serves: liveness, and a normal create end to end.
async fn still_healthy(h: &Harness, reference: &str) {
    let r = h.get("/healthz", None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (s, b) = h.create(&sn_xml(reference, "UG1234", "AC12")).await;
    assert_eq!(s, 202, "{b}");
    h.wait_for(reference, "ACK", |i| i.incident_id.is_some())
        .await;
}

/// A listener that records whether anyone connected: the target of external entities.
fn tripwire() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let url = format!("http://{}/evil", l.local_addr().unwrap());
    (l, url)
}

fn assert_not_contacted(l: &std::net::TcpListener, what: &str) {
    match l.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("{what}: the gateway fetched the external entity: {other:?}"),
    }
}

#[tokio::test]
async fn entity_expansion_and_external_entities_are_refused_never_expanded() {
    let h = Harness::start(Options::default()).await;
    let err = refused(
        &h,
        fixture("servicenow/billion-laughs.input.xml"),
        400,
        "DtdRefused",
    )
    .await;
    assert!(!format!("{err:?}").contains("lollol"), "{err:#?}");

    let (wire, url) = tripwire();
    let happy = fixture("servicenow/happy.input.xml");
    let with_ref = |entity: &str| happy.replace("INC0010001", entity);
    let attacks = [
        (
            "XXE, local file",
            format!(
                "<!DOCTYPE incident [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>{}",
                with_ref("&xxe;")
            ),
        ),
        (
            "XXE, over HTTP",
            format!(
                "<!DOCTYPE incident [<!ENTITY xxe SYSTEM \"{url}\">]>{}",
                with_ref("&xxe;")
            ),
        ),
        (
            "external DTD",
            format!("<!DOCTYPE incident SYSTEM \"{url}\">{happy}"),
        ),
        (
            "parameter entity",
            format!("<!DOCTYPE incident [<!ENTITY % p SYSTEM \"{url}\"> %p;]>{happy}"),
        ),
    ];
    for (what, body) in attacks {
        let r = h
            .post(SN_INCIDENTS, Some(SN_KEY), Some("application/xml"), body)
            .await;
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        let err = legacy_error(&r.xml());
        assert_eq!(err.text_of("Code"), "DtdRefused", "{what}");
        assert!(!r.body.contains("root:"), "{what}: file content leaked");
        assert_not_contacted(&wire, what);
    }
    // An entity no DTD declared (HTML's &nbsp;, or an XXE attempt without its DOCTYPE)
    // is named as such, never looked up.
    for (what, entity) in [("undeclared entity", "&xxe;"), ("HTML entity", "&nbsp;")] {
        let r = h
            .post(
                SN_INCIDENTS,
                Some(SN_KEY),
                Some("application/xml"),
                with_ref(entity),
            )
            .await;
        assert_eq!(r.status, 400, "{what}: {}", r.body);
        let err = legacy_error(&r.xml());
        assert_eq!(err.text_of("Code"), "UndefinedEntity", "{what}");
        assert!(
            err.text_of("Message")
                .contains(&format!("undefined entity {entity}")),
            "{what}: {err:?}"
        );
        assert_not_contacted(&wire, what);
    }
    assert!(h.incident("INC0010001").is_none());
    still_healthy(&h, "HOS1001").await;
    h.stop().await;
}

#[tokio::test]
async fn deep_nesting_and_namespace_floods_are_refused() {
    // Room for 100,000 namespace declarations, so the parser's limit is what refuses them.
    let h = Harness::start(Options {
        max_body_bytes: Some(4 << 20),
        ..Options::default()
    })
    .await;
    let deep = format!("{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000));
    let err = refused(&h, deep, 400, "MalformedXml").await;
    assert!(err.text_of("Message").contains("deeper"), "{err:#?}");

    let mut flood = String::from("<incident");
    for i in 0..100_000 {
        flood.push_str(&format!(" xmlns:n{i}=\"urn:n{i}\""));
    }
    flood.push_str("><number>HOS2000</number></incident>");
    assert!(flood.len() > 1 << 20 && flood.len() < 4 << 20);
    let err = refused(&h, flood, 400, "MalformedXml").await;
    assert!(
        err.text_of("Message").contains("namespace declarations"),
        "{err:#?}"
    );
    // A deep SOAP envelope announced by its content type is refused as a fault.
    let r = h
        .post(
            SN_INCIDENTS,
            Some(SN_KEY),
            Some("application/soap+xml"),
            format!("{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000)),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(legacy_error(&r.xml()).text_of("Code"), "MalformedXml");
    still_healthy(&h, "HOS2001").await;
    h.stop().await;
}

#[tokio::test]
async fn oversized_and_undecodable_bodies_are_refused() {
    let h = Harness::start(Options::default()).await;
    // Over the 1 MiB limit, with a Content-Length and streamed without one.
    let big =
        sn_xml("HOS3000", "UG1234", "AC12").replace("Cannot open the door", &"x".repeat(2 << 20));
    refused(&h, big.clone(), 413, "PayloadTooLarge").await;
    let chunks: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>> = big
        .into_bytes()
        .chunks(64 << 10)
        .map(|c| Ok(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(c))))
        .collect();
    let streamed = reqwest::Body::wrap(http_body_util::StreamBody::new(futures::stream::iter(
        chunks,
    )));
    refused(&h, streamed, 413, "PayloadTooLarge").await;

    // Bytes that are not UTF-8, and a UTF-16 document cut in the middle of a character.
    let mut bad = b"<incident><number>HOS3001</number><description>".to_vec();
    bad.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
    bad.extend_from_slice(b"</description></incident>");
    let err = refused(&h, bad, 400, "MalformedXml").await;
    assert!(err.text_of("Message").contains("UTF-8"), "{err:#?}");
    let utf16: Vec<u8> = [0xff, 0xfe]
        .into_iter()
        .chain("<incident/>".encode_utf16().flat_map(|u| u.to_le_bytes()))
        .chain([0x3c])
        .collect();
    let err = refused(&h, utf16, 400, "MalformedXml").await;
    assert!(
        err.text_of("Message").contains("not valid UTF-16LE"),
        "{err:#?}"
    );
    assert!(h.incident("HOS3000").is_none() && h.incident("HOS3001").is_none());
    still_healthy(&h, "HOS3002").await;
    h.stop().await;
}

/// Sends `head` on a raw connection, stalls, and returns what the gateway answers
/// before it closes the connection.
async fn stall_after(h: &Harness, head: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(h.running().http_addr)
        .await
        .unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    // The gateway's request timeout ends this; WAIT only guards against a hang.
    tokio::time::timeout(WAIT, s.read_to_end(&mut answer))
        .await
        .expect("the gateway cut the stalled request off")
        .ok();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_slow_sender_is_cut_off_with_408() {
    let h = Harness::start(Options {
        request_timeout_ms: Some(1000),
        ..Options::default()
    })
    .await;
    let head = format!(
        "POST {SN_INCIDENTS} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {SN_KEY}\r\n\
         Content-Type: application/xml\r\nContent-Length: 1000\r\n\r\n<incident><number>HOS4000"
    );
    let answer = stall_after(&h, &head).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a complete answer");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/xml"),
        "{head}"
    );
    let err = legacy_error(&parse_xml(body).unwrap_or_else(|e| panic!("{e}: {body}")));
    assert_eq!(err.text_of("Code"), "RequestTimeout");
    assert!(h.incident("HOS4000").is_none());
    still_healthy(&h, "HOS4001").await;
    h.stop().await;
}

#[tokio::test]
async fn stalled_headers_and_silent_connections_are_cut_off() {
    let h = Harness::start(Options {
        header_timeout_ms: Some(300),
        ..Options::default()
    })
    .await;
    // Half a request head, then nothing: the connection is closed by the header
    // timeout (there is no request yet to answer).
    let head = format!(
        "POST {SN_INCIDENTS} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {SN_KEY}\r\n"
    );
    let answer = stall_after(&h, &head).await;
    assert!(!answer.contains("202"), "{answer}");
    // A connection that sends nothing at all, or only the first byte of what could be
    // an HTTP/2 preface, is closed as well: it cannot hold a descriptor forever.
    for head in ["", "P", "PRI * HTTP/2.0\r\n"] {
        let answer = stall_after(&h, head).await;
        assert!(answer.is_empty(), "{head:?}: {answer}");
    }
    still_healthy(&h, "HOS5001").await;
    h.stop().await;
}
