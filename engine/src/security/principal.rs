//! Principals: `User:<name>` for SASL users, and for TLS client certificates the subject
//! distinguished name in RFC 2253 form (Kafka's `ssl.principal.mapping.rules=DEFAULT`, which
//! prints the name as Java's `X500Principal.getName()` does: last RDN first, `,` between RDNs,
//! `+` inside one, well-known attribute keywords, other attributes as `OID=#hex`).

/// The principal of a connection that did not authenticate (PLAINTEXT, or SSL without a
/// client certificate).
pub const ANONYMOUS: &str = "User:ANONYMOUS";

/// The principal of a SASL user.
pub fn sasl_user(name: &str) -> String {
    format!("User:{name}")
}

/// Why a certificate's subject could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the certificate subject: {0}")]
pub struct SubjectError(&'static str);

struct Der<'a> {
    rest: &'a [u8],
}

impl<'a> Der<'a> {
    /// Reads one TLV: (tag, contents, whole encoding).
    fn next(&mut self) -> Result<(u8, &'a [u8], &'a [u8]), SubjectError> {
        let all = self.rest;
        let (&tag, rest) = all.split_first().ok_or(SubjectError("truncated"))?;
        let (&first, mut rest) = rest.split_first().ok_or(SubjectError("truncated"))?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err(SubjectError("bad length"));
            }
            let mut len = 0usize;
            for &b in &rest[..n] {
                len = (len << 8) | usize::from(b);
            }
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return Err(SubjectError("truncated"));
        }
        let header = all.len() - rest.len();
        self.rest = &rest[len..];
        Ok((tag, &rest[..len], &all[..header + len]))
    }

    fn expect(&mut self, tag: u8) -> Result<&'a [u8], SubjectError> {
        match self.next()? {
            (t, body, _) if t == tag => Ok(body),
            _ => Err(SubjectError("unexpected element")),
        }
    }
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;

/// The RFC 2253 subject of a DER certificate.
pub fn subject_rfc2253(cert_der: &[u8]) -> Result<String, SubjectError> {
    let cert = Der { rest: cert_der }.expect(SEQUENCE)?;
    let mut tbs = Der {
        rest: Der { rest: cert }.expect(SEQUENCE)?,
    };
    let (tag, _, _) = tbs.next()?;
    if tag == 0xa0 {
        tbs.expect(0x02)?; // serial number after the explicit version
    } else if tag != 0x02 {
        return Err(SubjectError("no serial number"));
    }
    tbs.expect(SEQUENCE)?; // signature algorithm
    tbs.expect(SEQUENCE)?; // issuer
    tbs.expect(SEQUENCE)?; // validity
    name_rfc2253(tbs.expect(SEQUENCE)?)
}

/// Formats the contents of a DER `Name` (a SEQUENCE OF RelativeDistinguishedName).
fn name_rfc2253(name: &[u8]) -> Result<String, SubjectError> {
    let mut rdns = Vec::new();
    let mut seq = Der { rest: name };
    while !seq.rest.is_empty() {
        let mut set = Der {
            rest: seq.expect(SET)?,
        };
        let mut attrs = Vec::new();
        while !set.rest.is_empty() {
            let mut atv = Der {
                rest: set.expect(SEQUENCE)?,
            };
            let oid = atv.expect(0x06)?;
            let (tag, value, whole) = atv.next()?;
            attrs.push(attribute(oid, tag, value, whole)?);
        }
        rdns.push(attrs.join("+"));
    }
    rdns.reverse();
    Ok(rdns.join(","))
}

fn keyword(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "STREET",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        _ => return None,
    })
}

fn dotted_oid(oid: &[u8]) -> Result<String, SubjectError> {
    let (&first, rest) = oid.split_first().ok_or(SubjectError("empty OID"))?;
    let mut parts = vec![u64::from(first / 40).min(2), 0];
    parts[1] = u64::from(first) - parts[0] * 40;
    let mut acc: u64 = 0;
    for &b in rest {
        acc = acc
            .checked_mul(128)
            .ok_or(SubjectError("OID arc too large"))?
            | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            parts.push(acc);
            acc = 0;
        }
    }
    Ok(parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join("."))
}

