//! Building messages: values are kept as given and escaped when the message is written with its
//! delimiters (HL7 v2.5 §2.7), so a builder never holds half-escaped text.

use crate::delimiters::Delimiters;
use crate::error::{Hl7Error, Result};
use crate::escape::escape;

/// A field under construction: repetitions of components of sub-components (unescaped), or a
/// value already in wire form that is written as is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct FieldValue {
    raw: Option<String>,
    parts: Vec<Vec<Vec<String>>>,
}

/// One segment under construction. Positions are 1-based; trailing empty fields, repetitions,
/// components and sub-components are not written (§2.5.3 lets them be dropped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentBuilder {
    id: String,
    /// `fields[0]` is field 1.
    fields: Vec<FieldValue>,
}

impl SegmentBuilder {
    /// A segment with this id (checked when the message is built).
    pub fn new(id: &str) -> Self {
        Self { id: id.to_owned(), fields: Vec::new() }
    }

    /// The segment id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sets field `n` to a single text value.
    pub fn field(self, n: usize, value: impl Into<String>) -> Self {
        self.set(n, 1, 1, 1, value)
    }

    /// Sets field `n` to one repetition made of these components.
    pub fn components<I, S>(mut self, n: usize, components: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let repetition = components.into_iter().map(|c| vec![c.into()]).collect();
        *self.slot(n) = FieldValue { raw: None, parts: vec![repetition] };
        self
    }

    /// Appends a repetition made of these components to field `n` (`患者^太郎~カンジャ^タロウ`).
    pub fn repetition<I, S>(mut self, n: usize, components: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let repetition = components.into_iter().map(|c| vec![c.into()]).collect();
        self.parts(n).push(repetition);
        self
    }

    /// Sets one sub-component: field `n`, its repetition, component and sub-component.
    pub fn set(
        mut self,
        n: usize,
        repetition: usize,
        component: usize,
        subcomponent: usize,
        value: impl Into<String>,
    ) -> Self {
        let reps = self.parts(n);
        let rep = grow(reps, repetition);
        let comp = grow(rep, component);
        *grow(comp, subcomponent) = value.into();
        self
    }

    /// Sets field `n` to the explicit null `""` (§2.5.3: the receiver deletes its value).
    pub fn null(self, n: usize) -> Self {
        self.raw(n, "\"\"")
    }

    /// Sets field `n` to text already in wire form; it is written unchanged, so it must be
    /// escaped for the delimiters of the message it goes into.
    pub fn raw(mut self, n: usize, raw: impl Into<String>) -> Self {
        *self.slot(n) = FieldValue { raw: Some(raw.into()), parts: Vec::new() };
        self
    }

    fn slot(&mut self, n: usize) -> &mut FieldValue {
        let index = n.max(1) - 1;
        if self.fields.len() <= index {
            self.fields.resize_with(index + 1, FieldValue::default);
        }
        &mut self.fields[index]
    }

    fn parts(&mut self, n: usize) -> &mut Vec<Vec<Vec<String>>> {
        let slot = self.slot(n);
        slot.raw = None;
        &mut slot.parts
    }

    fn write(&self, delimiters: &Delimiters, out: &mut String) -> Result<()> {
        if !valid_id(&self.id) {
            return Err(Hl7Error::InvalidSegmentId { id: self.id.chars().take(8).collect() });
        }
        out.push_str(&self.id);
        let header = matches!(self.id.as_str(), "MSH" | "BHS" | "FHS");
        let mut fields = self.fields.iter().enumerate();
        if header {
            // MSH-1 and MSH-2 are the delimiters themselves (§2.14.9.1–2).
            if self.fields.iter().take(2).any(|f| *f != FieldValue::default()) {
                return Err(Hl7Error::HeaderFieldSet);
            }
            out.push(delimiters.field());
            out.push_str(&delimiters.encoding_characters());
            fields.nth(1);
        }
        let mut encoded: Vec<String> = Vec::with_capacity(self.fields.len());
        for (_, value) in fields {
            encoded.push(write_field(value, delimiters)?);
        }
        let used = encoded.iter().rposition(|f| !f.is_empty()).map_or(0, |i| i + 1);
        for value in &encoded[..used] {
            out.push(delimiters.field());
            out.push_str(value);
        }
        Ok(())
    }
}

/// The element at 1-based `n`, growing the vector with empty elements.
fn grow<T: Default>(items: &mut Vec<T>, n: usize) -> &mut T {
    let index = n.max(1) - 1;
    if items.len() <= index {
        items.resize_with(index + 1, T::default);
    }
    &mut items[index]
}

fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 3 && b[0].is_ascii_uppercase() && b[1..].iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

fn write_field(value: &FieldValue, d: &Delimiters) -> Result<String> {
    if let Some(raw) = &value.raw {
        return Ok(raw.clone());
    }
    let reps = &value.parts;
    let mut out = String::new();
    let reps_used = used(reps, |r| r.iter().any(|c| c.iter().any(|s| !s.is_empty())));
    for (ri, rep) in reps[..reps_used].iter().enumerate() {
        if ri > 0 {
            out.push(d.repetition());
        }
        let comps_used = used(rep, |c| c.iter().any(|s| !s.is_empty()));
        for (ci, comp) in rep[..comps_used].iter().enumerate() {
            if ci > 0 {
                out.push(d.component());
            }
            let subs_used = used(comp, |s| !s.is_empty());
            if subs_used > 1 && d.subcomponent().is_none() {
                return Err(Hl7Error::MissingDelimiter { which: "sub-component" });
            }
            for (si, sub) in comp[..subs_used].iter().enumerate() {
                if let (true, Some(sep)) = (si > 0, d.subcomponent()) {
                    out.push(sep);
                }
                out.push_str(&escape(sub, d)?);
            }
        }
    }
    Ok(out)
}

