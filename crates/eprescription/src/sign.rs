//! Signatures: the pluggable [`Signer`] (a software key here; an HPKI card over PKCS#11 or the
//! HPKI second-certificate remote signer plug in behind the same trait), the XAdES-BES enveloped
//! signature over the prescription data, and its verifier.
//!
//! The prescription document:
//!
//! ```text
//! <PrescriptionDocument>
//!   <PrescriptionData Id="PrescriptionData">Base64(CSV)</PrescriptionData>
//!   <ds:Signature xmlns:ds="…xmldsig#" Id="Signature">
//!     <ds:SignedInfo>  c14n exc, ecdsa-sha256 (or rsa-sha256), three references (SHA-256):
//!        #PrescriptionData, #KeyInfo, #SignedProperties (Type …#SignedProperties)
//!     <ds:SignatureValue>
//!     <ds:KeyInfo Id="KeyInfo"><ds:X509Data><ds:X509Certificate>
//!     <ds:Object><xades:QualifyingProperties Target="#Signature"><xades:SignedProperties
//!        Id="SignedProperties"><xades:SignedSignatureProperties><xades:SigningTime>,
//!        <xades:SigningCertificate><xades:Cert><xades:CertDigest>(SHA-256)<xades:IssuerSerial>
//! ```
//!
//! No whitespace between elements; signer and verifier both canonicalize with
//! [`crate::xml::canonicalize`] (exclusive c14n of the subset of XML these documents use).

use crate::EpsError;
use crate::der;
use crate::xml::{self, Element, esc};
use base64::Engine;
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use sha2::{Digest, Sha256};

pub const DS_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
pub const XADES_NS: &str = "http://uri.etsi.org/01903/v1.3.2#";
pub const EXC_C14N: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";
pub const SHA256: &str = "http://www.w3.org/2001/04/xmlenc#sha256";
/// ECDSA with SHA-256 (RFC 4051); the value is r‖s, 64 bytes for P-256.
pub const ECDSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256";
pub const SIGNED_PROPERTIES_TYPE: &str = "http://uri.etsi.org/01903#SignedProperties";

/// Who signs: an HPKI card, a remote signer, or a software key. Synchronous: a remote signer
/// runs its own round trip inside `sign`.
pub trait Signer: Send + Sync {
    /// The XML-DSig SignatureMethod URI.
    fn algorithm(&self) -> &'static str;
    /// The signer's certificate (DER).
    fn certificate(&self) -> &[u8];
    /// The signature value of `data` as XML-DSig wants it.
    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, EpsError>;
}

/// A software ECDSA P-256 key with a self-signed certificate: for tests and demos (production
/// signs with the physician's HPKI certificate).
pub struct SoftwareSigner {
    key: p256::ecdsa::SigningKey,
    cert: Vec<u8>,
}

impl std::fmt::Debug for SoftwareSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareSigner").finish_non_exhaustive()
    }
}

impl SoftwareSigner {
    /// A fresh key and a self-signed certificate for `subject` (CN), valid from `now` for ten
    /// years.
    pub fn generate(subject: &str, now: chrono::DateTime<chrono::Utc>) -> Result<Self, EpsError> {
        let key = p256::ecdsa::SigningKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let cert = self_signed(&key, subject, now)?;
        Ok(Self { key, cert })
    }

    /// A key (PKCS#8 PEM) and its certificate (PEM).
    pub fn from_pem(key_pem: &str, cert_pem: &str) -> Result<Self, EpsError> {
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(key_pem)
            .map_err(|_| EpsError::Key("the key is not a PKCS#8 P-256 private key".into()))?;
        let cert = der::pem_decode(cert_pem, "CERTIFICATE")?;
        let info = der::cert_info(&cert)?;
        let public = p256::ecdsa::VerifyingKey::from_public_key_der(&info.spki)
            .map_err(|_| EpsError::Key("the certificate's key is not P-256".into()))?;
        if public != *key.verifying_key() {
            return Err(EpsError::Key("the certificate does not belong to the key".into()));
        }
        Ok(Self { key, cert })
    }

    /// The key as PKCS#8 PEM (for writing a demo key to disk).
    pub fn key_pem(&self) -> Result<String, EpsError> {
        self.key
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .map(|z| z.to_string())
            .map_err(|_| EpsError::Key("cannot encode the key".into()))
    }

