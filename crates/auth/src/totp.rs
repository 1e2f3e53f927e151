//! Time-based one-time passwords (RFC 6238) as the second factor.
//!
//! Parameters are the ones every authenticator app understands: HMAC-SHA1, 6 digits, 30-second
//! steps. A code is accepted for the current step or one step either side (clock skew on the
//! phone), and never twice: the caller stores the returned step and passes it back next time, so a
//! code seen over a shoulder or in a proxy log is useless (kanidm applies the same rule, including
//! to *older* codes still inside the skew window).

use crate::AuthError;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use qrcode::QrCode;
use qrcode::render::svg;
use rand::rngs::OsRng;
use rand::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Secret, TOTP};

/// Seconds per step (RFC 6238 §4.1 `X`, the recommended default).
const STEP_SECS: i64 = 30;
const DIGITS: usize = 6;
/// RFC 4226 §4 recommends 160-bit shared secrets.
const SECRET_BYTES: usize = 20;

/// A user's TOTP shared secret: 20 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret([u8; SECRET_BYTES]);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

impl TotpSecret {
    /// A new random secret from the operating system's CSPRNG.
    pub fn generate() -> Self {
        Self::generate_with(&mut OsRng)
    }

    /// A new random secret from `rng`.
    pub fn generate_with(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut bytes = [0u8; SECRET_BYTES];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Parses the base32 form (case, spaces and `=` padding are forgiven, as users type it).
    pub fn from_base32(encoded: &str) -> Result<Self, AuthError> {
        let normalised: String =
            encoded.chars().filter(|c| !c.is_whitespace() && *c != '=').map(|c| c.to_ascii_uppercase()).collect();
        let bytes = Secret::Encoded(normalised).to_bytes().map_err(|_| AuthError::TotpSecretInvalid)?;
        let bytes: [u8; SECRET_BYTES] = bytes.try_into().map_err(|_| AuthError::TotpSecretInvalid)?;
        Ok(Self(bytes))
    }

    /// The RFC 4648 base32 form without padding, for storage and manual entry.
    pub fn to_base32(&self) -> String {
        match Secret::Raw(self.0.to_vec()).to_encoded() {
            Secret::Encoded(s) => s,
            // `to_encoded` of a raw secret is always the encoded variant.
            Secret::Raw(_) => String::new(),
        }
    }

    /// The `otpauth://` URI of the Key Uri Format that authenticator apps import.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> String {
        let issuer = utf8_percent_encode(issuer, NON_ALPHANUMERIC);
        let account = utf8_percent_encode(account, NON_ALPHANUMERIC);
        // The issuer goes both in the label prefix (older apps) and the parameter (newer apps).
        format!(
            "otpauth://totp/{issuer}:{account}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
            self.to_base32()
        )
    }

    /// The `otpauth://` URI as an SVG QR code, for the enrolment page.
    pub fn qr_svg(&self, issuer: &str, account: &str) -> Result<String, AuthError> {
        let code = QrCode::new(self.otpauth_uri(issuer, account)).map_err(|_| AuthError::QrCode)?;
        Ok(code.render::<svg::Color<'_>>().min_dimensions(200, 200).build())
    }

    /// Checks a code at `now_unix`; returns the step it belongs to, which the caller stores and
    /// passes back as `last_used_step` so that no code (nor an older one) is accepted again.
    pub fn verify(&self, code: &TotpCode, now_unix: i64, last_used_step: Option<i64>) -> Result<i64, AuthError> {
        let current = now_unix.div_euclid(STEP_SECS);
        let mut matched = None;
        let mut replayed = false;
        // All three candidates are computed and compared whatever matches, in constant time, so
        // the response time says nothing about which step (if any) was close.
        for step in [current - 1, current, current + 1] {
            let Some(expected) = self.code_of_step(step, DIGITS) else { continue };
            let hit = bool::from(expected.as_bytes().ct_eq(code.0.as_bytes()));
            if hit && last_used_step.is_some_and(|last| step <= last) {
                replayed = true;
            } else if hit && matched.is_none() {
                matched = Some(step);
            }
        }
        match (matched, replayed) {
            (Some(step), _) => Ok(step),
            (None, true) => Err(AuthError::TotpReplayed),
            (None, false) => Err(AuthError::TotpInvalid),
        }
    }

    /// The code an authenticator app shows at `now_unix` (for tests and the `ehr totp` tool).
    pub fn code_at(&self, now_unix: i64) -> String {
        self.code_of_step(now_unix.div_euclid(STEP_SECS), DIGITS).unwrap_or_default()
    }

    /// The code of `step` (None before the epoch, which no real clock shows).
    fn code_of_step(&self, step: i64, digits: usize) -> Option<String> {
        let time = u64::try_from(step.checked_mul(STEP_SECS)?).ok()?;
        // Unchecked: the secret is 160 bits by construction and the digits are ours, which are
        // exactly what the checked constructor would verify.
        let totp = TOTP::new_unchecked(Algorithm::SHA1, digits, 0, STEP_SECS.unsigned_abs(), self.0.to_vec());
        Some(totp.generate(time))
    }
}

/// A one-time code as the user typed it: exactly 6 ASCII digits.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpCode(String);

impl std::fmt::Debug for TotpCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpCode(<redacted>)")
    }
}

