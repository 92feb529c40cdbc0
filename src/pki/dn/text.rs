//! A DN written as text (RFC 4514, and the ANS whitelist's reversed form), read into its
//! attributes: the BER values of `#`-hex, string decoding, and the parser itself.

use super::*;
use std::borrow::Cow;

/// Decode a universal, primitive string type. `None` if not a string type or
/// not decodable.
pub(super) fn decode_string(tag: u32, data: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, NumericString, PrintableString, IA5String, VisibleString
        12 | 18 | 19 | 22 | 26 => std::str::from_utf8(data).ok().map(str::to_owned),
        // TeletexString: treated as Latin-1 unless it is valid UTF-8.
        20 => Some(match std::str::from_utf8(data) {
            Ok(s) => s.to_owned(),
            Err(_) => data.iter().map(|&b| char::from(b)).collect(),
        }),
        // BMPString: UTF-16BE
        30 => {
            if !data.len().is_multiple_of(2) {
                return None;
            }
            let units = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        // UniversalString: UTF-32BE
        28 => {
            if !data.len().is_multiple_of(4) {
                return None;
            }
            data.chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        _ => None,
    }
}

/// DER-encode a TLV (low or high tag number form, definite length).
pub(super) fn encode_tlv(class: u8, constructed: bool, tag: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    let first = (class << 6) | if constructed { 0x20 } else { 0 };
    if tag < 31 {
        out.push(first | tag as u8);
    } else {
        out.push(first | 0x1f);
        let mut groups = Vec::new();
        let mut t = tag;
        loop {
            groups.push((t & 0x7f) as u8);
            t >>= 7;
            if t == 0 {
                break;
            }
        }
        for (i, g) in groups.iter().enumerate().rev() {
            out.push(if i == 0 { *g } else { g | 0x80 });
        }
    }
    let len = data.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(data);
    out
}

/// Build (norm, raw) from a decoded BER TLV.
pub(super) fn value_from_tlv(
    class: u8,
    constructed: bool,
    tag: u32,
    data: &[u8],
) -> (Value, String) {
    if class == 0 && !constructed {
        if let Some(s) = decode_string(tag, data) {
            let norm = Value::Str(prepare(&s));
            return (norm, s);
        }
    }
    let der = encode_tlv(class, constructed, tag, data);
    let raw = format!("#{}", hex(&der));
    (Value::Ber(der), raw)
}

pub(super) fn hex(b: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(char::from(HEX[usize::from(x >> 4)]));
        s.push(char::from(HEX[usize::from(x & 15)]));
    }
    s
}

pub(super) fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parse one BER TLV that must span all of `b`: (class, constructed, tag, data).
pub(super) fn parse_tlv(b: &[u8]) -> Result<(u8, bool, u32, &[u8]), String> {
    let first = *b.first().ok_or("empty")?;
    let class = first >> 6;
    let constructed = first & 0x20 != 0;
    let mut i = 1;
    let mut tag = u32::from(first & 0x1f);
    if tag == 0x1f {
        tag = 0;
        loop {
            let x = *b.get(i).ok_or("truncated tag")?;
            i += 1;
            if tag > (u32::MAX >> 7) {
                return Err("tag number too large".into());
            }
            tag = (tag << 7) | u32::from(x & 0x7f);
            if x & 0x80 == 0 {
                break;
            }
        }
    }
    let l0 = *b.get(i).ok_or("truncated length")?;
    i += 1;
    let len = if l0 < 0x80 {
        usize::from(l0)
    } else if l0 == 0x80 {
        return Err("indefinite length not supported".into());
    } else {
        let n = usize::from(l0 & 0x7f);
        if n > 4 {
            return Err("length too large".into());
        }
        let mut len = 0usize;
        for _ in 0..n {
            let x = *b.get(i).ok_or("truncated length")?;
            i += 1;
            len = (len << 8) | usize::from(x);
        }
        len
    };
    let data = b.get(i..).ok_or("truncated")?;
    if data.len() != len {
        return Err(format!(
            "length {len} does not match the {} content bytes",
            data.len()
        ));
    }
    Ok((class, constructed, tag, data))
}

pub(super) fn is_special(b: u8) -> bool {
    matches!(b, b',' | b'+' | b';')
}

pub(super) struct DnParser<'a> {
    pub(super) s: &'a [u8],
    pub(super) i: usize,
}

