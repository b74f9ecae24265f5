//! The XML the legacy routes answer with: receipts, status documents, error documents,
//! and SOAP 1.1 / 1.2 envelopes and faults around them. Built with quick-xml's writer,
//! so every document is well-formed and every value escaped.

use crate::incident::Incident;
use crate::loomis::message::{format_utc, FieldProblem};
use crate::mapping::xml::SoapVersion;
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use quick_xml::Writer;

/// A small element writer over quick-xml.
pub struct Xml {
    w: Writer<Vec<u8>>,
}

impl Default for Xml {
    fn default() -> Self {
        Self::new()
    }
}

impl Xml {
    pub fn new() -> Self {
        let mut w = Writer::new(Vec::with_capacity(512));
        // Writing to a Vec cannot fail.
        let _ = w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)));
        Xml { w }
    }

    pub fn open(&mut self, name: &str, attrs: &[(&str, &str)]) -> &mut Self {
        let mut s = BytesStart::new(name);
        for (k, v) in attrs {
            s.push_attribute((*k, *v));
        }
        let _ = self.w.write_event(Event::Start(s));
        self
    }

    pub fn close(&mut self, name: &str) -> &mut Self {
        let _ = self.w.write_event(Event::End(BytesEnd::new(name)));
        self
    }

    /// `<name attrs>text</name>`.
    pub fn leaf(&mut self, name: &str, attrs: &[(&str, &str)], text: &str) -> &mut Self {
        self.open(name, attrs);
        let _ = self.w.write_event(Event::Text(BytesText::new(text)));
        self.close(name)
    }

    /// A leaf only when there is a value.
    pub fn opt(&mut self, name: &str, text: Option<&str>) -> &mut Self {
        if let Some(t) = text {
            self.leaf(name, &[], t);
        }
        self
    }

    pub fn finish(self) -> Vec<u8> {
        self.w.into_inner()
    }
}

/// How the answer is wrapped: plain XML or the caller's SOAP version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    Plain,
    Soap(SoapVersion),
}

impl Envelope {
    pub fn content_type(self) -> &'static str {
        match self {
            Envelope::Plain => "application/xml; charset=utf-8",
            Envelope::Soap(SoapVersion::Soap11) => "text/xml; charset=utf-8",
            Envelope::Soap(SoapVersion::Soap12) => "application/soap+xml; charset=utf-8",
        }
    }

    fn open(self, x: &mut Xml) {
        if let Envelope::Soap(v) = self {
            x.open("soap:Envelope", &[("xmlns:soap", v.namespace())]);
            x.open("soap:Body", &[]);
        }
    }

    fn close(self, x: &mut Xml) {
        if let Envelope::Soap(_) = self {
            x.close("soap:Body");
            x.close("soap:Envelope");
        }
    }
}

/// The receipt for a stored incident (created, re-submitted or cancel asked).
pub fn receipt(env: Envelope, inc: &Incident) -> Vec<u8> {
    let mut x = Xml::new();
    env.open(&mut x);
    x.open("Receipt", &[])
        .leaf("Integration", &[], &inc.integration)
        .leaf("IncidentReference", &[], &inc.reference)
        .leaf("State", &[], inc.state.as_str())
        .opt("IncidentId", inc.incident_id.as_deref())
        .close("Receipt");
    env.close(&mut x);
    x.finish()
}

/// The status document of `GET .../incidents/{reference}`.
pub fn status(inc: &Incident) -> Vec<u8> {
    let mut x = Xml::new();
    let sla = inc.sla_time.map(format_utc);
    x.open("Incident", &[])
        .leaf("Integration", &[], &inc.integration)
        .leaf("IncidentReference", &[], &inc.reference)
        .leaf("CustomerNumber", &[], &inc.customer_number)
        .leaf("State", &[], inc.state.as_str())
        .opt("IncidentId", inc.incident_id.as_deref())
        .opt("LoomisStatus", inc.loomis_status.as_deref())
        .opt("SlaTime", sla.as_deref())
        .opt("ResponseCode", inc.response_code.as_deref())
        .opt("ResponseText", inc.response_text.as_deref())
        .opt("CancelReason", inc.cancel_reason.as_deref())
        .leaf("CreatedAt", &[], &format_utc(inc.created_at))
        .leaf("UpdatedAt", &[], &format_utc(inc.updated_at));
    x.open("Timeline", &[]);
    for e in &inc.timeline {
        let at = format_utc(e.at);
        let dir = format!("{:?}", e.direction);
        let outcome = format!("{:?}", e.outcome);
        x.leaf(
            "Entry",
            &[
                ("at", &at),
                ("direction", &dir),
                ("kind", &e.kind),
                ("outcome", &outcome),
            ],
            &e.detail,
        );
    }
    x.close("Timeline");
    x.close("Incident");
    x.finish()
}

/// An error: `<Error><Code/><Message/><Problem field="..">..</Problem>...</Error>`, or a
/// SOAP fault carrying that document as its detail.
pub fn error(
    env: Envelope,
    sender_fault: bool,
    code: &str,
    message: &str,
    problems: &[FieldProblem],
) -> Vec<u8> {
    let mut x = Xml::new();
    let body = |x: &mut Xml| {
        x.open("Error", &[])
            .leaf("Code", &[], code)
            .leaf("Message", &[], message);
        for p in problems {
            x.leaf("Problem", &[("field", &p.field)], &p.message);
        }
        x.close("Error");
    };
    match env {
        Envelope::Plain => body(&mut x),
        Envelope::Soap(SoapVersion::Soap11) => {
            env.open(&mut x);
            x.open("soap:Fault", &[])
                .leaf(
                    "faultcode",
                    &[],
                    if sender_fault {
                        "soap:Client"
                    } else {
                        "soap:Server"
                    },
                )
                .leaf("faultstring", &[], message)
                .open("detail", &[]);
            body(&mut x);
            x.close("detail").close("soap:Fault");
            env.close(&mut x);
        }
        Envelope::Soap(SoapVersion::Soap12) => {
            env.open(&mut x);
            x.open("soap:Fault", &[])
                .open("soap:Code", &[])
                .leaf(
                    "soap:Value",
                    &[],
                    if sender_fault {
                        "soap:Sender"
                    } else {
                        "soap:Receiver"
                    },
                )
                .close("soap:Code")
                .open("soap:Reason", &[])
                .leaf("soap:Text", &[("xml:lang", "en")], message)
                .close("soap:Reason")
                .open("soap:Detail", &[]);
            body(&mut x);
            x.close("soap:Detail").close("soap:Fault");
            env.close(&mut x);
        }
    }
    x.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::xml::{Document, Limits};

    #[test]
    fn error_documents_escape_and_parse_back() {
        let p = vec![FieldProblem {
            field: "Device<Id>".into(),
            message: "a & b \"c\"".into(),
        }];
        for env in [
            Envelope::Plain,
            Envelope::Soap(SoapVersion::Soap11),
            Envelope::Soap(SoapVersion::Soap12),
        ] {
            let out = error(env, true, "ValidationFailed", "1 problem <x>", &p);
            let doc = Document::parse(&out, &Limits::default()).expect("well-formed");
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("a &amp; b"), "{text}");
            match env {
                Envelope::Plain => assert!(doc.soap_version().is_none()),
                Envelope::Soap(v) => assert_eq!(doc.soap_version(), Some(v)),
            }
        }
    }
}
