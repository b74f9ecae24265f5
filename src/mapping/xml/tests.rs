//! Tests of the XML intake: structure, text, namespaces, SOAP, encodings, and every
//! refusal with its position.

use super::*;

fn parse(s: &str) -> Result<Document, XmlError> {
    Document::parse(s.as_bytes(), &Limits::default())
}

fn root_text(s: &str) -> String {
    parse(s).unwrap().payload_root().text().to_string()
}

#[test]
fn simple_tree_with_attributes() {
    let doc = parse(r#"<a x="1"><b y='2'>t</b><c/></a>"#).unwrap();
    let root = doc.payload_root();
    assert_eq!(root.local_name(), "a");
    assert_eq!(root.namespace(), "");
    assert_eq!(root.attribute("", "x"), Some("1"));
    assert_eq!(root.attribute("", "nope"), None);
    let kids: Vec<_> = root.children().map(|c| c.local_name()).collect();
    assert_eq!(kids, ["b", "c"]);
    let b = root.children().next().unwrap();
    assert_eq!(b.attribute("", "y"), Some("2"));
    assert_eq!(b.text(), "t");
    assert_eq!(doc.element_count(), 3);
    assert_eq!(doc.soap_version(), None);
}

#[test]
fn cdata_entities_and_char_refs() {
    assert_eq!(root_text("<a><![CDATA[<x> & y]]></a>"), "<x> & y");
    assert_eq!(root_text("<a>&lt;&gt;&amp;&apos;&quot;</a>"), "<>&'\"");
    assert_eq!(root_text("<a>&#65;&#x42;&#x1F600;</a>"), "AB😀");
    let doc = parse(r#"<a v="&lt;&#65;&amp;"/>"#).unwrap();
    assert_eq!(doc.payload_root().attribute("", "v"), Some("<A&"));
    // Attribute values are normalized: newlines and tabs become spaces.
    let doc = parse("<a v=\"x\ny\tz\"/>").unwrap();
    assert_eq!(doc.payload_root().attribute("", "v"), Some("x y z"));
}

#[test]
fn mixed_content_is_the_string_value_in_order() {
    let doc = parse("<d>Line <b>bold</b> and <i>it<u>al</u></i>ic.</d>").unwrap();
    assert_eq!(doc.payload_root().text(), "Line bold and italic.");
    let b = doc.payload_root().children().next().unwrap();
    assert_eq!(b.text(), "bold");
}

#[test]
fn empty_elements_and_line_endings() {
    assert_eq!(root_text("<a/>"), "");
    assert_eq!(root_text("<a></a>"), "");
    assert_eq!(root_text("<a>x\r\ny\rz</a>"), "x\ny\nz");
}

#[test]
fn non_ascii_text_and_names() {
    let doc = parse("<straße ort=\"München\">日本語 – ñ</straße>").unwrap();
    let r = doc.payload_root();
    assert_eq!(r.local_name(), "straße");
    assert_eq!(r.attribute("", "ort"), Some("München"));
    assert_eq!(r.text(), "日本語 – ñ");
}

#[test]
fn bom_comments_pis_and_declaration() {
    let doc = Document::parse(
        b"\xEF\xBB\xBF<?xml version=\"1.0\" encoding=\"utf-8\"?><!-- c --><?pi x?><a>1<!-- c --></a><!-- after -->\n",
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(doc.payload_root().text(), "1");
}

#[test]
fn namespaces_resolve_by_uri() {
    let doc = parse(
        r#"<p:a xmlns:p="urn:x" xmlns="urn:d"><b/><p:c xmlns:p="urn:y"/><e xmlns=""/><f p:k="v"/></p:a>"#,
    )
    .unwrap();
    let r = doc.payload_root();
    assert!(r.is("urn:x", "a"));
    let kids: Vec<(&str, &str)> = r
        .children()
        .map(|c| (c.namespace(), c.local_name()))
        .collect();
    assert_eq!(
        kids,
        [("urn:d", "b"), ("urn:y", "c"), ("", "e"), ("urn:d", "f")]
    );
    let f = r.children().nth(3).unwrap();
    assert_eq!(f.attribute("urn:x", "k"), Some("v"));
    assert_eq!(f.attribute("", "k"), None);
    let doc = parse(r#"<a xml:lang="de"/>"#).unwrap();
    assert_eq!(doc.payload_root().attribute(XML_NS, "lang"), Some("de"));
}

#[test]
fn soap_11_and_12_payload_root() {
    let s11 = r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header><h/></s:Header><s:Body><p:Create xmlns:p="urn:p"><x>1</x></p:Create></s:Body></s:Envelope>"#;
    let doc = parse(s11).unwrap();
    assert_eq!(doc.soap_version(), Some(SoapVersion::Soap11));
    assert!(doc.payload_root().is("urn:p", "Create"));
    assert!(doc.document_root().is(SOAP11_NS, "Envelope"));
    let s12 = r#"<Envelope xmlns="http://www.w3.org/2003/05/soap-envelope">
        <Body>
          <incident xmlns=""><n>2</n></incident>
        </Body></Envelope>"#;
    let doc = parse(s12).unwrap();
    assert_eq!(doc.soap_version(), Some(SoapVersion::Soap12));
    assert_eq!(doc.payload_root().local_name(), "incident");
    assert_eq!(doc.payload_root().text(), "2");
    // An Envelope in another namespace is just an element.
    let doc = parse(r#"<Envelope xmlns="urn:other"><Body><x/></Body></Envelope>"#).unwrap();
    assert_eq!(doc.soap_version(), None);
    assert_eq!(doc.payload_root().local_name(), "Envelope");
}

#[test]
fn error_empty() {
    assert_eq!(parse("").unwrap_err(), XmlError::Empty);
    assert_eq!(parse("  <!-- only -->\n").unwrap_err(), XmlError::Empty);
}

#[test]
fn error_too_large() {
    let limits = Limits {
        max_bytes: 10,
        ..Limits::default()
    };
    let err = Document::parse(b"<a>0123456789</a>", &limits).unwrap_err();
    assert!(matches!(
        err,
        XmlError::TooLarge {
            size: 17,
            limit: 10
        }
    ));
}

#[test]
fn error_invalid_utf8_with_position() {
    let err = Document::parse(b"<a>\n ok \xC3\x28</a>", &Limits::default()).unwrap_err();
    match err {
        XmlError::InvalidUtf8 { position } => {
            assert_eq!((position.offset, position.line, position.column), (8, 2, 5));
        }
        other => panic!("{other:?}"),
    }
    // A UTF-16 byte order mark makes it UTF-16 (see the encodings test); the other
    // bytes that never start UTF-8 are refused the same way.
    let doc = Document::parse(b"\xFF\xFE<\0a\0/\0>\0", &Limits::default()).unwrap();
    assert_eq!(doc.payload_root().local_name(), "a");
    assert!(matches!(
        Document::parse(b"\xFE<a/>", &Limits::default()),
        Err(XmlError::InvalidUtf8 { .. })
    ));
}

#[test]
fn declared_encodings_are_decoded_or_refused() {
    let bytes = |b: &[u8]| Document::parse(b, &Limits::default());
    // ISO-8859-1 and windows-1252 bytes, as older tools send them.
    let doc =
        bytes(b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><a>Caf\xE9 M\xFCller</a>").unwrap();
    assert_eq!(doc.payload_root().text(), "Caf\u{e9} M\u{fc}ller");
    let doc = bytes(b"<?xml version='1.0' encoding = 'windows-1252' ?><a x=\"\x80\">\x93q\x94</a>")
        .unwrap();
    assert_eq!(doc.payload_root().text(), "\u{201c}q\u{201d}");
    assert_eq!(doc.payload_root().attribute("", "x"), Some("\u{20ac}"));
    // Bytes that are not valid in the declared encoding.
    let err = bytes(b"<?xml version=\"1.0\" encoding=\"Shift_JIS\"?><a>\x81</a>").unwrap_err();
    assert!(matches!(err, XmlError::InvalidEncoding { .. }), "{err:?}");
    // Encodings that are not ASCII-compatible (or unknown) stay refused for
    // non-ASCII content; pure ASCII is the same in all of them.
    for enc in ["UTF-16", "x-unknown"] {
        let err = parse(&format!(
            "<?xml version=\"1.0\" encoding=\"{enc}\"?><a>\u{e9}</a>"
        ))
        .unwrap_err();
        assert!(
            matches!(err, XmlError::UnsupportedEncoding { .. }),
            "{err:?}"
        );
        assert!(parse(&format!(
            "<?xml version=\"1.0\" encoding=\"{enc}\"?><a>e</a>"
        ))
        .is_ok());
    }
    // UTF-16, as .NET and Java tools write it: with a byte order mark in either byte
    // order, or without one (then the declaration's `<` tells the byte order).
    let text = "<?xml version=\"1.0\" encoding=\"UTF-16\"?><a b=\"\u{e9}\">Caf\u{e9} \u{4e2d}\u{1f512}</a>";
    let le: Vec<u8> = text.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let be: Vec<u8> = text.encode_utf16().flat_map(u16::to_be_bytes).collect();
    for (what, input) in [
        ("LE with BOM", [&[0xFF, 0xFE][..], &le].concat()),
        ("BE with BOM", [&[0xFE, 0xFF][..], &be].concat()),
        ("LE without BOM", le.clone()),
        ("BE without BOM", be.clone()),
    ] {
        let doc = bytes(&input).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            doc.payload_root().text(),
            "Caf\u{e9} \u{4e2d}\u{1f512}",
            "{what}"
        );
        assert_eq!(
            doc.payload_root().attribute("", "b"),
            Some("\u{e9}"),
            "{what}"
        );
    }
    // Half a code unit, or a lone surrogate, is not UTF-16.
    let err = bytes(&[&[0xFF, 0xFE][..], &le, &[0x41]].concat()).unwrap_err();
    assert!(matches!(err, XmlError::InvalidEncoding { .. }), "{err:?}");
    let err = bytes(
        &[
            &[0xFF, 0xFE][..],
            &le[..le.len() - 8],
            &[0x00, 0xD8],
            &le[le.len() - 6..],
        ]
        .concat(),
    )
    .unwrap_err();
    assert!(matches!(err, XmlError::InvalidEncoding { .. }), "{err:?}");
    // Decoding changes nothing else: a DTD is still refused, in UTF-16 too.
    let dtd: Vec<u8> = "<!DOCTYPE a [<!ENTITY x \"y\">]><a>&x;</a>"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let err = bytes(&[&[0xFF, 0xFE][..], &dtd].concat()).unwrap_err();
    assert!(matches!(err, XmlError::Dtd { .. }), "{err:?}");
    let err = bytes(b"<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><!DOCTYPE a [<!ENTITY x \"y\">]><a>&x;</a>").unwrap_err();
    assert!(matches!(err, XmlError::Dtd { .. }), "{err:?}");
}

#[test]
fn error_dtd_and_external_entities() {
    let xxe = r#"<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><foo>&xxe;</foo>"#;
    let err = parse(xxe).unwrap_err();
    match err {
        XmlError::Dtd { position } => assert_eq!(position.offset, 21),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse("<!DOCTYPE a><a/>"),
        Err(XmlError::Dtd { .. })
    ));
    assert!(matches!(
        parse("<!doctype a><a/>"),
        Err(XmlError::Dtd { .. })
    ));
    // Even an unterminated DOCTYPE is reported as a DTD, not as garbage.
    assert!(matches!(
        parse("<!DOCTYPE a [ <!ENTITY x \"y\">"),
        Err(XmlError::Dtd { .. })
    ));
}

#[test]
fn error_billion_laughs_is_refused_quickly() {
    let mut s = String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n<!ENTITY lol \"lol\">\n");
    for i in 1..=9 {
        let prev = if i == 1 {
            "lol".to_string()
        } else {
            format!("lol{}", i - 1)
        };
        s.push_str(&format!(
            "<!ENTITY lol{i} \"{}\">\n",
            format!("&{prev};").repeat(10)
        ));
    }
    s.push_str("]>\n<lolz>&lol9;</lolz>");
    assert!(matches!(parse(&s), Err(XmlError::Dtd { .. })));
}

#[test]
fn error_undefined_entity() {
    let err = parse("<a>&nbsp;</a>").unwrap_err();
    assert!(
        matches!(err, XmlError::UndefinedEntity { ref name, .. } if name == "nbsp"),
        "{err:?}"
    );
    let err = parse("<a b=\"&foo;\"/>").unwrap_err();
    assert!(
        matches!(err, XmlError::UndefinedEntity { ref name, .. } if name == "foo"),
        "{err:?}"
    );
    assert!(matches!(
        parse("<a>&#0;</a>"),
        Err(XmlError::Malformed { .. })
    ));
}

#[test]
fn error_too_deep_at_10000_levels() {
    let s = "<a>".repeat(10_000) + &"</a>".repeat(10_000);
    match parse(&s).unwrap_err() {
        XmlError::TooDeep { limit, position } => {
            assert_eq!(limit, 64);
            assert_eq!(position.offset, 64 * 3);
        }
        other => panic!("{other:?}"),
    }
    let ok = "<a>".repeat(64) + &"</a>".repeat(64);
    assert!(parse(&ok).is_ok());
}

#[test]
fn error_too_many_elements() {
    let s = format!("<r>{}</r>", "<e/>".repeat(10_000));
    assert!(matches!(
        parse(&s),
        Err(XmlError::TooManyElements { limit: 10_000, .. })
    ));
    let s = format!("<r>{}</r>", "<e/>".repeat(9_999));
    assert!(parse(&s).is_ok());
}

#[test]
fn error_too_many_attributes() {
    let attrs: String = (0..65).map(|i| format!(" a{i}=\"x\"")).collect();
    let err = parse(&format!("<r{attrs}/>")).unwrap_err();
    assert!(
        matches!(err, XmlError::TooManyAttributes { limit: 64, .. }),
        "{err:?}"
    );
}

#[test]
fn error_100000_namespace_declarations() {
    // All on one element ...
    let decls: String = (0..100_000)
        .map(|i| format!(" xmlns:p{i}=\"urn:{i}\""))
        .collect();
    let err = Document::parse(
        format!("<r{decls}/>").as_bytes(),
        &Limits {
            max_bytes: 8 << 20,
            ..Limits::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, XmlError::TooManyNamespaces { limit: 256, .. }),
        "{err:?}"
    );
    // ... or spread over siblings: the limit is per document.
    let s = format!("<r>{}</r>", "<e xmlns:p=\"urn:p\"/>".repeat(300));
    assert!(matches!(parse(&s), Err(XmlError::TooManyNamespaces { .. })));
}

#[test]
fn error_too_much_text() {
    let limits = Limits {
        max_text_bytes: 8,
        ..Limits::default()
    };
    let err = Document::parse(b"<a>0123456789</a>", &limits).unwrap_err();
    assert!(
        matches!(err, XmlError::TooMuchText { limit: 8, .. }),
        "{err:?}"
    );
    let err = Document::parse(b"<a v=\"0123456789\"/>", &limits).unwrap_err();
    assert!(matches!(err, XmlError::TooMuchText { .. }), "{err:?}");
}

#[test]
fn error_unbound_prefix() {
    let err = parse("<a><x:b/></a>").unwrap_err();
    match err {
        XmlError::UnboundPrefix { prefix, position } => {
            assert_eq!(prefix, "x");
            assert_eq!(position.offset, 3);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        parse("<a x:y=\"1\"/>"),
        Err(XmlError::UnboundPrefix { .. })
    ));
    // A prefix goes out of scope with its element.
    assert!(matches!(
        parse("<a><b xmlns:x=\"urn:x\"/><x:c/></a>"),
        Err(XmlError::UnboundPrefix { .. })
    ));
}

#[test]
fn error_soap_without_payload() {
    let err = parse(
        r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body/></s:Envelope>"#,
    )
    .unwrap_err();
    assert_eq!(
        err,
        XmlError::SoapWithoutPayload {
            version: SoapVersion::Soap11
        }
    );
    let err = parse(
        r#"<e:Envelope xmlns:e="http://www.w3.org/2003/05/soap-envelope"><e:Header/></e:Envelope>"#,
    )
    .unwrap_err();
    assert_eq!(
        err,
        XmlError::SoapWithoutPayload {
            version: SoapVersion::Soap12
        }
    );
    assert!(err.to_string().contains("SOAP 1.2"));
}

#[test]
fn error_malformed_variants_with_positions() {
    for (bad, needle) in [
        ("<a><b></a>", ""),
        ("<a>", "not closed"),
        ("<a/><b/>", "more than one root"),
        ("text<a/>", "text outside"),
        ("<a/>trailing", "text outside"),
        ("<a b=\"1\" b=\"2\"/>", ""),
        ("<a b=1/>", ""),
        ("<a xmlns:p=\"\"/>", "cannot be undeclared"),
        ("<a>&amp</a>", ""),
        ("<a><![CDATA[x</a>", ""),
    ] {
        match parse(bad) {
            Err(XmlError::Malformed { position, message }) => {
                assert!(message.contains(needle), "{bad:?}: {message}");
                assert!(position.line >= 1 && position.column >= 1);
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let err = parse("<a>\n  <b>\n</a>").unwrap_err();
    assert!(err.to_string().contains("line 3"), "{err}");
}

#[test]
fn position_counts_characters() {
    let p = Position::locate("ab\néé x".as_bytes(), 8);
    assert_eq!((p.line, p.column), (2, 4));
    assert_eq!(p.to_string(), "line 2, column 4 (byte 8)");
}
