//! A zero-copy view of one HL7 v2 message (HL7 v2.5 chapter 2, §2.5–§2.6).
//!
//! Parsing splits the text once into segments and fields and keeps `&str` slices of it: two
//! allocations per message (the segment and field tables), none per field. Repetitions,
//! components and sub-components are split on access, without allocating, and every accessor
//! returns raw slices; [`Field::unescape`] and friends decode escape sequences only when asked.
//!
//! Positions are 1-based as in the standard. An absent field, repetition or component reads as
//! empty, as HL7 treats "not present" and "empty" alike (§2.5.3); `""` is the explicit null.

use std::borrow::Cow;
use std::fmt;

use crate::charset::Charset;
use crate::delimiters::Delimiters;
use crate::error::{Hl7Error, Result};
use crate::escape::unescape;
use crate::types::{ControlId, Location, MessageType};

/// A parsed message borrowing the text it was parsed from.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    text: &'a str,
    delimiters: Delimiters,
    segments: Vec<SegmentEntry<'a>>,
    /// The fields of all segments in order; a segment's fields are a contiguous run, field 0
    /// being the segment id.
    fields: Vec<&'a str>,
}

#[derive(Debug, Clone, Copy)]
struct SegmentEntry<'a> {
    raw: &'a str,
    first_field: usize,
    field_count: usize,
}

/// Segments whose field 1 is the field separator itself and field 2 the encoding characters
/// (MSH §2.14.9, and the batch headers BHS §2.14.2 and FHS §2.14.5).
fn is_header(id: &str) -> bool {
    matches!(id, "MSH" | "BHS" | "FHS")
}

fn valid_segment_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 3 && b[0].is_ascii_uppercase() && b[1..].iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

impl<'a> Message<'a> {
    /// Parses a message: delimiters from MSH-1/MSH-2, segments ended by CR (LF and CRLF are
    /// accepted too, §2.5.1 asks for CR alone), empty lines skipped.
    pub fn parse(text: &'a str) -> Result<Self> {
        if !text.starts_with("MSH") {
            return Err(Hl7Error::NotAMessage);
        }
        let header = text.split(['\r', '\n']).next().unwrap_or_default();
        let field = header[3..].chars().next().ok_or(Hl7Error::InvalidDelimiters { reason: "MSH-1 is missing" })?;
        let encoding = header[3 + field.len_utf8()..].split(field).next().unwrap_or_default();
        let delimiters = Delimiters::new(field, encoding)?;
        let fs = delimiters.field_byte();

        // Size the field table in one pass: one slot per separator, plus MSH-1 and a last segment
        // without its CR (a batch with more header segments reallocates once).
        let separators = text.bytes().filter(|b| *b == fs || *b == b'\r' || *b == b'\n').count();
        let mut fields = Vec::with_capacity(separators + 2);
        let mut segments = Vec::new();
        for (line, raw) in text.split(['\r', '\n']).filter(|s| !s.is_empty()).enumerate() {
            let first_field = fields.len();
            let mut parts = raw.split(field);
            let id = parts.next().unwrap_or_default();
            if !valid_segment_id(id) {
                return Err(Hl7Error::InvalidSegment { line: line + 1 });
            }
            fields.push(id);
            if is_header(id) {
                // The quirk of §2.14.9.1: MSH-1 is the separator after the id, not a value
                // between two separators; MSH-2 follows it. Only MSH, BHS and FHS have it.
                if raw.len() > 3 {
                    fields.push(&raw[3..4]);
                }
            }
            fields.extend(parts);
            segments.push(SegmentEntry { raw, first_field, field_count: fields.len() - first_field });
        }
        Ok(Self { text, delimiters, segments, fields })
    }

