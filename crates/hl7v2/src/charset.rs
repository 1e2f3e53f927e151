//! Character sets on the wire (MSH-18, HL7 v2.5 §2.14.9.18 and table 0211; MSH-20, table 0356).
//!
//! JAHIS clinical-lab messages declare `MSH-18 = ~ISO IR87` with `MSH-20 = ISO 2022-1994`: the
//! default repertoire (empty first repetition: ISO IR6, i.e. ASCII) plus JIS X 0208 reached by
//! ISO 2022 escape sequences — ISO-2022-JP on the wire. Some labs are configured for
//! `UNICODE UTF-8`. ISO-2022-JP is decoded and encoded by `encoding_rs` (the WHATWG Encoding
//! Standard's definition), without replacement: malformed input or an unmappable character is an
//! error, never a `?` or U+FFFD.
//!
//! The parser works on decoded text only, so delimiters are never confused with the second byte
//! of a kanji (JIS X 0208 bytes range over 0x21–0x7E, which holds `|^~\&`).
//!
//! Mappings: the WHATWG index follows Windows-31J, so reading JIS 0x2141 gives `～` (U+FF5E)
//! where the JIS standard mapping gives `〜` (U+301C); six more characters differ the same way
//! (see `JIS_STANDARD_FORMS`). Writing accepts both forms. The index also fills JIS X 0208's
//! empty rows with Windows-31J extensions (①, ㈱, 髙, 﨑): read when a sender writes them,
//! refused when writing, as `ISO IR87` receivers cannot read them — a name with 髙 must be
//! written with 高 or sent in UTF-8, a decision for the caller, not for this crate.

use std::borrow::Cow;

use encoding_rs::{DecoderResult, EncoderResult, ISO_2022_JP};

use crate::error::{Hl7Error, Result};

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
const ESC: u8 = 0x1B;

/// A character set this crate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Charset {
    /// ASCII (ISO IR6), MSH-18 empty: the HL7 default.
    Ascii,
    /// ISO-2022-JP: `~ISO IR87` (JIS X 0208), optionally with `ISO IR14`/`ISO IR13` (JIS X 0201),
    /// as JAHIS requires. Written strictly as JIS X 0208; read leniently.
    Iso2022Jp,
    /// UTF-8: `UNICODE UTF-8`.
    Utf8,
}

impl Charset {
    /// A lower-case name for messages and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ascii => "ascii",
            Self::Iso2022Jp => "iso-2022-jp",
            Self::Utf8 => "utf-8",
        }
    }

    /// Reads MSH-18 (`raw`, repetitions separated by `repetition`).
    ///
    /// The first repetition is the default character set and the others are the alternates
    /// reached by ISO 2022 code extension (§2.14.9.18); JAHIS writes `~ISO IR87`, i.e. default
    /// ASCII plus JIS X 0208. JIS X 0212 (`ISO IR159`) is not supported: the WHATWG ISO-2022-JP
    /// decoder does not know its escape sequence.
    pub fn from_msh18(raw: &str, repetition: char) -> Result<Self> {
        let (mut jis, mut utf8) = (false, false);
        for name in raw.split(repetition).map(str::trim) {
            match name {
                "" | "ASCII" | "ISO IR6" => {}
                "ISO IR87" | "ISO IR14" | "ISO IR13" => jis = true,
                "UNICODE UTF-8" => utf8 = true,
                other => return Err(unsupported(other)),
            }
        }
        match (jis, utf8) {
            (false, false) => Ok(Self::Ascii),
            (true, false) => Ok(Self::Iso2022Jp),
            (false, true) => Ok(Self::Utf8),
            (true, true) => Err(unsupported(raw)),
        }
    }

    /// The MSH-18 repetitions that declare this character set (`["", "ISO IR87"]` for JAHIS).
    pub fn msh18(self) -> &'static [&'static str] {
        match self {
            Self::Ascii => &[],
            Self::Iso2022Jp => &["", "ISO IR87"],
            Self::Utf8 => &["UNICODE UTF-8"],
        }
    }

    /// The MSH-20 alternate character set handling scheme that goes with it (table 0356).
    pub fn msh20(self) -> Option<&'static str> {
        match self {
            Self::Iso2022Jp => Some("ISO 2022-1994"),
            Self::Ascii | Self::Utf8 => None,
        }
    }
}