    /// The certificate as PEM.
    pub fn cert_pem(&self) -> String {
        der::pem_encode(&self.cert, "CERTIFICATE")
    }
}

impl Signer for SoftwareSigner {
    fn algorithm(&self) -> &'static str {
        ECDSA_SHA256
    }

    fn certificate(&self) -> &[u8] {
        &self.cert
    }

    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, EpsError> {
        let sig: p256::ecdsa::Signature = self.key.sign(data);
        Ok(sig.to_bytes().to_vec())
    }
}

/// A self-signed X.509 v3 certificate of `key`.
fn self_signed(
    key: &p256::ecdsa::SigningKey,
    subject: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<u8>, EpsError> {
    let spki = key
        .verifying_key()
        .to_public_key_der()
        .map_err(|_| EpsError::Key("cannot encode the public key".into()))?
        .into_vec();
    let alg = der::seq(&[der::tlv(0x06, der::oid::ECDSA_SHA256)]);
    let name = der::name(&[(der::oid::O, "EHR reference implementation (test signer)"), (der::oid::CN, subject)]);
    let mut serial = [0u8; 16];
    serial.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..]);
    serial[0] &= 0x7F;
    let tbs = der::seq(&[
        der::tlv(0xA0, &der::uint(&[2])),
        der::uint(&serial),
        alg.clone(),
        name.clone(),
        der::seq(&[der::time(now), der::time(now + chrono::Duration::days(3650))]),
        name,
        spki,
    ]);
    let sig: p256::ecdsa::DerSignature = key.sign(&tbs);
    let mut bits = vec![0u8];
    bits.extend_from_slice(sig.as_bytes());
    Ok(der::seq(&[tbs, alg, der::tlv(0x03, &bits)]))
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn sha256_b64(data: &[u8]) -> String {
    b64(&Sha256::digest(data))
}

/// SHA-256 fingerprint of a certificate, hex.
pub fn fingerprint(cert: &[u8]) -> String {
    Sha256::digest(cert).iter().map(|b| format!("{b:02x}")).collect()
}

/// The `PrescriptionData` element (canonical form).
fn data_element(csv: &str) -> String {
    format!("<PrescriptionData Id=\"PrescriptionData\">{}</PrescriptionData>", b64(csv.as_bytes()))
}

/// An unsigned prescription document (paper prescriptions, IssueType 2).
pub fn unsigned_document(csv: &str) -> String {
    format!("<PrescriptionDocument>{}</PrescriptionDocument>", data_element(csv))
}

