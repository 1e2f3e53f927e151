//! Just enough DER to write a self-signed X.509 certificate and to read back what a signature
//! check needs from one (its public key, issuer name and serial number). Certificates from other
//! issuers (HPKI) are read, never written, by the same reader.

use crate::EpsError;

/// Object identifiers used here, as DER content octets.
pub mod oid {
    /// ecdsa-with-SHA256 (1.2.840.10045.4.3.2).
    pub const ECDSA_SHA256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02];
    /// commonName (2.5.4.3).
    pub const CN: &[u8] = &[0x55, 0x04, 0x03];
    /// organizationName (2.5.4.10).
    pub const O: &[u8] = &[0x55, 0x04, 0x0A];
}

/// A TLV with `tag` around `content`.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// SEQUENCE of the concatenated parts.
pub fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// A non-negative INTEGER from big-endian magnitude bytes.
pub fn uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    let mut content = if trimmed.is_empty() { vec![0] } else { trimmed };
    if content[0] & 0x80 != 0 {
        content.insert(0, 0);
    }
    tlv(0x02, &content)
}

/// A Name of RDNs (`oid`, UTF8String value).
pub fn name(rdns: &[(&[u8], &str)]) -> Vec<u8> {
    let sets: Vec<Vec<u8>> =
        rdns.iter().map(|(o, v)| tlv(0x31, &seq(&[tlv(0x06, o), tlv(0x0C, v.as_bytes())]))).collect();
    seq(&sets)
}

/// UTCTime `YYMMDDHHMMSSZ` (dates 1950–2049) or GeneralizedTime after.
pub fn time(t: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    use chrono::Datelike;
    if t.year() < 2050 {
        tlv(0x17, t.format("%y%m%d%H%M%SZ").to_string().as_bytes())
    } else {
        tlv(0x18, t.format("%Y%m%d%H%M%SZ").to_string().as_bytes())
    }
}

/// One TLV read: (tag, content, the whole TLV, the rest).
pub type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// One TLV read from `data`.
pub fn read(data: &[u8]) -> Result<Tlv<'_>, EpsError> {
    let bad = || EpsError::Key("malformed DER".into());
    let tag = *data.first().ok_or_else(bad)?;
    let first = *data.get(1).ok_or_else(bad)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let k = (first & 0x7F) as usize;
        if k == 0 || k > 4 {
            return Err(bad());
        }
        let bytes = data.get(2..2 + k).ok_or_else(bad)?;
        (bytes.iter().fold(0usize, |a, b| (a << 8) | *b as usize), 2 + k)
    };
    let end = header.checked_add(len).filter(|e| *e <= data.len()).ok_or_else(bad)?;
    Ok((tag, &data[header..end], &data[..end], &data[end..]))
}

/// What a signature check reads from a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// SubjectPublicKeyInfo, the whole TLV.
    pub spki: Vec<u8>,
    /// The issuer as `CN=…,O=…` (CN and O only, in certificate order).
    pub issuer: String,
    /// The serial number in decimal (up to 128 bits; longer ones in hex with `0x`).
    pub serial: String,
    /// The subject as `CN=…`.
    pub subject: String,
}

/// Reads a certificate's key, issuer, subject and serial number.
pub fn cert_info(cert: &[u8]) -> Result<CertInfo, EpsError> {
    let (_, certificate, _, _) = read(cert)?;
    let (_, tbs, _, _) = read(certificate)?;
    let mut rest = tbs;
    let (tag, _, _, r) = read(rest)?;
    if tag == 0xA0 {
        rest = r;
    }
    let (_, serial, _, r) = read(rest)?;
    let (_, _alg, _, r) = read(r)?;
    let (_, issuer, _, r) = read(r)?;
    let (_, _validity, _, r) = read(r)?;
    let (_, subject, _, r) = read(r)?;
    let (_, _, spki, _) = read(r)?;
    let serial_digits: Vec<u8> = serial.iter().copied().skip_while(|b| *b == 0).collect();
    let serial = if serial_digits.len() <= 16 {
        serial_digits.iter().fold(0u128, |a, b| (a << 8) | u128::from(*b)).to_string()
    } else {
        format!("0x{}", serial_digits.iter().map(|b| format!("{b:02x}")).collect::<String>())
    };
    Ok(CertInfo { spki: spki.to_vec(), issuer: name_text(issuer)?, serial, subject: name_text(subject)? })
}

/// `CN=…,O=…` of a Name's content.
fn name_text(mut content: &[u8]) -> Result<String, EpsError> {
    let mut parts = Vec::new();
    while !content.is_empty() {
        let (_, set, _, rest) = read(content)?;
        content = rest;
        let (_, atv, _, _) = read(set)?;
        let (_, o, _, r) = read(atv)?;
        let (_, value, _, _) = read(r)?;
        let label = if o == oid::CN {
            "CN"
        } else if o == oid::O {
            "O"
        } else {
            continue;
        };
        parts.push(format!("{label}={}", String::from_utf8_lossy(value)));
    }
    Ok(parts.join(","))
}

/// The DER of a PEM block with `label` (`CERTIFICATE`).
pub fn pem_decode(pem: &str, label: &str) -> Result<Vec<u8>, EpsError> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin).ok_or_else(|| EpsError::Key(format!("no {label} PEM block")))? + begin.len();
    let stop = pem[start..].find(&end).ok_or_else(|| EpsError::Key(format!("unterminated {label} PEM block")))? + start;
    let body: String = pem[start..stop].chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(body).map_err(|_| EpsError::Key(format!("bad base64 in {label}")))
}

/// A PEM block of `der` with `label`.
pub fn pem_encode(der: &[u8], label: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