    /// The text this message was parsed from.
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// The delimiters of this message.
    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    /// All segments in order.
    pub fn segments(&self) -> impl ExactSizeIterator<Item = Segment<'_, 'a>> + '_ {
        (0..self.segments.len()).map(move |i| self.segment_at(i))
    }

    /// The number of segments.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The first segment with this id.
    pub fn segment(&self, id: &str) -> Option<Segment<'_, 'a>> {
        self.segments().find(|s| s.id() == id)
    }

    /// Every segment with this id, in order; `enumerate() + 1` gives the occurrence that ERR-2
    /// reports.
    pub fn segments_named<'s, 'i>(&'s self, id: &'i str) -> impl Iterator<Item = Segment<'s, 'a>> + use<'s, 'a, 'i> {
        self.segments().filter(move |s| s.id() == id)
    }

    /// Field `n` of the first segment with this id, if there is such a segment.
    pub fn field(&self, segment: &str, n: usize) -> Option<Field<'a>> {
        self.segment(segment).map(|s| s.field(n))
    }

    /// The MSH segment (always the first).
    pub fn msh(&self) -> Segment<'_, 'a> {
        self.segment_at(0)
    }

    /// MSH-10, the message control id.
    pub fn control_id(&self) -> Result<ControlId> {
        let raw = self.msh().field(10).unescape();
        if raw.is_empty() {
            return Err(Hl7Error::MissingField { field: "MSH-10" });
        }
        ControlId::new(&raw)
    }

    /// MSH-9, the message type.
    pub fn message_type(&self) -> Result<MessageType> {
        let raw = self.msh().field(9).raw();
        if raw.is_empty() {
            return Err(Hl7Error::MissingField { field: "MSH-9" });
        }
        MessageType::parse(raw, self.delimiters.component())
    }

    /// MSH-12.1, the version id (`2.5`), if given.
    pub fn version(&self) -> Option<&'a str> {
        Some(self.msh().field(12).component(1).raw()).filter(|v| !v.is_empty())
    }

    /// The character set named by MSH-18 (§2.14.9.18, table 0211).
    pub fn charset(&self) -> Result<Charset> {
        Charset::from_msh18(self.msh().field(18).raw(), self.delimiters.repetition())
    }

    /// The raw value at a location; `None` when its segment is absent. A location without a
    /// repetition or component gives the whole field; with a component, repetition 1 is implied.
    pub fn at(&self, location: &Location) -> Option<&'a str> {
        let segment = self.segments_named(location.segment_id()).nth(location.segment_occurrence().checked_sub(1)?)?;
        let Some(n) = location.field_position() else { return Some(segment.raw()) };
        let field = segment.field(n);
        if location.field_repetition().is_none() && location.component_number().is_none() {
            return Some(field.raw());
        }
        let repetition = field.repetition(location.field_repetition().unwrap_or(1));
        let Some(c) = location.component_number() else { return Some(repetition.raw()) };
        let component = repetition.component(c);
        Some(match location.subcomponent_number() {
            Some(s) => component.subcomponent(s).raw(),
            None => component.raw(),
        })
    }

    /// The raw value at a terse path such as `PID-5-1` or `OBX(2)-5` (see [`Location`]).
    pub fn get(&self, path: &str) -> Result<Option<&'a str>> {
        Ok(self.at(&path.parse()?))
    }

    fn segment_at(&self, index: usize) -> Segment<'_, 'a> {
        let entry = self.segments[index];
        Segment {
            raw: entry.raw,
            index,
            fields: &self.fields[entry.first_field..entry.first_field + entry.field_count],
            delimiters: self.delimiters,
        }
    }
}

/// Writes the message back from its segments and fields, each segment ended by CR (§2.5.1):
/// byte-identical to the input once its line ends are CR and empty lines are gone.
impl fmt::Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for segment in self.segments() {
            segment.write_to(f)?;
            f.write_str("\r")?;
        }
        Ok(())
    }
}

/// One segment of a parsed message.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'m, 'a> {
    raw: &'a str,
    index: usize,
    fields: &'m [&'a str],
    delimiters: Delimiters,
}

impl<'m, 'a> Segment<'m, 'a> {
    /// The segment id (`PID`).
    pub fn id(&self) -> &'a str {
        self.fields[0]
    }

    /// The segment's text, without its terminator.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The 0-based position of the segment in the message.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The number of fields present (the id not counted; for MSH, MSH-1 counted).
    pub fn field_count(&self) -> usize {
        self.fields.len() - 1
    }

    /// Field `n` (1-based); empty when absent. MSH-1 and MSH-2 come back whole, never split.
    pub fn field(&self, n: usize) -> Field<'a> {
        let raw = if n == 0 { "" } else { self.fields.get(n).copied().unwrap_or_default() };
        let atomic = is_header(self.id()) && (n == 1 || n == 2);
        Field { raw, delimiters: self.delimiters, atomic }
    }

    /// The fields present, from field 1.
    pub fn fields(&self) -> impl ExactSizeIterator<Item = Field<'a>> + 'm {
        let header = is_header(self.id());
        let delimiters = self.delimiters;
        self.fields[1..].iter().copied().enumerate().map(move |(i, raw)| Field {
            raw,
            delimiters,
            atomic: header && i < 2,
        })
    }

    fn write_to(&self, out: &mut impl fmt::Write) -> fmt::Result {
        let separator = self.delimiters.field();
        out.write_str(self.id())?;
        let rest = if is_header(self.id()) && self.fields.len() > 1 {
            // MSH-1 is the separator itself, so it is written once, not between separators.
            out.write_str(self.fields[1])?;
            &self.fields[2..]
        } else {
            &self.fields[1..]
        };
        for (i, value) in rest.iter().enumerate() {
            if i > 0 || !is_header(self.id()) {
                out.write_char(separator)?;
            }
            out.write_str(value)?;
        }
        Ok(())
    }
}