fn attribute(oid: &[u8], tag: u8, value: &[u8], whole: &[u8]) -> Result<String, SubjectError> {
    let text = match tag {
        0x0c | 0x13 | 0x16 => std::str::from_utf8(value).ok().map(str::to_string),
        0x14 => Some(value.iter().map(|&b| char::from(b)).collect()),
        0x1e if value.len().is_multiple_of(2) => {
            let units: Vec<u16> = value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    };
    match (keyword(oid), text) {
        (Some(k), Some(t)) => Ok(format!("{k}={}", escape(&t))),
        (k, _) => {
            let key = match k {
                Some(k) => k.to_string(),
                None => dotted_oid(oid)?,
            };
            let hex: String = whole.iter().map(|b| format!("{b:02x}")).collect();
            Ok(format!("{key}=#{hex}"))
        }
    }
}

/// RFC 2253 section 2.4 escaping.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let n = v.chars().count();
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == n && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if body.len() < 0x80 {
            v.push(body.len() as u8);
        } else {
            v.push(0x82);
            v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(body);
        v
    }

    fn rdn(attrs: &[(&[u8], u8, &[u8])]) -> Vec<u8> {
        let mut set = Vec::new();
        for (oid, tag, val) in attrs {
            let mut atv = tlv(0x06, oid);
            atv.extend(tlv(*tag, val));
            set.extend(tlv(SEQUENCE, &atv));
        }
        tlv(SET, &set)
    }

    fn cert_with_subject(subject: &[u8]) -> Vec<u8> {
        let mut tbs = tlv(0xa0, &tlv(0x02, &[2]));
        tbs.extend(tlv(0x02, &[1, 2, 3]));
        tbs.extend(tlv(SEQUENCE, &tlv(0x06, &[1, 2])));
        tbs.extend(tlv(SEQUENCE, &rdn(&[(&[0x55, 4, 3], 0x0c, b"ca")])));
        tbs.extend(tlv(SEQUENCE, &[]));
        tbs.extend(tlv(SEQUENCE, subject));
        let mut cert = tlv(SEQUENCE, &tbs);
        cert.extend(tlv(SEQUENCE, &tlv(0x06, &[1, 2])));
        tlv(SEQUENCE, &cert)
    }

    #[test]
    fn subject_is_printed_last_rdn_first() {
        let mut name = rdn(&[(&[0x55, 4, 6], 0x13, b"US")]);
        name.extend(rdn(&[(&[0x55, 4, 10], 0x0c, b"Acme, Inc")]));
        name.extend(rdn(&[
            (&[0x55, 4, 3], 0x0c, b"alice"),
            (&[0x55, 4, 11], 0x0c, b"eng"),
        ]));
        let got = subject_rfc2253(&cert_with_subject(&name)).unwrap();
        assert_eq!(got, r"CN=alice+OU=eng,O=Acme\, Inc,C=US");
    }

    #[test]
    fn unknown_attributes_are_hex() {
        let email_oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01];
        let name = rdn(&[(&email_oid, 0x16, b"a@b")]);
        let got = subject_rfc2253(&cert_with_subject(&name)).unwrap();
        assert_eq!(got, "1.2.840.113549.1.9.1=#1603614062");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let good = cert_with_subject(&rdn(&[(&[0x55, 4, 3], 0x0c, b"x")]));
        for cut in 0..good.len() {
            let _ = subject_rfc2253(&good[..cut]);
        }
        assert!(subject_rfc2253(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(subject_rfc2253(b"").is_err());
    }

    #[test]
    fn escaping() {
        assert_eq!(escape("#a b "), r"\#a b\ ");
        assert_eq!(escape("a+b;c<d>\"\\"), r#"a\+b\;c\<d\>\"\\"#);
    }
}