fn unsupported(name: &str) -> Hl7Error {
    // Bounded: MSH-18 comes from the peer.
    Hl7Error::UnsupportedCharset { name: name.chars().take(40).collect() }
}

/// Reads the character set from MSH-18 of the raw message.
///
/// Only the bytes in single-byte (ASCII or JIS X 0201 Roman) state count, so kanji in MSH-3 to
/// MSH-17 — whose bytes may look like `|` or `^` — do not shift the field count. A UTF-8 byte
/// order mark before `MSH` is skipped.
pub fn detect(bytes: &[u8]) -> Result<Charset> {
    let bytes = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    if !bytes.starts_with(b"MSH") {
        return Err(Hl7Error::NotAMessage);
    }
    let field_separator = *bytes
        .get(3)
        .filter(|b| b.is_ascii_punctuation())
        .ok_or(Hl7Error::InvalidDelimiters { reason: "MSH-1 is not a printable ascii punctuation character" })?;
    let repetition = *bytes.get(5).filter(|b| b.is_ascii_punctuation() && **b != field_separator).ok_or(
        Hl7Error::InvalidDelimiters { reason: "MSH-2 needs at least the component and repetition characters" },
    )?;

    // ISO 2022 state: whether bytes are single-byte characters (delimiters can only be those).
    let mut single = true;
    let mut field = 2;
    let mut msh18 = Vec::new();
    let mut i = 4;
    while let Some(&b) = bytes.get(i) {
        if b == b'\r' || b == b'\n' {
            break;
        }
        if b == ESC {
            let designation = &bytes[i + 1..bytes.len().min(i + 4)];
            let (len, to_single) = match designation {
                [b'(', b'B' | b'J', ..] => (3, true),
                [b'(', b'I', ..] => (3, false),
                [b'$', b'@' | b'B', ..] => (3, false),
                [b'$', b'(', b'D'] => (4, false),
                _ => (1, single),
            };
            single = to_single;
            if field == 18 && !single {
                return Err(unsupported("(non-ascii)"));
            }
            i += len;
            continue;
        }
        if single && b == field_separator {
            field += 1;
            if field > 18 {
                break;
            }
        } else if field == 18 {
            if !single || !b.is_ascii() {
                return Err(unsupported("(non-ascii)"));
            }
            msh18.push(b);
        }
        i += 1;
    }
    // Only ASCII bytes were collected.
    let msh18 = String::from_utf8(msh18).map_err(|_| unsupported("(non-ascii)"))?;
    Charset::from_msh18(&msh18, char::from(repetition))
}

/// Decodes a raw message in the character set its MSH-18 declares (see [`detect`]).
///
/// Borrows when the bytes already are the text (ASCII, or UTF-8 without a byte order mark).
pub fn decode(bytes: &[u8]) -> Result<Cow<'_, str>> {
    decode_as(bytes, detect(bytes)?)
}

/// Decodes bytes in a given character set, for a lab configured to one whatever it declares.
///
/// ASCII text that holds ISO 2022 escape sequences is read as ISO-2022-JP: senders that leave
/// MSH-18 empty but still write kanji exist, and ISO-2022-JP is a superset of ASCII.
pub fn decode_as(bytes: &[u8], charset: Charset) -> Result<Cow<'_, str>> {
    match charset {
        Charset::Utf8 => {
            let (skipped, body) = match bytes.strip_prefix(UTF8_BOM) {
                Some(body) => (UTF8_BOM.len(), body),
                None => (0, bytes),
            };
            std::str::from_utf8(body)
                .map(Cow::Borrowed)
                .map_err(|e| Hl7Error::MalformedText { charset: charset.name(), offset: skipped + e.valid_up_to() })
        }
        Charset::Ascii | Charset::Iso2022Jp => {
            if let Some(offset) = bytes.iter().position(|b| !b.is_ascii()) {
                return Err(Hl7Error::MalformedText { charset: charset.name(), offset });
            }
            if !bytes.contains(&ESC) {
                // Pure ASCII (checked above), so this cannot fail.
                return std::str::from_utf8(bytes)
                    .map(Cow::Borrowed)
                    .map_err(|e| Hl7Error::MalformedText { charset: charset.name(), offset: e.valid_up_to() });
            }
            decode_iso_2022_jp(bytes).map(Cow::Owned)
        }
    }
}