/// Splits `raw` on `separator` (or not at all without one), yielding nothing for an empty value.
fn split_nonempty(raw: &str, separator: Option<char>) -> impl Iterator<Item = &str> {
    let (mut parts, mut whole) = (None, None);
    if !raw.is_empty() {
        match separator {
            Some(c) => parts = Some(raw.split(c)),
            None => whole = Some(raw),
        }
    }
    parts.into_iter().flatten().chain(whole)
}

/// The `n`th (1-based) part of `raw` split on `separator`, empty when absent.
fn nth_part(raw: &str, separator: Option<char>, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    match separator {
        Some(c) => raw.split(c).nth(n - 1).unwrap_or_default(),
        None if n == 1 => raw,
        None => "",
    }
}

macro_rules! value_methods {
    () => {
        /// The raw text, escape sequences included.
        pub fn raw(&self) -> &'a str {
            self.raw
        }

        /// The text with escape sequences decoded (see [`crate::escape::unescape`]); borrowed when
        /// there are none.
        pub fn unescape(&self) -> Cow<'a, str> {
            unescape(self.raw, &self.delimiters)
        }

        /// Whether the value is empty (absent).
        pub fn is_empty(&self) -> bool {
            self.raw.is_empty()
        }

        /// Whether the value is the explicit null `""` (§2.5.3: delete the value held).
        pub fn is_null(&self) -> bool {
            self.raw == "\"\""
        }
    };
}

/// One field, all repetitions included.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a> {
    raw: &'a str,
    delimiters: Delimiters,
    /// MSH-1 and MSH-2, whose characters are delimiters and never split.
    atomic: bool,
}

impl<'a> Field<'a> {
    value_methods!();

    fn separator(&self, c: char) -> Option<char> {
        (!self.atomic).then_some(c)
    }

    /// The repetitions (none for an empty field).
    pub fn repetitions(&self) -> impl Iterator<Item = Repetition<'a>> + use<'a> {
        let (delimiters, atomic) = (self.delimiters, self.atomic);
        split_nonempty(self.raw, self.separator(self.delimiters.repetition())).map(move |raw| Repetition {
            raw,
            delimiters,
            atomic,
        })
    }

    /// Repetition `n` (1-based); empty when absent.
    pub fn repetition(&self, n: usize) -> Repetition<'a> {
        let raw = nth_part(self.raw, self.separator(self.delimiters.repetition()), n);
        Repetition { raw, delimiters: self.delimiters, atomic: self.atomic }
    }

    /// Component `n` of the first repetition; the common case of a non-repeating field.
    pub fn component(&self, n: usize) -> Component<'a> {
        self.repetition(1).component(n)
    }

    /// The components of the first repetition.
    pub fn components(&self) -> impl Iterator<Item = Component<'a>> + use<'a> {
        self.repetition(1).components()
    }
}

/// One repetition of a field.
#[derive(Debug, Clone, Copy)]
pub struct Repetition<'a> {
    raw: &'a str,
    delimiters: Delimiters,
    atomic: bool,
}

impl<'a> Repetition<'a> {
    value_methods!();

    fn separator(&self) -> Option<char> {
        (!self.atomic).then_some(self.delimiters.component())
    }

    /// The components (none for an empty repetition).
    pub fn components(&self) -> impl Iterator<Item = Component<'a>> + use<'a> {
        let (delimiters, atomic) = (self.delimiters, self.atomic);
        split_nonempty(self.raw, self.separator()).map(move |raw| Component { raw, delimiters, atomic })
    }

