//! Escape sequences in data fields (HL7 v2.5 §2.7).
//!
//! Both directions borrow when there is nothing to do, which is the common case: most values
//! hold no delimiter and no escape character.

use std::borrow::Cow;

use crate::delimiters::Delimiters;
use crate::error::{Hl7Error, Result};

/// Most line breaks that one `\.sp n\` may expand to; bounds the output of hostile input.
const MAX_SPACE_LINES: usize = 64;

/// Escapes a value for writing: each delimiter becomes `\F\ \S\ \T\ \R\ \E\` (and the v2.7
/// truncation character `\P\`), and a line break (CR, LF or CRLF) becomes `\.br\` (§2.7.6), as
/// a raw CR would end the segment.
///
/// Fails when the value needs escaping but the delimiters have no escape character.
pub fn escape<'v>(value: &'v str, delimiters: &Delimiters) -> Result<Cow<'v, str>> {
    let needs = |b: u8| delimiters.is_special(b) || b == b'\r' || b == b'\n';
    let Some(first) = value.bytes().position(needs) else {
        return Ok(Cow::Borrowed(value));
    };
    let esc = delimiters.escape().ok_or(Hl7Error::MissingDelimiter { which: "escape" })?;
    let mut out = String::with_capacity(value.len() + 8);
    out.push_str(&value[..first]);
    let mut chars = value[first..].chars().peekable();
    while let Some(c) = chars.next() {
        let code = match c {
            '\r' => {
                // CRLF is one line break, not two.
                chars.next_if_eq(&'\n');
                ".br"
            }
            '\n' => ".br",
            c if c == delimiters.field() => "F",
            c if c == delimiters.component() => "S",
            c if c == delimiters.repetition() => "R",
            c if Some(c) == delimiters.subcomponent() => "T",
            c if c == esc => "E",
            c if Some(c) == delimiters.truncation() => "P",
            c => {
                out.push(c);
                continue;
            }
        };
        out.push(esc);
        out.push_str(code);
        out.push(esc);
    }
    Ok(Cow::Owned(out))
}