fn decode_iso_2022_jp(bytes: &[u8]) -> Result<String> {
    let mut decoder = ISO_2022_JP.new_decoder_without_bom_handling();
    let capacity = decoder.max_utf8_buffer_length_without_replacement(bytes.len()).unwrap_or(bytes.len());
    let mut out = String::with_capacity(capacity);
    let mut consumed = 0;
    loop {
        let (result, read) = decoder.decode_to_string_without_replacement(&bytes[consumed..], &mut out, true);
        consumed += read;
        match result {
            DecoderResult::InputEmpty => return Ok(out),
            DecoderResult::OutputFull => out.reserve(bytes.len() - consumed + 16),
            DecoderResult::Malformed(bad, after) => {
                let offset = consumed.saturating_sub(usize::from(bad) + usize::from(after));
                return Err(Hl7Error::MalformedText { charset: Charset::Iso2022Jp.name(), offset });
            }
        }
    }
}

/// Encodes text in a character set; a character the set cannot hold is an error.
///
/// ISO-2022-JP output returns to ASCII before every ASCII character (so before every delimiter
/// and segment terminator) and at the end, as the WHATWG encoder does. Only JIS X 0208 is
/// written (see [`Charset::Iso2022Jp`] and the module notes on mappings): half-width katakana
/// become their full-width forms (JIS X 0208 has no half-width kana), the JIS-standard Unicode
/// forms of seven characters are accepted, and ESC, SO and SI are refused.
pub fn encode(text: &str, charset: Charset) -> Result<Cow<'_, [u8]>> {
    let bytes = text.as_bytes();
    match charset {
        Charset::Utf8 => Ok(Cow::Borrowed(bytes)),
        Charset::Ascii => match text.char_indices().find(|(_, c)| !c.is_ascii()) {
            None => Ok(Cow::Borrowed(bytes)),
            Some((offset, c)) => {
                Err(Hl7Error::Unmappable { charset: charset.name(), code_point: u32::from(c), offset })
            }
        },
        Charset::Iso2022Jp => {
            if text.is_ascii() && !bytes.iter().any(|b| matches!(*b, 0x0E | 0x0F | ESC)) {
                return Ok(Cow::Borrowed(bytes));
            }
            encode_iso_2022_jp(text).map(Cow::Owned)
        }
    }
}

/// Encodes a message in the character set its own MSH-18 declares: the wire form of a
/// [`crate::MessageBuilder`] output (a JAHIS message built with `~ISO IR87` goes out as
/// ISO-2022-JP, one built with `UNICODE UTF-8` as UTF-8).
pub fn encode_declared(text: &str) -> Result<Cow<'_, [u8]>> {
    // `detect` reads MSH-18 from bytes; the UTF-8 bytes of kanji are all >= 0x80, so they are
    // never mistaken for a delimiter.
    encode(text, detect(text.as_bytes())?)
}

/// Unicode characters that the JIS X 0208 standard mapping (JIS X 0221, used by Java and
/// Python, and by many lab systems) gives to a JIS code which the WHATWG index, following
/// Windows-31J, gives to another character. Both name the same JIS character, so they are
/// written as the WHATWG form; reading gives the WHATWG form back.
const JIS_STANDARD_FORMS: [(char, char); 7] = [
    ('\u{301C}', '\u{FF5E}'), // WAVE DASH 〜, JIS 0x2141
    ('\u{2016}', '\u{2225}'), // DOUBLE VERTICAL LINE, JIS 0x2142
    ('\u{2212}', '\u{FF0D}'), // MINUS SIGN, JIS 0x215D
    ('\u{00A2}', '\u{FFE0}'), // CENT SIGN, JIS 0x2171
    ('\u{00A3}', '\u{FFE1}'), // POUND SIGN, JIS 0x2172
    ('\u{00AC}', '\u{FFE2}'), // NOT SIGN, JIS 0x224C
    ('\u{2014}', '\u{2015}'), // EM DASH, JIS 0x213D
];