    /// Component `n` (1-based); empty when absent.
    pub fn component(&self, n: usize) -> Component<'a> {
        Component { raw: nth_part(self.raw, self.separator(), n), delimiters: self.delimiters, atomic: self.atomic }
    }
}

/// One component of a repetition.
#[derive(Debug, Clone, Copy)]
pub struct Component<'a> {
    raw: &'a str,
    delimiters: Delimiters,
    atomic: bool,
}

impl<'a> Component<'a> {
    value_methods!();

    fn separator(&self) -> Option<char> {
        // Without a sub-component separator in MSH-2 a component is a single sub-component.
        if self.atomic { None } else { self.delimiters.subcomponent() }
    }

    /// The sub-components (none for an empty component).
    pub fn subcomponents(&self) -> impl Iterator<Item = SubComponent<'a>> + use<'a> {
        let delimiters = self.delimiters;
        split_nonempty(self.raw, self.separator()).map(move |raw| SubComponent { raw, delimiters })
    }

    /// Sub-component `n` (1-based); empty when absent.
    pub fn subcomponent(&self, n: usize) -> SubComponent<'a> {
        SubComponent { raw: nth_part(self.raw, self.separator(), n), delimiters: self.delimiters }
    }
}

/// One sub-component of a component.
#[derive(Debug, Clone, Copy)]
pub struct SubComponent<'a> {
    raw: &'a str,
    delimiters: Delimiters,
}

impl<'a> SubComponent<'a> {
    value_methods!();
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUL: &str = "MSH|^~\\&|HIS123|SEND|GW|RCV|20111220103059.0000||OUL^R22^OUL_R22|20111220131032|P|2.5||||||~ISO IR87||ISO 2022-1994\r\
PID|0001||0001000052^^^^PI||患者^太郎^^^^^L^I~カンジャ^タロウ^^^^^L^P||19700405|M\r\
OBX|1|NM|3A016000002327102^A/G比^JC10||1.7||1.2-2.0||||F\r\
OBX|2|NM|3A010000002327101^総蛋白^JC10||7.2|g/dl^g/dl^99XYZ|6.70-8.3||||F\r";

    #[test]
    fn msh_numbering_quirk() {
        let m = Message::parse(OUL).unwrap();
        let msh = m.msh();
        assert_eq!(msh.field(1).raw(), "|");
        assert_eq!(msh.field(2).raw(), "^~\\&");
        // MSH-2 is never split, although it holds the component and repetition separators.
        assert_eq!(msh.field(2).component(1).raw(), "^~\\&");
        assert_eq!(msh.field(2).repetitions().count(), 1);
        assert_eq!(msh.field(2).unescape(), "^~\\&");
        assert_eq!(msh.field(3).raw(), "HIS123");
        assert_eq!(msh.field(9).raw(), "OUL^R22^OUL_R22");
        assert_eq!(msh.field(20).raw(), "ISO 2022-1994");
        assert_eq!(msh.field_count(), 20);
        assert_eq!(m.control_id().unwrap().as_str(), "20111220131032");
        assert_eq!(m.message_type().unwrap().structure(), Some("OUL_R22"));
        assert_eq!(m.version(), Some("2.5"));
        assert_eq!(m.charset().unwrap(), Charset::Iso2022Jp);
    }

    #[test]
    fn repetitions_components_subcomponents() {
        let m = Message::parse(OUL).unwrap();
        let name = m.field("PID", 5).unwrap();
        let reps: Vec<_> = name.repetitions().collect();
        assert_eq!(reps.len(), 2);
        assert_eq!(reps[0].component(1).raw(), "患者");
        assert_eq!(reps[0].component(8).raw(), "I");
        assert_eq!(name.repetition(2).component(2).raw(), "タロウ");
        assert_eq!(name.repetition(3).raw(), "");
        assert_eq!(name.component(9).raw(), "");
        assert_eq!(m.field("PID", 3).unwrap().component(5).raw(), "PI");
        assert_eq!(m.field("PID", 99).unwrap().raw(), "");
        assert!(m.field("PV1", 1).is_none());
        let values: Vec<_> = m.segments_named("OBX").map(|s| s.field(5).raw()).collect();
        assert_eq!(values, ["1.7", "7.2"]);
        assert_eq!(m.get("OBX(2)-6-3").unwrap(), Some("99XYZ"));
        assert_eq!(m.get("PID-5(2)-1").unwrap(), Some("カンジャ"));
        assert_eq!(m.get("PID-5").unwrap(), Some("患者^太郎^^^^^L^I~カンジャ^タロウ^^^^^L^P"));
        assert_eq!(m.get("OBX(3)-5").unwrap(), None);
        assert!(m.get("bad").is_err());
    }

