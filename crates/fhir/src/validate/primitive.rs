//! FHIR R4 primitive formats (JSON representation), hand-written instead of regexes.

use serde_json::Value;

/// Why a primitive value is rejected.
pub(crate) enum PrimError {
    /// Wrong JSON kind (string where a number is expected, ...).
    Kind(&'static str),
    /// Right kind, bad lexical form.
    Format,
}

/// Checks a primitive JSON value against a FHIR primitive type code.
pub(crate) fn check(type_code: &str, v: &Value) -> Result<(), PrimError> {
    match type_code {
        "boolean" => v.as_bool().map(|_| ()).ok_or(PrimError::Kind("a JSON boolean")),
        "integer" => int_in(v, i64::from(i32::MIN), i64::from(i32::MAX)),
        "unsignedInt" => int_in(v, 0, i64::from(i32::MAX)),
        "positiveInt" => int_in(v, 1, i64::from(i32::MAX)),
        "decimal" => {
            if v.is_number() {
                Ok(())
            } else {
                Err(PrimError::Kind("a JSON number"))
            }
        }
        _ => {
            let s = v.as_str().ok_or(PrimError::Kind("a JSON string"))?;
            if lexical_ok(type_code, s) { Ok(()) } else { Err(PrimError::Format) }
        }
    }
}

fn int_in(v: &Value, lo: i64, hi: i64) -> Result<(), PrimError> {
    if !v.is_number() {
        return Err(PrimError::Kind("a JSON number"));
    }
    match v.as_i64() {
        Some(n) if (lo..=hi).contains(&n) => Ok(()),
        _ => Err(PrimError::Format),
    }
}

fn lexical_ok(type_code: &str, s: &str) -> bool {
    // R4 §2.1.28.0.1: no Unicode code points below U+0020 but tab, line feed and carriage
    // return, in any string-valued primitive (PostgreSQL could not store U+0000 either).
    if s.chars().any(|c| c < ' ' && !matches!(c, '\t' | '\n' | '\r')) {
        return false;
    }
    match type_code {
        "id" => (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
        "code" => !s.is_empty() && s.trim() == s && !s.contains("  ") && !s.contains(['\t', '\n', '\r']),
        "uri" | "url" | "canonical" => !s.is_empty() && !s.chars().any(char::is_whitespace),
        "oid" => s.strip_prefix("urn:oid:").is_some_and(is_oid),
        "uuid" => s.strip_prefix("urn:uuid:").is_some_and(is_uuid),
        "date" => is_date(s),
        "dateTime" => is_date_time(s),
        "instant" => is_instant(s),
        "time" => is_time(s),
        "base64Binary" => {
            s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b' ' | b'\n' | b'\r'))
        }
        "xhtml" => s.trim_start().starts_with("<div") && crate::xml::narrative_is_well_formed(s),
        // string, markdown and anything else string-valued: must not be empty.
        _ => !s.is_empty(),
    }
}

fn is_oid(s: &str) -> bool {
    let mut parts = s.split('.');
    matches!(parts.next(), Some("0" | "1" | "2"))
        && s.contains('.')
        && parts.all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (p == "0" || !p.starts_with('0')))
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn digits(s: &str, n: usize) -> Option<u32> {
    if s.len() == n && s.bytes().all(|b| b.is_ascii_digit()) { s.parse().ok() } else { None }
}

/// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`, with a real calendar day.
fn is_date(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    match parts.as_slice() {
        [y] => digits(y, 4).is_some(),
        [y, m] => digits(y, 4).is_some() && digits(m, 2).is_some_and(|m| (1..=12).contains(&m)),
        [y, m, d] => match (digits(y, 4), digits(m, 2), digits(d, 2)) {
            (Some(y), Some(m), Some(d)) => chrono::NaiveDate::from_ymd_opt(y as i32, m, d).is_some(),
            _ => false,
        },
        _ => false,
    }
}

/// `hh:mm:ss(.fff)`.
fn is_time(s: &str) -> bool {
    let (main, frac) = match s.split_once('.') {
        Some((m, f)) => (m, Some(f)),
        None => (s, None),
    };
    let parts: Vec<&str> = main.split(':').collect();
    let ok = match parts.as_slice() {
        [h, m, sec] => {
            digits(h, 2).is_some_and(|h| h < 24)
                && digits(m, 2).is_some_and(|m| m < 60)
                && digits(sec, 2).is_some_and(|s| s <= 60)
        }
        _ => false,
    };
    ok && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

/// `Z` or `+hh:mm` / `-hh:mm`.
fn is_tz(s: &str) -> bool {
    if s == "Z" {
        return true;
    }
    let Some(rest) = s.strip_prefix(['+', '-']) else { return false };
    match rest.split_once(':') {
        Some((h, m)) => digits(h, 2).is_some_and(|h| h <= 14) && digits(m, 2).is_some_and(|m| m < 60),
        None => false,
    }
}

/// Splits `hh:mm:ss(.fff)(tz)` into time and zone.
fn split_tz(s: &str) -> (&str, &str) {
    match s.find(['Z', '+', '-']) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    }
}

fn is_date_time(s: &str) -> bool {
    match s.split_once('T') {
        None => is_date(s),
        Some((d, t)) => {
            let (time, tz) = split_tz(t);
            // A time without seconds is not allowed; a time requires a zone.
            d.len() == 10 && is_date(d) && is_time(time) && is_tz(tz)
        }
    }
}

fn is_instant(s: &str) -> bool {
    s.contains('T') && is_date_time(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert!(is_date("1990"));
        assert!(is_date("1990-02"));
        assert!(is_date("2000-02-29"));
        assert!(!is_date("1990-13-45"));
        assert!(!is_date("2001-02-29"));
        assert!(!is_date("1990-1-01"));
        assert!(is_date_time("2021-07-05T13:08:22+09:00"));
        assert!(is_date_time("2021-07-05T13:08:22.123Z"));
        assert!(!is_date_time("2021-07-05T13:08:22"));
        assert!(!is_date_time("2021-07-05T25:08:22Z"));
        assert!(is_instant("2021-07-05T19:28:23.000+09:00"));
        assert!(!is_instant("2021-07-05"));
        assert!(is_time("12:00:00"));
        assert!(!is_time("12:00"));
    }

    #[test]
    fn ids_and_codes() {
        assert!(lexical_ok("id", "Example-JP-Patient.1"));
        assert!(!lexical_ok("id", "has space"));
        assert!(!lexical_ok("code", " x"));
        assert!(!lexical_ok("string", ""));
        assert!(lexical_ok("oid", "urn:oid:1.2.392.100495.20.3.11"));
        assert!(lexical_ok("uuid", "urn:uuid:550e8400-e29b-41d4-a716-446655440000"));
        assert!(check("positiveInt", &serde_json::json!(0)).is_err());
        assert!(check("integer", &serde_json::json!(1.5)).is_err());
    }
}