/// A prescription document with a XAdES-BES enveloped signature by `signer` at `now`.
///
/// The digests are taken over the exclusive c14n of each element as it stands in the document
/// (the document is assembled, read back and canonicalized with the verifier's code), so signer
/// and verifier cannot disagree about the canonical form.
pub fn signed_document(csv: &str, signer: &dyn Signer, now: chrono::DateTime<chrono::Utc>) -> Result<String, EpsError> {
    let data = data_element(csv);
    let cert = signer.certificate();
    let info = der::cert_info(cert)?;
    let key_info = format!(
        "<ds:KeyInfo Id=\"KeyInfo\"><ds:X509Data><ds:X509Certificate>{}</ds:X509Certificate></ds:X509Data></ds:KeyInfo>",
        b64(cert)
    );
    let signed_properties = format!(
        "<xades:SignedProperties Id=\"SignedProperties\">\
<xades:SignedSignatureProperties><xades:SigningTime>{}</xades:SigningTime><xades:SigningCertificate><xades:Cert>\
<xades:CertDigest><ds:DigestMethod Algorithm=\"{SHA256}\"></ds:DigestMethod><ds:DigestValue>{}</ds:DigestValue></xades:CertDigest>\
<xades:IssuerSerial><ds:X509IssuerName>{}</ds:X509IssuerName><ds:X509SerialNumber>{}</ds:X509SerialNumber></xades:IssuerSerial>\
</xades:Cert></xades:SigningCertificate></xades:SignedSignatureProperties></xades:SignedProperties>",
        now.format("%Y-%m-%dT%H:%M:%SZ"),
        sha256_b64(cert),
        esc(&info.issuer),
        esc(&info.serial)
    );
    let assemble = |signed_info: &str, value: &str| {
        format!(
            "<PrescriptionDocument>{data}<ds:Signature xmlns:ds=\"{DS_NS}\" Id=\"Signature\">{signed_info}\
<ds:SignatureValue>{value}</ds:SignatureValue>{key_info}<ds:Object><xades:QualifyingProperties xmlns:xades=\"{XADES_NS}\" \
Target=\"#Signature\">{signed_properties}</xades:QualifyingProperties></ds:Object></ds:Signature></PrescriptionDocument>"
        )
    };
    let digest_of = |doc: &str, root: &Element, id: &str| -> Result<String, EpsError> {
        let target = root.by_id(id)?.ok_or_else(|| EpsError::Signature(format!("no element {id}")))?;
        Ok(sha256_b64(xml::canonicalize(doc, target)?.as_bytes()))
    };
    let draft = assemble("<ds:SignedInfo></ds:SignedInfo>", "");
    let draft_root = xml::parse_tree(&draft)?;
    let reference = |uri: &str, kind: Option<&str>, digest: String| {
        let kind = kind.map(|t| format!(" Type=\"{t}\"")).unwrap_or_default();
        format!(
            "<ds:Reference URI=\"#{uri}\"{kind}><ds:Transforms><ds:Transform Algorithm=\"{EXC_C14N}\"></ds:Transform></ds:Transforms>\
<ds:DigestMethod Algorithm=\"{SHA256}\"></ds:DigestMethod><ds:DigestValue>{digest}</ds:DigestValue></ds:Reference>"
        )
    };
    let signed_info = format!(
        "<ds:SignedInfo><ds:CanonicalizationMethod Algorithm=\"{EXC_C14N}\"></ds:CanonicalizationMethod>\
<ds:SignatureMethod Algorithm=\"{}\"></ds:SignatureMethod>{}{}{}</ds:SignedInfo>",
        signer.algorithm(),
        reference("PrescriptionData", None, digest_of(&draft, &draft_root, "PrescriptionData")?),
        reference("KeyInfo", None, digest_of(&draft, &draft_root, "KeyInfo")?),
        reference(
            "SignedProperties",
            Some(SIGNED_PROPERTIES_TYPE),
            digest_of(&draft, &draft_root, "SignedProperties")?
        ),
    );
    let unsigned = assemble(&signed_info, "");
    let root = xml::parse_tree(&unsigned)?;
    let si = root
        .child("Signature")
        .and_then(|s| s.child("SignedInfo"))
        .ok_or_else(|| EpsError::Signature("no SignedInfo".into()))?;
    let value = signer.sign(xml::canonicalize(&unsigned, si)?.as_bytes())?;
    Ok(assemble(&signed_info, &b64(&value)))
}

/// Why a signed document was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureFault {
    /// No signature where one is required.
    Missing,
    /// The signature's structure is not XAdES-BES as described (references, algorithms).
    Malformed,
    /// A referenced element's digest does not match: the data was changed after signing.
    DigestMismatch,
    /// The signature value does not verify with the certificate's key.
    BadSignature,
    /// The certificate is not in the trust list.
    UntrustedSigner,
}

impl SignatureFault {
    /// The service's result code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Missing => "EPSS0001E",
            Self::Malformed => "EPSS0002E",
            Self::DigestMismatch => "EPSS0003E",
            Self::BadSignature => "EPSS0004E",
            Self::UntrustedSigner => "EPSS0005E",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::Missing => "電子署名がありません (the prescription is not signed)",
            Self::Malformed => "電子署名の形式が不正です (the signature is not XAdES-BES as specified)",
            Self::DigestMismatch => "署名対象データが改ざんされています (a signed element does not match its digest)",
            Self::BadSignature => "署名値の検証に失敗しました (the signature value does not verify)",
            Self::UntrustedSigner => "署名者の証明書が信頼されていません (the signer's certificate is not trusted)",
        }
    }
}

/// What a verified document carried.
#[derive(Debug, Clone)]
pub struct Verified {
    pub csv: String,
    /// The signer's certificate (DER), when signed.
    pub certificate: Option<Vec<u8>>,
    /// `CN=…` of the signer.
    pub signer: Option<String>,
    pub signing_time: Option<String>,
}

