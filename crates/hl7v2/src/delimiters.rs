//! The delimiters of one message, read from MSH-1 and MSH-2 (HL7 v2.5 §2.5.4, §2.14.9.1–2).

use crate::error::{Hl7Error, Result};

/// The delimiters of one message: field, component, repetition, escape, sub-component and the
/// v2.7 truncation character.
///
/// All are single ASCII bytes, so splitting UTF-8 text on them never cuts a character: ASCII
/// bytes never occur inside a multi-byte UTF-8 sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delimiters {
    field: u8,
    component: u8,
    repetition: u8,
    escape: Option<u8>,
    subcomponent: Option<u8>,
    truncation: Option<u8>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Self::STANDARD
    }
}

impl Delimiters {
    /// The recommended delimiters `|^~\&`, used by JAHIS and virtually every sender.
    pub const STANDARD: Self = Self {
        field: b'|',
        component: b'^',
        repetition: b'~',
        escape: Some(b'\\'),
        subcomponent: Some(b'&'),
        truncation: None,
    };

    /// Delimiters from MSH-1 (`field`) and MSH-2 (`encoding`: component, repetition, escape,
    /// sub-component and, from v2.7, truncation, in that order).
    ///
    /// HL7 v2.5 §2.14.9.2 asks for four encoding characters; fewer (at least component and
    /// repetition) are tolerated as some senders drop the ones they never use, and a fifth is the
    /// v2.7 truncation character (§2.5.5.2 of v2.7), accepted and never split on.
    pub fn new(field: char, encoding: &str) -> Result<Self> {
        let invalid = |reason| Hl7Error::InvalidDelimiters { reason };
        let field = delimiter_byte(field).ok_or(invalid("MSH-1 is not a printable ascii punctuation character"))?;
        let enc = encoding.as_bytes();
        if enc.len() < 2 {
            return Err(invalid("MSH-2 needs at least the component and repetition characters"));
        }
        if enc.len() > 5 {
            return Err(invalid("MSH-2 has more than five encoding characters"));
        }
        if !encoding.chars().all(|c| delimiter_byte(c).is_some()) {
            return Err(invalid("MSH-2 holds a character that cannot be a delimiter"));
        }
        let all = std::iter::once(field).chain(enc.iter().copied());
        for (i, b) in all.clone().enumerate() {
            if all.clone().skip(i + 1).any(|other| other == b) {
                return Err(invalid("the delimiters are not distinct"));
            }
        }
        Ok(Self {
            field,
            component: enc[0],
            repetition: enc[1],
            escape: enc.get(2).copied(),
            subcomponent: enc.get(3).copied(),
            truncation: enc.get(4).copied(),
        })
    }

    /// The field separator (MSH-1).
    pub fn field(&self) -> char {
        char::from(self.field)
    }

    /// The component separator.
    pub fn component(&self) -> char {
        char::from(self.component)
    }

    /// The repetition separator.
    pub fn repetition(&self) -> char {
        char::from(self.repetition)
    }

    /// The escape character, if MSH-2 defines one.
    pub fn escape(&self) -> Option<char> {
        self.escape.map(char::from)
    }

    /// The sub-component separator, if MSH-2 defines one.
    pub fn subcomponent(&self) -> Option<char> {
        self.subcomponent.map(char::from)
    }

    /// The v2.7 truncation character, if MSH-2 defines one.
    pub fn truncation(&self) -> Option<char> {
        self.truncation.map(char::from)
    }

    /// MSH-2 as written: the encoding characters in their order.
    pub fn encoding_characters(&self) -> String {
        [Some(self.component), Some(self.repetition), self.escape, self.subcomponent, self.truncation]
            .into_iter()
            .map_while(|b| b.map(char::from))
            .collect()
    }

    /// Whether `b` is a delimiter or the escape character of this message (not the truncation
    /// character, which only has a meaning inside escape sequences in data we read).
    pub(crate) fn is_special(&self, b: u8) -> bool {
        b == self.field
            || b == self.component
            || b == self.repetition
            || Some(b) == self.escape
            || Some(b) == self.subcomponent
            || Some(b) == self.truncation
    }

    pub(crate) fn field_byte(&self) -> u8 {
        self.field
    }
}

/// A delimiter must be printable ASCII punctuation: not a letter or digit (segment ids and
/// values would become ambiguous), not a space and not a control character (CR ends segments).
fn delimiter_byte(c: char) -> Option<u8> {
    u8::try_from(c).ok().filter(u8::is_ascii_punctuation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_round_trip() {
        let d = Delimiters::new('|', "^~\\&").unwrap();
        assert_eq!(d, Delimiters::STANDARD);
        assert_eq!(d.encoding_characters(), "^~\\&");
        assert_eq!(d.truncation(), None);
    }

    #[test]
    fn v27_truncation_character_is_tolerated() {
        let d = Delimiters::new('|', "^~\\&#").unwrap();
        assert_eq!(d.truncation(), Some('#'));
        assert_eq!(d.encoding_characters(), "^~\\&#");
    }

    #[test]
    fn short_msh2_leaves_escape_and_subcomponent_undefined() {
        let d = Delimiters::new('|', "^~").unwrap();
        assert_eq!((d.escape(), d.subcomponent()), (None, None));
        assert_eq!(d.encoding_characters(), "^~");
    }

    #[test]
    fn rejects_bad_delimiters() {
        for (f, enc) in [('|', "^"), ('|', "^~\\&#$"), ('|', "^^\\&"), ('|', "^|\\&"), ('A', "^~\\&"), ('|', "^~ &")] {
            assert!(matches!(Delimiters::new(f, enc), Err(Hl7Error::InvalidDelimiters { .. })), "{f}{enc}");
        }
    }
}