impl<'a> DnParser<'a> {
    pub(super) fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    pub(super) fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }
    pub(super) fn err(&self, reason: impl Into<String>) -> DnError {
        DnError::Syntax {
            offset: self.i,
            reason: reason.into(),
        }
    }

    pub(super) fn attr_type(&mut self) -> Result<Cow<'static, str>, DnError> {
        let start = self.i;
        while let Some(b) = self.peek() {
            if b == b'=' || is_special(b) {
                break;
            }
            self.i += 1;
        }
        if self.peek() != Some(b'=') {
            return Err(self.err("expected '=' after attribute type"));
        }
        let raw = std::str::from_utf8(&self.s[start..self.i])
            .map_err(|_| DnError::InvalidUtf8 { offset: start })?
            .trim();
        self.i += 1; // '='
        if raw.is_empty() {
            return Err(DnError::Syntax {
                offset: start,
                reason: "empty attribute type".into(),
            });
        }
        let numeric = match raw.get(..4) {
            Some(p) if p.eq_ignore_ascii_case("oid.") => &raw[4..],
            _ => raw,
        };
        if numeric.bytes().next().is_some_and(|b| b.is_ascii_digit()) {
            let arcs: Vec<&str> = numeric.split('.').collect();
            if arcs.len() < 2
                || arcs
                    .iter()
                    .any(|a| a.is_empty() || !a.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(DnError::UnknownAttributeType(raw.to_string()));
            }
            // Canonical form: no leading zeros.
            let canon: Vec<&str> = arcs
                .iter()
                .map(|a| {
                    let t = a.trim_start_matches('0');
                    if t.is_empty() {
                        "0"
                    } else {
                        t
                    }
                })
                .collect();
            return Ok(canonical_oid(canon.join(".")));
        }
        ATTR_TYPES
            .iter()
            .find(|(_, _, names)| names.iter().any(|n| n.eq_ignore_ascii_case(raw)))
            .map(|(oid, _, _)| Cow::Borrowed(*oid))
            .ok_or_else(|| DnError::UnknownAttributeType(raw.to_string()))
    }

    /// Resolve a backslash escape at `self.i` (pointing at the `\`).
    pub(super) fn escape(&mut self, out: &mut Vec<u8>) -> Result<(), DnError> {
        let at = self.i;
        self.i += 1;
        let Some(b) = self.peek() else {
            return Err(DnError::Syntax {
                offset: at,
                reason: "dangling '\\' at end".into(),
            });
        };
        if let Some(h) = hex_val(b) {
            let l = self.s.get(self.i + 1).copied().and_then(hex_val);
            match l {
                Some(l) => {
                    out.push((h << 4) | l);
                    self.i += 2;
                    Ok(())
                }
                None => Err(DnError::Syntax {
                    offset: at,
                    reason: "'\\' followed by a single hex digit".into(),
                }),
            }
        } else if b.is_ascii_punctuation() || b == b' ' {
            out.push(b);
            self.i += 1;
            Ok(())
        } else {
            Err(DnError::Syntax {
                offset: at,
                reason: format!("invalid escape '\\{}'", char::from(b)),
            })
        }
    }

    /// Parse a value: its comparison form and its decoded text.
    pub(super) fn value(&mut self) -> Result<(Value, String), DnError> {
        self.skip_spaces();
        let start = self.i;
        match self.peek() {
            Some(b'#') => {
                self.i += 1;
                let hs = self.i;
                while self.peek().is_some_and(|b| b.is_ascii_hexdigit()) {
                    self.i += 1;
                }
                let digits = &self.s[hs..self.i];
                self.skip_spaces();
                if !matches!(self.peek(), None | Some(b',' | b'+' | b';')) {
                    return Err(self.err("unexpected character in '#' hex value"));
                }
                if digits.is_empty() || !digits.len().is_multiple_of(2) {
                    return Err(DnError::Ber {
                        offset: start,
                        reason: "odd or empty hex string".into(),
                    });
                }
                let bytes: Vec<u8> = digits
                    .chunks_exact(2)
                    .map(|p| (hex_val(p[0]).unwrap_or(0) << 4) | hex_val(p[1]).unwrap_or(0))
                    .collect();
                let (class, constructed, tag, data) =
                    parse_tlv(&bytes).map_err(|reason| DnError::Ber {
                        offset: start,
                        reason,
                    })?;
                Ok(value_from_tlv(class, constructed, tag, data))
            }
            Some(b'"') => {
                // RFC 2253/1779 quoted value, accepted for leniency.
                self.i += 1;
                let mut out = Vec::new();
                loop {
                    match self.peek() {
                        None => {
                            return Err(DnError::Syntax {
                                offset: start,
                                reason: "unterminated quoted value".into(),
                            })
                        }
                        Some(b'"') => {
                            self.i += 1;
                            break;
                        }
                        Some(b'\\') => self.escape(&mut out)?,
                        Some(0) => return Err(self.err("NUL character in value")),
                        Some(b) => {
                            out.push(b);
                            self.i += 1;
                        }
                    }
                }
                self.skip_spaces();
                if !matches!(self.peek(), None | Some(b',' | b'+' | b';')) {
                    return Err(self.err("unexpected character after quoted value"));
                }
                let s =
                    String::from_utf8(out).map_err(|_| DnError::InvalidUtf8 { offset: start })?;
                Ok((Value::Str(prepare(&s)), s))
            }
            _ => {
                // Fast path: no escape in the value.
                let mut end = self.i;
                while let Some(&b) = self.s.get(end) {
                    if matches!(b, b',' | b'+' | b';' | b'\\' | 0) {
                        break;
                    }
                    end += 1;
                }
                if !matches!(self.s.get(end), Some(b'\\' | 0)) {
                    let mut vend = end;
                    while vend > start && self.s[vend - 1] == b' ' {
                        vend -= 1;
                    }
                    let v = std::str::from_utf8(&self.s[start..vend])
                        .map_err(|_| DnError::InvalidUtf8 { offset: start })?;
                    self.i = end;
                    return Ok((Value::Str(prepare(v)), v.to_owned()));
                }
                let mut out = Vec::with_capacity(end - start + 16);
                // Length of `out` up to the last escaped or non-space byte:
                // unescaped trailing spaces are dropped.
                let mut keep = 0;
                while let Some(b) = self.peek() {
                    match b {
                        b',' | b'+' | b';' => break,
                        b'\\' => {
                            self.escape(&mut out)?;
                            keep = out.len();
                        }
                        0 => return Err(self.err("NUL character in value")),
                        _ => {
                            out.push(b);
                            self.i += 1;
                            if b != b' ' {
                                keep = out.len();
                            }
                        }
                    }
                }
                out.truncate(keep);
                let s =
                    String::from_utf8(out).map_err(|_| DnError::InvalidUtf8 { offset: start })?;
                Ok((Value::Str(prepare(&s)), s))
            }
        }
    }
}