/// The CSV of a prescription document, and its signature checked when it has one or when
/// `required`: references (data, KeyInfo, SignedProperties) digested after exc-c14n, the
/// signature value against the KeyInfo certificate's key, the SigningCertificate digest and
/// IssuerSerial against that certificate, and the certificate against `trusted` (DER
/// certificates).
///
/// The structure is pinned, so that what is checked is what is used: one `PrescriptionData`
/// child of the root (the one the `#PrescriptionData` reference digests, whose CSV is returned),
/// one `ds:Signature`, whose one `SignedInfo`, `SignatureValue` and `KeyInfo` are in the XML-DSig
/// namespace, the `KeyInfo` that carries the key being the one the `#KeyInfo` reference digests,
/// and the `SignedProperties` being the ones inside this signature's `QualifyingProperties`
/// (Target `#` + the signature's Id). Transforms other than one exc-c14n (or exc-c14n with
/// parameters such as InclusiveNamespaces, which this canonicalizer does not implement) are
/// refused rather than ignored.
pub fn verify_document(doc: &str, trusted: &[Vec<u8>], required: bool) -> Result<Verified, SignatureFault> {
    use SignatureFault::*;
    let root = xml::parse_tree(doc).map_err(|_| Malformed)?;
    if root.local() != "PrescriptionDocument" {
        return Err(Malformed);
    }
    let data = root.by_id("PrescriptionData").map_err(|_| Malformed)?.ok_or(Malformed)?;
    let data_children: Vec<&Element> = root.children_named("PrescriptionData").collect();
    // The CSV read is the element the reference digests: the root's only PrescriptionData.
    if data.local() != "PrescriptionData" || data_children.len() != 1 || !std::ptr::eq(data_children[0], data) {
        return Err(Malformed);
    }
    let csv = String::from_utf8(xml::unb64(&data.text).map_err(|_| Malformed)?).map_err(|_| Malformed)?;
    let signatures: Vec<&Element> = root.children_named("Signature").collect();
    let sig = match signatures.as_slice() {
        [] if required => return Err(Missing),
        [] => return Ok(Verified { csv, certificate: None, signer: None, signing_time: None }),
        [one] => *one,
        _ => return Err(Malformed),
    };
    if ns_of(sig).as_deref() != Some(DS_NS) {
        return Err(Malformed);
    }
    let signed_info = only(sig, "SignedInfo")?;
    let signature_value = only(sig, "SignatureValue")?;
    let key_info = only(sig, "KeyInfo")?;
    if key_info.attr("Id") != Some("KeyInfo") {
        return Err(Malformed);
    }
    // An algorithm element with parameters (InclusiveNamespaces…) is not what this verifier
    // computes: refused, not ignored.
    let alg = |e: &Element, n: &str| {
        e.child(n).filter(|c| c.children.is_empty()).and_then(|c| c.attr("Algorithm")).map(str::to_owned)
    };
    if alg(signed_info, "CanonicalizationMethod").as_deref() != Some(EXC_C14N)
        || alg(signed_info, "SignatureMethod").as_deref() != Some(ECDSA_SHA256)
    {
        return Err(Malformed);
    }
    let x509_data = only(key_info, "X509Data")?;
    let cert_text = only(x509_data, "X509Certificate")?.text.as_str();
    let cert = xml::unb64(cert_text).map_err(|_| Malformed)?;
    // The SignedProperties of this signature: Object / QualifyingProperties (Target = #Id) /
    // SignedProperties, in the XAdES namespace.
    let sig_id = sig.attr("Id").ok_or(Malformed)?;
    let qualifying: Vec<&Element> = sig
        .children_named("Object")
        .flat_map(|o| o.children_named("QualifyingProperties"))
        .filter(|q| ns_of(q).as_deref() == Some(XADES_NS))
        .collect();
    let [qualifying] = qualifying.as_slice() else { return Err(Malformed) };
    if qualifying.attr("Target").and_then(|t| t.strip_prefix('#')) != Some(sig_id) {
        return Err(Malformed);
    }
    let signed_properties = qualifying.child("SignedProperties").ok_or(Malformed)?;
    if signed_properties.attr("Id") != Some("SignedProperties") || ns_of(signed_properties).as_deref() != Some(XADES_NS)
    {
        return Err(Malformed);
    }
    // Every reference digested, and the three XAdES-BES ones present (each resolving to the
    // element used above).
    let mut seen: Vec<&Element> = Vec::new();
    for r in signed_info.children_named("Reference") {
        let uri = r.attr("URI").ok_or(Malformed)?;
        let id = uri.strip_prefix('#').ok_or(Malformed)?;
        if alg(r, "DigestMethod").as_deref() != Some(SHA256) {
            return Err(Malformed);
        }
        let transforms: Vec<&Element> = r.child("Transforms").map(|t| t.children.iter().collect()).unwrap_or_default();
        let [transform] = transforms.as_slice() else { return Err(Malformed) };
        if transform.local() != "Transform"
            || !transform.children.is_empty()
            || transform.attr("Algorithm") != Some(EXC_C14N)
        {
            return Err(Malformed);
        }
        let target = root.by_id(id).map_err(|_| Malformed)?.ok_or(Malformed)?;
        if std::ptr::eq(target, signed_properties) && r.attr("Type") != Some(SIGNED_PROPERTIES_TYPE) {
            return Err(Malformed);
        }
        let canonical = xml::canonicalize(doc, target).map_err(|_| Malformed)?;
        let expected = r.text_of("DigestValue").ok_or(Malformed)?;
        if sha256_b64(canonical.as_bytes()) != expected.trim() {
            return Err(DigestMismatch);
        }
        seen.push(target);
    }
    for wanted in [data, key_info, signed_properties] {
        if !seen.iter().any(|t| std::ptr::eq(*t, wanted)) {
            return Err(Malformed);
        }
    }
    // SigningCertificate: the first Cert is the signer's: its digest (SHA-256) and IssuerSerial
    // name the KeyInfo certificate.
    let mut certs = Vec::new();
    signed_properties.descendants("Cert", &mut certs);
    let first = certs.first().ok_or(Malformed)?;
    let cert_digest = first.child("CertDigest").ok_or(Malformed)?;
    if alg(cert_digest, "DigestMethod").as_deref() != Some(SHA256) {
        return Err(Malformed);
    }
    if cert_digest.text_of("DigestValue").ok_or(Malformed)?.trim() != sha256_b64(&cert) {
        return Err(DigestMismatch);
    }
    let info = der::cert_info(&cert).map_err(|_| Malformed)?;
    let issuer_serial = first.child("IssuerSerial").ok_or(Malformed)?;
    if issuer_serial.text_of("X509IssuerName").map(str::trim) != Some(info.issuer.as_str())
        || issuer_serial.text_of("X509SerialNumber").map(str::trim) != Some(info.serial.as_str())
    {
        return Err(DigestMismatch);
    }
    let mut times = Vec::new();
    signed_properties.descendants("SigningTime", &mut times);
    let signing_time = times.first().map(|t| t.text.clone());
    let key = p256::ecdsa::VerifyingKey::from_public_key_der(&info.spki).map_err(|_| Malformed)?;
    let canonical_si = xml::canonicalize(doc, signed_info).map_err(|_| Malformed)?;
    let value = xml::unb64(&signature_value.text).map_err(|_| Malformed)?;
    let signature = p256::ecdsa::Signature::from_slice(&value).map_err(|_| BadSignature)?;
    key.verify(canonical_si.as_bytes(), &signature).map_err(|_| BadSignature)?;
    if !trusted.contains(&cert) {
        return Err(UntrustedSigner);
    }
    Ok(Verified { csv, certificate: Some(cert), signer: Some(info.subject), signing_time })
}

/// The namespace URI of an element's name.
fn ns_of(e: &Element) -> Option<String> {
    let prefix = e.name.split_once(':').map(|(p, _)| p).unwrap_or("");
    let own =
        e.attrs.iter().find(|(k, _)| k.strip_prefix("xmlns:") == Some(prefix) || (prefix.is_empty() && k == "xmlns"));
    own.map(|(_, v)| v.clone()).or_else(|| e.inherited.iter().rev().find(|(p, _)| p == prefix).map(|(_, v)| v.clone()))
}

/// The one child of this local name, in the XML-DSig namespace (none or several: malformed).
fn only<'a>(parent: &'a Element, local: &'a str) -> Result<&'a Element, SignatureFault> {
    let mut found = parent.children_named(local);
    let (Some(e), None) = (found.next(), found.next()) else { return Err(SignatureFault::Malformed) };
    if ns_of(e).as_deref() != Some(DS_NS) { Err(SignatureFault::Malformed) } else { Ok(e) }
}