impl TotpCode {
    /// Parses a code; spaces are dropped because apps show codes as `123 456`.
    pub fn parse(input: &str) -> Result<Self, AuthError> {
        let code: String = input.chars().filter(|c| *c != ' ').collect();
        if code.len() == DIGITS && code.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(code))
        } else {
            Err(AuthError::TotpCodeMalformed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The RFC 6238 Appendix B SHA1 secret, "12345678901234567890".
    fn rfc_secret() -> TotpSecret {
        TotpSecret(*b"12345678901234567890")
    }

    fn code(s: &str) -> TotpCode {
        TotpCode::parse(s).expect("code")
    }

    #[test]
    fn rfc6238_vectors() {
        let s = rfc_secret();
        assert_eq!(s.code_of_step(59 / 30, 8), Some("94287082".to_owned()));
        assert_eq!(s.code_at(59), "287082");
        for (t, expected) in
            [(59, "287082"), (1_111_111_109, "081804"), (1_234_567_890, "005924"), (2_000_000_000, "279037")]
        {
            assert_eq!(s.verify(&code(expected), t, None).expect(expected), t / 30);
        }
    }

    #[test]
    fn skew_window_and_replay() {
        let s = rfc_secret();
        // The code of step 1 (T = 30..59) is accepted one step late and one step early.
        assert_eq!(s.verify(&code("287082"), 89, None).expect("late"), 1);
        assert_eq!(s.verify(&code("287082"), 0, None).expect("early"), 1);
        assert!(matches!(s.verify(&code("287082"), 90, None), Err(AuthError::TotpInvalid)));
        // Never twice, and not an older code inside the window after a newer one was used.
        assert!(matches!(s.verify(&code("287082"), 59, Some(1)), Err(AuthError::TotpReplayed)));
        assert!(matches!(s.verify(&code("287082"), 59, Some(2)), Err(AuthError::TotpReplayed)));
        assert_eq!(s.verify(&code("287082"), 59, Some(0)).expect("newer than last"), 1);
        assert!(matches!(s.verify(&code("000000"), 59, None), Err(AuthError::TotpInvalid)));
    }

    #[test]
    fn code_parsing() {
        assert_eq!(code(" 287 082 "), code("287082"));
        for bad in ["28708", "2870822", "28708a", "２８７０８２", "", "287-082"] {
            assert!(matches!(TotpCode::parse(bad), Err(AuthError::TotpCodeMalformed)), "{bad}");
        }
        assert_eq!(format!("{:?}", code("287082")), "TotpCode(<redacted>)");
    }

    #[test]
    fn base32_round_trip() {
        let s = rfc_secret();
        assert_eq!(s.to_base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        assert_eq!(TotpSecret::from_base32("gezd gnbv gy3t qojq gezd gnbv gy3t qojq").expect("lenient"), s);
        let g = TotpSecret::generate();
        assert_eq!(TotpSecret::from_base32(&g.to_base32()).expect("round trip"), g);
        assert_ne!(g, TotpSecret::generate());
        assert!(matches!(TotpSecret::from_base32("GEZDGNBV"), Err(AuthError::TotpSecretInvalid)));
        assert!(matches!(TotpSecret::from_base32("not base32!"), Err(AuthError::TotpSecretInvalid)));
        assert_eq!(format!("{s:?}"), "TotpSecret(<redacted>)");
    }

    #[test]
    fn otpauth_uri_and_qr() {
        let uri = rfc_secret().otpauth_uri("Example Hospital", "dr.sato@example.jp");
        assert_eq!(
            uri,
            "otpauth://totp/Example%20Hospital:dr%2Esato%40example%2Ejp?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=Example%20Hospital&algorithm=SHA1&digits=6&period=30"
        );
        let svg = rfc_secret().qr_svg("Example Hospital", "dr.sato@example.jp").expect("svg");
        assert!(svg.contains("<svg") && svg.contains("</svg>"));
    }
}