/// Decodes the escape sequences of a raw value.
///
/// - `\F\ \S\ \T\ \R\ \E\` (and v2.7 `\P\`) give the delimiter back (§2.7.1);
/// - `\Xhh…\` gives the bytes in hex, read as UTF-8 (the message has already been decoded to
///   Unicode by [`crate::charset`]); hex that is not UTF-8 is kept as written (§2.7.2);
/// - `\.br\` is a line break (`\n`), `\.sp n\` n line breaks, the other formatting commands of
///   §2.7.6 (`\.in\`, `\.ti\`, `\.sk\`, `\.ce\`, `\.fi\`, `\.nf\`) and highlighting `\H\ \N\`
///   (§2.7.4) are dropped, as they only affect display;
/// - character-set switches `\C…\ \M…\` (§2.7.5), local `\Z…\` (§2.7.3) and anything not
///   recognised are kept as written, as is an escape character without its closing partner.
pub fn unescape<'v>(raw: &'v str, delimiters: &Delimiters) -> Cow<'v, str> {
    let Some(esc) = delimiters.escape() else { return Cow::Borrowed(raw) };
    let Some(first) = raw.find(esc) else { return Cow::Borrowed(raw) };
    let mut out = String::with_capacity(raw.len());
    out.push_str(&raw[..first]);
    let mut rest = &raw[first..];
    while let Some(start) = rest.find(esc) {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(len) = after.find(esc) else {
            // An opening escape without a closing one: not a sequence, keep it.
            out.push_str(&rest[start..]);
            return Cow::Owned(out);
        };
        let seq = &after[..len];
        if !decode_sequence(seq, delimiters, &mut out) {
            out.push(esc);
            out.push_str(seq);
            out.push(esc);
        }
        rest = &after[len + 1..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Writes the meaning of one escape sequence (without its escape characters); false when it is
/// not one this crate interprets.
fn decode_sequence(seq: &str, d: &Delimiters, out: &mut String) -> bool {
    let delimiter = match seq {
        "F" => Some(d.field()),
        "S" => Some(d.component()),
        "R" => Some(d.repetition()),
        "T" => d.subcomponent(),
        "E" => d.escape(),
        "P" => d.truncation(),
        _ => None,
    };
    if let Some(c) = delimiter {
        out.push(c);
        return true;
    }
    match seq.as_bytes() {
        [b'H'] | [b'N'] => true,
        [b'X', hex @ ..] => match decode_hex(hex) {
            Some(bytes) => match String::from_utf8(bytes) {
                Ok(text) => {
                    out.push_str(&text);
                    true
                }
                Err(_) => false,
            },
            None => false,
        },
        [b'.', b'b', b'r'] => {
            out.push('\n');
            true
        }
        [b'.', b's', b'p', count @ ..] => {
            let count = std::str::from_utf8(count).ok().map(str::trim);
            let lines = match count {
                Some("") => Some(1),
                Some(n) => n.parse::<usize>().ok(),
                None => None,
            };
            match lines {
                Some(n) => {
                    out.extend(std::iter::repeat_n('\n', n.clamp(1, MAX_SPACE_LINES)));
                    true
                }
                None => false,
            }
        }
        [b'.', b'i', b'n', ..]
        | [b'.', b't', b'i', ..]
        | [b'.', b's', b'k', ..]
        | [b'.', b'c', b'e']
        | [b'.', b'f', b'i']
        | [b'.', b'n', b'f'] => true,
        _ => false,
    }
}

fn decode_hex(hex: &[u8]) -> Option<Vec<u8>> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |b: u8| char::from(b).to_digit(16).and_then(|n| u8::try_from(n).ok());
    hex.chunks_exact(2).map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Delimiters = Delimiters::STANDARD;

    #[test]
    fn plain_values_are_borrowed_both_ways() {
        assert!(matches!(escape("山田 太郎", &D).unwrap(), Cow::Borrowed(_)));
        assert!(matches!(unescape("山田 太郎", &D), Cow::Borrowed(_)));
    }

    #[test]
    fn every_delimiter_round_trips() {
        let value = "a|b^c~d\\e&f";
        let escaped = escape(value, &D).unwrap();
        assert_eq!(escaped, "a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f");
        assert_eq!(unescape(&escaped, &D), value);
    }

    #[test]
    fn line_breaks_become_br() {
        assert_eq!(escape("one\r\ntwo\nthree\rfour", &D).unwrap(), "one\\.br\\two\\.br\\three\\.br\\four");
        assert_eq!(unescape("one\\.br\\two", &D), "one\ntwo");
    }

    #[test]
    fn hex_is_read_as_utf8() {
        assert_eq!(unescape("\\X41\\\\XE5B1B1\\", &D), "A山");
        // Not UTF-8: kept as written.
        assert_eq!(unescape("\\XFF\\", &D), "\\XFF\\");
        assert_eq!(unescape("\\X4\\", &D), "\\X4\\");
    }

    #[test]
    fn formatting_and_unknown_sequences() {
        assert_eq!(unescape("\\H\\bold\\N\\", &D), "bold");
        assert_eq!(unescape("a\\.sp 2\\b", &D), "a\n\nb");
        assert_eq!(unescape("a\\.sp\\b", &D), "a\nb");
        assert_eq!(unescape("a\\.sp 999999999\\b", &D).len(), 2 + MAX_SPACE_LINES);
        assert_eq!(unescape("\\.in+4\\x\\.ce\\", &D), "x");
        assert_eq!(unescape("\\Zlocal\\ \\C2842\\ \\Q\\", &D), "\\Zlocal\\ \\C2842\\ \\Q\\");
        assert_eq!(unescape("dangling \\F", &D), "dangling \\F");
    }

    #[test]
    fn truncation_character_of_v27() {
        let d = Delimiters::new('|', "^~\\&#").unwrap();
        assert_eq!(escape("#1", &d).unwrap(), "\\P\\1");
        assert_eq!(unescape("\\P\\1", &d), "#1");
        // Without a truncation character `#` is data and `\P\` is unknown.
        assert_eq!(escape("#1", &D).unwrap(), "#1");
        assert_eq!(unescape("\\P\\", &D), "\\P\\");
    }

    #[test]
    fn other_delimiters_are_honoured() {
        let d = Delimiters::new('!', "@%$*").unwrap();
        assert_eq!(escape("a!b|c", &d).unwrap(), "a$F$b|c");
        assert_eq!(unescape("a$F$b$S$", &d), "a!b@");
    }

    #[test]
    fn no_escape_character() {
        let d = Delimiters::new('|', "^~").unwrap();
        assert_eq!(escape("plain", &d).unwrap(), "plain");
        assert!(matches!(escape("a^b", &d), Err(Hl7Error::MissingDelimiter { which: "escape" })));
        assert_eq!(unescape("a\\F\\b", &d), "a\\F\\b");
    }
}
