//! Input encodings other than UTF-8: UTF-16 (by byte order mark, or by a leading `<`)
//! and ASCII-compatible encodings named in the XML declaration. Both are decoded to
//! UTF-8 before parsing.

/// UTF-16 (little or big endian) and the length of its byte order mark, when the bytes
/// start with one, or with `<` in UTF-16 (a document without a mark).
pub(super) fn utf16(bytes: &[u8]) -> Option<(&'static encoding_rs::Encoding, usize)> {
    match bytes {
        [0xFF, 0xFE, ..] => Some((encoding_rs::UTF_16LE, 2)),
        [0xFE, 0xFF, ..] => Some((encoding_rs::UTF_16BE, 2)),
        [b'<', 0, ..] => Some((encoding_rs::UTF_16LE, 0)),
        [0, b'<', ..] => Some((encoding_rs::UTF_16BE, 0)),
        _ => None,
    }
}

/// The encoding an XML declaration names, when it is an ASCII-compatible one other than
/// UTF-8 that needs decoding. Reads only the declaration (at most 256 bytes).
pub(super) fn declared_encoding(bytes: &[u8]) -> Option<&'static encoding_rs::Encoding> {
    let head = &bytes[..bytes.len().min(256)];
    let decl = head.strip_prefix(b"<?xml")?;
    let decl = &decl[..decl.windows(2).position(|w| w == b"?>")?];
    let at = decl.windows(8).position(|w| w == b"encoding")?;
    let rest = decl[at + 8..]
        .trim_ascii_start()
        .strip_prefix(b"=")?
        .trim_ascii_start();
    let quote = *rest.first().filter(|q| **q == b'"' || **q == b'\'')?;
    let value = &rest[1..];
    let label = &value[..value.iter().position(|b| *b == quote)?];
    let encoding = encoding_rs::Encoding::for_label(label)?;
    (encoding != encoding_rs::UTF_8 && encoding.is_ascii_compatible()).then_some(encoding)
}