/// How many leading items to write: up to the last non-empty one.
fn used<T>(items: &[T], non_empty: impl Fn(&T) -> bool) -> usize {
    items.iter().rposition(non_empty).map_or(0, |i| i + 1)
}

/// A message under construction; [`MessageBuilder::build`] writes it with CR after each segment.
#[derive(Debug, Clone, Default)]
pub struct MessageBuilder {
    delimiters: Delimiters,
    segments: Vec<SegmentBuilder>,
}

impl MessageBuilder {
    /// An empty message written with these delimiters.
    pub fn new(delimiters: Delimiters) -> Self {
        Self { delimiters, segments: Vec::new() }
    }

    /// The delimiters the message is written with.
    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    /// Appends a segment.
    pub fn segment(mut self, segment: SegmentBuilder) -> Self {
        self.segments.push(segment);
        self
    }

    /// Appends a segment in place.
    pub fn push(&mut self, segment: SegmentBuilder) {
        self.segments.push(segment);
    }

    /// Writes the message: it must start with MSH; every value is escaped for the delimiters.
    pub fn build(&self) -> Result<String> {
        if self.segments.first().is_none_or(|s| s.id != "MSH") {
            return Err(Hl7Error::NotAMessage);
        }
        let mut out = String::with_capacity(64 * self.segments.len());
        for segment in &self.segments {
            segment.write(&self.delimiters, &mut out)?;
            // §2.5.1: every segment, the last included, ends with CR.
            out.push('\r');
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;

    fn msh() -> SegmentBuilder {
        SegmentBuilder::new("MSH")
            .field(3, "HIS")
            .field(7, "20240101120000")
            .components(9, ["OML", "O33", "OML_O33"])
            .field(10, "1")
            .field(11, "P")
            .field(12, "2.5")
    }

    #[test]
    fn builds_and_parses_back() {
        let text = MessageBuilder::default()
            .segment(msh().repetition(18, [""]).repetition(18, ["ISO IR87"]))
            .segment(
                SegmentBuilder::new("PID")
                    .field(1, "1")
                    .set(3, 1, 1, 1, "0001000052")
                    .set(3, 1, 5, 1, "PI")
                    .repetition(5, ["患者", "太郎", "", "", "", "", "L", "I"])
                    .repetition(5, ["カンジャ", "タロウ", "", "", "", "", "L", "P"]),
            )
            .segment(SegmentBuilder::new("NTE").field(3, "a|b^c~d\\e&f\nline 2").set(4, 1, 1, 2, "y").null(6))
            .build()
            .unwrap();
        assert_eq!(
            text,
            "MSH|^~\\&|HIS||||20240101120000||OML^O33^OML_O33|1|P|2.5||||||~ISO IR87\r\
             PID|1||0001000052^^^^PI||患者^太郎^^^^^L^I~カンジャ^タロウ^^^^^L^P\r\
             NTE|||a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f\\.br\\line 2|&y||\"\"\r"
        );
        let m = Message::parse(&text).unwrap();
        assert_eq!(m.field("NTE", 3).unwrap().unescape(), "a|b^c~d\\e&f\nline 2");
        assert_eq!(m.get("PID-5(2)-2").unwrap(), Some("タロウ"));
        assert_eq!(m.msh().field(18).raw(), "~ISO IR87");
        assert_eq!(m.to_string(), text);
    }

    #[test]
    fn other_delimiters_and_raw_fields() {
        let d = Delimiters::new('!', "@%$*").unwrap();
        let text = MessageBuilder::new(d)
            .segment(msh())
            .segment(SegmentBuilder::new("OBX").components(3, ["a!b", "c@d"]).raw(5, "x@y"))
            .build()
            .unwrap();
        assert!(text.starts_with("MSH!@%$*!HIS!"));
        assert!(text.ends_with("OBX!!!a$F$b@c$S$d!!x@y\r"));
        let m = Message::parse(&text).unwrap();
        assert_eq!(m.field("OBX", 3).unwrap().component(2).unescape(), "c@d");
    }

    #[test]
    fn errors() {
        let only_pid = MessageBuilder::default().segment(SegmentBuilder::new("PID"));
        assert!(matches!(only_pid.build(), Err(Hl7Error::NotAMessage)));
        let bad_id = MessageBuilder::default().segment(msh()).segment(SegmentBuilder::new("pid"));
        assert!(matches!(bad_id.build(), Err(Hl7Error::InvalidSegmentId { .. })));
        let header = MessageBuilder::default().segment(msh().field(2, "^~"));
        assert!(matches!(header.build(), Err(Hl7Error::HeaderFieldSet)));
        let no_sub = MessageBuilder::new(Delimiters::new('|', "^~\\").unwrap())
            .segment(msh())
            .segment(SegmentBuilder::new("NTE").set(3, 1, 1, 2, "x"));
        assert!(matches!(no_sub.build(), Err(Hl7Error::MissingDelimiter { which: "sub-component" })));
        let no_escape = MessageBuilder::new(Delimiters::new('|', "^~").unwrap())
            .segment(msh())
            .segment(SegmentBuilder::new("NTE").field(3, "a^b"));
        assert!(matches!(no_escape.build(), Err(Hl7Error::MissingDelimiter { which: "escape" })));
    }

    #[test]
    fn trailing_empties_are_dropped_and_raw_can_be_overwritten() {
        let text = MessageBuilder::default()
            .segment(msh())
            .segment(SegmentBuilder::new("PV1").field(2, "O").field(9, "").raw(3, "x").set(3, 1, 2, 1, "y"))
            .build()
            .unwrap();
        assert!(text.ends_with("PV1||O|^y\r"), "{text:?}");
    }
}