fn encode_iso_2022_jp(text: &str) -> Result<Vec<u8>> {
    let windows_form = |c: char| JIS_STANDARD_FORMS.iter().find(|(jis, _)| *jis == c).map(|(_, w)| *w);
    // Character for character, so character indices are the same in both texts.
    let source: Cow<'_, str> = if text.chars().any(|c| windows_form(c).is_some()) {
        Cow::Owned(text.chars().map(|c| windows_form(c).unwrap_or(c)).collect())
    } else {
        Cow::Borrowed(text)
    };
    let unmappable = |char_index: usize| {
        let (offset, c) = text.char_indices().nth(char_index).unwrap_or((0, '\u{FFFD}'));
        Hl7Error::Unmappable { charset: Charset::Iso2022Jp.name(), code_point: u32::from(c), offset }
    };

    let mut encoder = ISO_2022_JP.new_encoder();
    let capacity = encoder.max_buffer_length_from_utf8_without_replacement(source.len()).unwrap_or(source.len());
    let mut out = Vec::with_capacity(capacity);
    let mut consumed = 0;
    loop {
        let (result, read) = encoder.encode_from_utf8_to_vec_without_replacement(&source[consumed..], &mut out, true);
        consumed += read;
        match result {
            EncoderResult::InputEmpty => break,
            EncoderResult::OutputFull => out.reserve(3 * (source.len() - consumed) + 16),
            // The encoder reports ESC, SO and SI as U+FFFD: take the character from the text.
            EncoderResult::Unmappable(_) => return Err(unmappable(source[..consumed].chars().count() - 1)),
        }
    }
    match first_outside_jis_x_0208(&out) {
        Some(char_index) => Err(unmappable(char_index)),
        None => Ok(out),
    }
}