    #[test]
    fn subcomponents_and_escapes() {
        let text = "MSH|^~\\&|A\rNTE|1||a\\T\\b&c\\.br\\d|x&y^z\r";
        let m = Message::parse(text).unwrap();
        let nte = m.segment("NTE").unwrap();
        let c = nte.field(3).component(1);
        assert_eq!(c.subcomponents().map(|s| s.raw()).collect::<Vec<_>>(), ["a\\T\\b", "c\\.br\\d"]);
        assert_eq!(c.subcomponent(1).unescape(), "a&b");
        assert_eq!(c.subcomponent(2).unescape(), "c\nd");
        assert_eq!(nte.field(4).component(1).subcomponent(2).raw(), "y");
        assert!(matches!(nte.field(4).unescape(), Cow::Borrowed(_)));
    }

    #[test]
    fn empty_and_null() {
        let m = Message::parse("MSH|^~\\&\rPID|||\"\"||\r").unwrap();
        let pid = m.segment("PID").unwrap();
        assert!(pid.field(3).is_null());
        assert!(pid.field(2).is_empty());
        assert_eq!(pid.field(2).repetitions().count(), 0);
        assert_eq!(pid.field(2).components().count(), 0);
        assert_eq!(pid.field_count(), 5);
    }

    #[test]
    fn line_ends_are_normalised_on_output() {
        let m = Message::parse("MSH|^~\\&|A|B\r\nPID|1\n\nOBX|1|ST\n").unwrap();
        assert_eq!(m.segment_count(), 3);
        assert_eq!(m.to_string(), "MSH|^~\\&|A|B\rPID|1\rOBX|1|ST\r");
    }

    #[test]
    fn reserialises_byte_identical() {
        let m = Message::parse(OUL).unwrap();
        assert_eq!(m.to_string(), OUL);
        for seg in m.segments() {
            let mut out = String::new();
            seg.write_to(&mut out).unwrap();
            assert_eq!(out, seg.raw());
        }
        let bare = "MSH|^~\\&\r";
        assert_eq!(Message::parse(bare).unwrap().to_string(), bare);
    }

    #[test]
    fn other_delimiters() {
        let m = Message::parse("MSH!@%$*!A@B!\rPID!1!!x@y%z@w!\r").unwrap();
        let pid = m.segment("PID").unwrap();
        assert_eq!(pid.field(3).component(2).raw(), "y");
        assert_eq!(pid.field(3).repetition(2).component(2).raw(), "w");
        assert_eq!(m.msh().field(3).component(2).raw(), "B");
        assert_eq!(m.to_string(), "MSH!@%$*!A@B!\rPID!1!!x@y%z@w!\r");
    }

    #[test]
    fn v27_truncation_character_is_not_split_on() {
        let m = Message::parse("MSH|^~\\&#|A\rOBX|1|ST|||abc#\r").unwrap();
        assert_eq!(m.delimiters().truncation(), Some('#'));
        assert_eq!(m.get("OBX-5-1").unwrap(), Some("abc#"));
    }

    #[test]
    fn parse_errors() {
        assert!(matches!(Message::parse(""), Err(Hl7Error::NotAMessage)));
        assert!(matches!(Message::parse("PID|1"), Err(Hl7Error::NotAMessage)));
        assert!(matches!(Message::parse("MSH"), Err(Hl7Error::InvalidDelimiters { .. })));
        assert!(matches!(Message::parse("MSH|^"), Err(Hl7Error::InvalidDelimiters { .. })));
        assert!(matches!(Message::parse("MSH|^~\\&\rpid|1"), Err(Hl7Error::InvalidSegment { line: 2 })));
        assert!(matches!(Message::parse("MSH|^~\\&\rPIDX|1"), Err(Hl7Error::InvalidSegment { line: 2 })));
        let m = Message::parse("MSH|^~\\&|A").unwrap();
        assert!(matches!(m.control_id(), Err(Hl7Error::MissingField { field: "MSH-10" })));
        assert!(matches!(m.message_type(), Err(Hl7Error::MissingField { field: "MSH-9" })));
        assert_eq!(m.version(), None);
        assert_eq!(m.charset().unwrap(), Charset::Ascii);
    }
}