/// The index of the first character written in a row that JIS X 0208 leaves empty: the WHATWG
/// index fills row 13 (NEC special characters such as ① and ㈱) and rows 89–92 (NEC-selected IBM
/// extensions such as 髙 and 﨑) from Windows-31J. `ISO IR87` is JIS X 0208 (rows 1–8, 16–84),
/// so a receiver holding to it cannot read them: refused when writing, accepted when reading.
fn first_outside_jis_x_0208(bytes: &[u8]) -> Option<usize> {
    let (mut i, mut chars, mut double) = (0, 0, false);
    while let Some(&b) = bytes.get(i) {
        if b == ESC {
            // The encoder writes only the three-byte designations ESC ( B, ESC ( J and ESC $ B.
            double = bytes.get(i + 1) == Some(&b'$');
            i += 3;
            continue;
        }
        if double {
            if (0x29..=0x2F).contains(&b) || b >= 0x75 {
                return Some(chars);
            }
            i += 2;
        } else {
            i += 1;
        }
        chars += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const JAHIS_MSH: &str = "MSH|^~\\&|HIS123|SEND|GW|RCV|20111220103059.0000||OUL^R22^OUL_R22|20111220131032|P|2.5||||||~ISO IR87||ISO 2022-1994\r";

    #[test]
    fn msh18_values() {
        assert_eq!(Charset::from_msh18("", '~').unwrap(), Charset::Ascii);
        assert_eq!(Charset::from_msh18("ASCII", '~').unwrap(), Charset::Ascii);
        assert_eq!(Charset::from_msh18("~ISO IR87", '~').unwrap(), Charset::Iso2022Jp);
        assert_eq!(Charset::from_msh18("ISO IR6~ISO IR87~ISO IR13", '~').unwrap(), Charset::Iso2022Jp);
        assert_eq!(Charset::from_msh18("UNICODE UTF-8", '~').unwrap(), Charset::Utf8);
        for bad in ["8859/1", "~ISO IR159", "UNICODE UTF-8~ISO IR87", "SJIS"] {
            assert!(matches!(Charset::from_msh18(bad, '~'), Err(Hl7Error::UnsupportedCharset { .. })), "{bad}");
        }
        assert_eq!(Charset::Iso2022Jp.msh18().join("~"), "~ISO IR87");
        assert_eq!(Charset::Iso2022Jp.msh20(), Some("ISO 2022-1994"));
    }

    #[test]
    fn detect_reads_msh18() {
        assert_eq!(detect(JAHIS_MSH.as_bytes()).unwrap(), Charset::Iso2022Jp);
        assert_eq!(detect(b"MSH|^~\\&|A|B\rPID|1\r").unwrap(), Charset::Ascii);
        let utf8 = "MSH|^~\\&|A|B|C|D|20240101||OML^O33^OML_O33|1|P|2.5||||||UNICODE UTF-8\r";
        assert_eq!(detect(utf8.as_bytes()).unwrap(), Charset::Utf8);
        let bom = [UTF8_BOM, utf8.as_bytes()].concat();
        assert_eq!(detect(&bom).unwrap(), Charset::Utf8);
        assert!(matches!(detect(b"PID|1"), Err(Hl7Error::NotAMessage)));
        assert!(matches!(detect(b"MSH|^"), Err(Hl7Error::InvalidDelimiters { .. })));
    }

    #[test]
    fn detect_skips_kanji_bytes_that_look_like_delimiters() {
        // MSH-4 holds kanji whose JIS X 0208 bytes look like delimiters: 糖 is 0x457C ('E|'),
        // 抑 0x4D5E ('M^'), 怒 0x455C ('E\\').
        let text = "MSH|^~\\&|A|血糖抑制怒|B|C|20240101||OUL^R22^OUL_R22|1|P|2.5||||||~ISO IR87||ISO 2022-1994\r";
        let wire = encode(text, Charset::Iso2022Jp).unwrap();
        assert!(wire.windows(2).any(|w| w == b"E|") && wire.windows(2).any(|w| w == b"M^"));
        assert_eq!(detect(&wire).unwrap(), Charset::Iso2022Jp);
        assert_eq!(decode(&wire).unwrap(), text);
    }

    #[test]
    fn japanese_names_round_trip_in_iso_2022_jp() {
        for name in ["山田 太郎", "ヤマダ タロウ", "山田\u{3000}太郎", "患者^太郎~カンジャ^タロウ"]
        {
            let text = format!("{JAHIS_MSH}PID|1||1||{name}\r");
            let wire = encode(&text, Charset::Iso2022Jp).unwrap();
            assert!(wire.is_ascii(), "ISO-2022-JP is 7-bit");
            assert!(wire.windows(3).any(|w| w == b"\x1B$B"), "kanji are reached by ESC $ B");
            assert!(wire.ends_with(b"\r"));
            assert_eq!(decode(&wire).unwrap(), text);
        }
        // 山田 is 0x3B33 0x4544 in JIS X 0208.
        assert_eq!(&*encode("山田", Charset::Iso2022Jp).unwrap(), b"\x1B$B\x3B\x33\x45\x44\x1B(B");
    }

    #[test]
    fn japanese_names_round_trip_in_utf8() {
        let text = "MSH|^~\\&|||||||ORU^R01^ORU_R01|1|P|2.5||||||UNICODE UTF-8\rPID|1||1||山田^太郎~ヤマダ^タロウ\r";
        let wire = encode(text, Charset::Utf8).unwrap();
        assert!(matches!(wire, Cow::Borrowed(_)));
        assert!(matches!(decode(&wire).unwrap(), Cow::Borrowed(_)));
        assert_eq!(decode(&wire).unwrap(), text);
        let bom = [UTF8_BOM, &wire].concat();
        assert_eq!(decode(&bom).unwrap(), text);
    }

    #[test]
    fn unmappable_is_an_error_not_a_question_mark() {
        // 𠮷 (U+20BB7) is outside JIS X 0208; ESC would corrupt the ISO 2022 state.
        let err = encode("吉田𠮷", Charset::Iso2022Jp).unwrap_err();
        assert!(matches!(err, Hl7Error::Unmappable { code_point: 0x20BB7, offset: 6, .. }), "{err:?}");
        let err = encode("a\u{1B}b", Charset::Iso2022Jp).unwrap_err();
        assert!(matches!(err, Hl7Error::Unmappable { code_point: 0x1B, offset: 1, .. }), "{err:?}");
        let err = encode("ab山", Charset::Ascii).unwrap_err();
        assert!(matches!(err, Hl7Error::Unmappable { code_point: 0x5C71, offset: 2, .. }), "{err:?}");
    }

    #[test]
    fn malformed_input_is_an_error() {
        // A CR inside a JIS X 0208 run (the sender forgot ESC ( B before the segment end).
        let wire = b"MSH|^~\\&|||||||||||||||~ISO IR87\rPID|1||\x1B$B\x3B\x33\r";
        assert!(matches!(decode(wire), Err(Hl7Error::MalformedText { charset: "iso-2022-jp", .. })));
        let err = decode_as(b"MSH|\x80", Charset::Ascii).unwrap_err();
        assert!(matches!(err, Hl7Error::MalformedText { offset: 4, .. }));
        let err = decode_as(b"MSH|\xE5\xB1", Charset::Utf8).unwrap_err();
        assert!(matches!(err, Hl7Error::MalformedText { offset: 4, .. }));
    }

    #[test]
    fn encode_declared_follows_msh18() {
        let iso = format!("{JAHIS_MSH}PID|1||1||山田^太郎\r");
        let wire = encode_declared(&iso).unwrap();
        assert!(wire.is_ascii() && wire.windows(3).any(|w| w == b"\x1B$B"));
        assert_eq!(decode(&wire).unwrap(), iso);
        let utf8 = "MSH|^~\\&|||||||ORU^R01^ORU_R01|1|P|2.5||||||UNICODE UTF-8\rPID|1||1||山田\r";
        assert_eq!(&*encode_declared(utf8).unwrap(), utf8.as_bytes());
        let ascii = "MSH|^~\\&|||||||ORU^R01^ORU_R01|1|P|2.5\rPID|1||1||山田\r";
        assert!(matches!(encode_declared(ascii), Err(Hl7Error::Unmappable { .. })));
    }

    #[test]
    fn undeclared_iso_2022_jp_is_read() {
        let wire = encode("MSH|^~\\&|山田\r", Charset::Iso2022Jp).unwrap();
        assert_eq!(detect(&wire).unwrap(), Charset::Ascii);
        assert_eq!(decode(&wire).unwrap(), "MSH|^~\\&|山田\r");
    }

    #[test]
    fn half_width_katakana_become_full_width() {
        let wire = encode("ﾔﾏﾀﾞ", Charset::Iso2022Jp).unwrap();
        assert_eq!(decode_as(&wire, Charset::Iso2022Jp).unwrap(), "ヤマタ゛");
    }

    #[test]
    fn jis_standard_and_windows_forms_of_the_same_character() {
        // 〜 as typed on macOS (U+301C) and on Windows (U+FF5E) are both JIS 0x2141.
        let standard = encode("9時〜17時", Charset::Iso2022Jp).unwrap();
        assert_eq!(standard, encode("9時～17時", Charset::Iso2022Jp).unwrap());
        assert_eq!(decode_as(&standard, Charset::Iso2022Jp).unwrap(), "9時～17時");
        for (jis, windows) in JIS_STANDARD_FORMS {
            assert_eq!(
                encode(&jis.to_string(), Charset::Iso2022Jp).unwrap(),
                encode(&windows.to_string(), Charset::Iso2022Jp).unwrap()
            );
        }
    }

    #[test]
    fn windows_extensions_are_refused_when_writing_and_read_when_reading() {
        for (text, code_point, offset) in
            [("髙橋", 0x9AD9, 0), ("山﨑", 0xFA11, 3), ("①", 0x2460, 0), ("(株)㈱", 0x3231, 5)]
        {
            let err = encode(text, Charset::Iso2022Jp).unwrap_err();
            assert!(
                matches!(err, Hl7Error::Unmappable { code_point: c, offset: o, .. } if c == code_point && o == offset),
                "{text}: {err:?}"
            );
        }
        // 髙 is 0x7C62 in Windows-31J's NEC-selected IBM rows; a Windows sender may write it.
        assert_eq!(decode_as(b"\x1B$B\x7C\x62\x36\x36\x1B(B", Charset::Iso2022Jp).unwrap(), "髙橋");
    }
}
