//! Parsed header values: message control id, message type, timestamp, and the location of a
//! value inside a message.

use std::fmt;
use std::str::FromStr;

use crate::error::{Hl7Error, Result};

/// MSH-10 message control id: 1 to 20 printable ASCII characters (HL7 v2.5 §2.14.9.10, ST
/// of length 20), echoed in MSA-2 by the acknowledgment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ControlId(String);

impl ControlId {
    /// Checks and wraps a control id; leading or trailing spaces are refused, as they do not
    /// survive systems that pad or trim fields.
    pub fn new(value: &str) -> Result<Self> {
        let printable = value.bytes().all(|b| (0x20..=0x7e).contains(&b));
        if value.is_empty() || value.len() > 20 || !printable || value.trim() != value {
            return Err(Hl7Error::InvalidControlId);
        }
        Ok(Self(value.to_owned()))
    }

    /// The control id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ControlId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ControlId {
    type Err = Hl7Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

/// MSH-9 message type (MSG data type, HL7 v2.5 §2.A.47): message code, trigger event and
/// message structure, such as `OML^O33^OML_O33` or `ACK^O33^ACK`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageType {
    code: String,
    trigger: Option<String>,
    structure: Option<String>,
}

impl MessageType {
    /// A message type from its parts; the code is three upper-case letters or digits (table
    /// 0076), the trigger event three (table 0003; JAHIS adds `ZC0`, `ZB5`…) and the structure
    /// up to seven letters, digits or `_` (table 0354).
    pub fn new(code: &str, trigger: Option<&str>, structure: Option<&str>) -> Result<Self> {
        let id3 = |s: &str| s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        let structure_ok =
            |s: &str| (1..=7).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !id3(code) || !trigger.is_none_or(id3) || !structure.is_none_or(structure_ok) {
            return Err(Hl7Error::InvalidMessageType);
        }
        Ok(Self { code: code.to_owned(), trigger: trigger.map(str::to_owned), structure: structure.map(str::to_owned) })
    }

    /// Parses `code^trigger^structure` as written with the component separator `component`;
    /// empty parts are absent.
    pub fn parse(raw: &str, component: char) -> Result<Self> {
        let mut parts = raw.split(component).map(|p| Some(p).filter(|p| !p.is_empty()));
        let code = parts.next().flatten().ok_or(Hl7Error::InvalidMessageType)?;
        let trigger = parts.next().flatten();
        let structure = parts.next().flatten();
        if parts.next().is_some() {
            return Err(Hl7Error::InvalidMessageType);
        }
        Self::new(code, trigger, structure)
    }

    /// The message code (MSG.1), such as `OML`.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The trigger event (MSG.2), such as `O33`.
    pub fn trigger(&self) -> Option<&str> {
        self.trigger.as_deref()
    }

    /// The message structure (MSG.3), such as `OML_O33`.
    pub fn structure(&self) -> Option<&str> {
        self.structure.as_deref()
    }

    /// Writes the type with the component separator `component`, dropping trailing empty parts.
    pub fn to_raw(&self, component: char) -> String {
        let mut out = self.code.clone();
        let parts = [self.trigger.as_deref().unwrap_or(""), self.structure.as_deref().unwrap_or("")];
        let used = parts.iter().rposition(|p| !p.is_empty()).map_or(0, |i| i + 1);
        for part in &parts[..used] {
            out.push(component);
            out.push_str(part);
        }
        out
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_raw('^'))
    }
}

/// An HL7 timestamp (DTM, HL7 v2.5 §2.A.22): `YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`.
///
/// Passed in by callers (MSH-7 of an acknowledgment): this crate never reads the clock.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Timestamp(String);

impl Timestamp {
    /// Checks the DTM shape and the ranges of month, day, hour, minute, second and offset.
    pub fn new(value: &str) -> Result<Self> {
        if valid_dtm(value) { Ok(Self(value.to_owned())) } else { Err(Hl7Error::InvalidTimestamp { field: "DTM" }) }
    }

    /// The timestamp as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Timestamp {
    type Err = Hl7Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

fn valid_dtm(value: &str) -> bool {
    let (datetime, offset) = match value.find(['+', '-']) {
        Some(i) => (&value[..i], Some(&value[i + 1..])),
        None => (value, None),
    };
    let (digits, fraction) = match datetime.split_once('.') {
        Some((d, f)) => (d, Some(f)),
        None => (datetime, None),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(digits) || ![4, 6, 8, 10, 12, 14].contains(&digits.len()) {
        return false;
    }
    if let Some(f) = fraction {
        // Fractions of a second only after the seconds.
        if digits.len() != 14 || !(1..=4).contains(&f.len()) || !all_digits(f) {
            return false;
        }
    }
    // Two-digit groups after the year, with their ranges (a leap second is allowed).
    let ranges = [(1, 12), (1, 31), (0, 23), (0, 59), (0, 60)];
    let groups = digits.as_bytes()[4..].chunks(2).map(|g| u32::from(g[0] - b'0') * 10 + u32::from(g[1] - b'0'));
    if !groups.zip(ranges).all(|(v, (lo, hi))| (lo..=hi).contains(&v)) {
        return false;
    }
    match offset {
        None => true,
        Some(z) => {
            z.len() == 4
                && all_digits(z)
                && z[..2].parse::<u32>().is_ok_and(|h| h <= 14)
                && z[2..].parse::<u32>().is_ok_and(|m| m <= 59)
        }
    }
}

/// Where a value sits in a message: the ERL data type of ERR-2 (HL7 v2.5 §2.A.26) — segment id,
/// its occurrence, field, repetition, component and sub-component, all 1-based.
///
/// Written and parsed in the terse form `PID-5`, `PID-5-1`, `OBX(2)-5`, `PID-5(2)-1-1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    segment: String,
    occurrence: usize,
    field: Option<usize>,
    repetition: Option<usize>,
    component: Option<usize>,
    subcomponent: Option<usize>,
}

impl Location {
    /// The first occurrence of segment `id`, as a whole.
    pub fn segment(id: &str) -> Self {
        Self {
            segment: id.to_owned(),
            occurrence: 1,
            field: None,
            repetition: None,
            component: None,
            subcomponent: None,
        }
    }

    /// Field `n` of the first occurrence of segment `id`.
    pub fn field(id: &str, n: usize) -> Self {
        Self::segment(id).at_field(n)
    }

    /// The same location in occurrence `n` of the segment (OBX 3 is `OBX(3)`).
    pub fn occurrence(mut self, n: usize) -> Self {
        self.occurrence = n;
        self
    }

    /// The same location narrowed to field `n`.
    pub fn at_field(mut self, n: usize) -> Self {
        self.field = Some(n);
        self
    }

    /// The same location narrowed to repetition `n` of the field.
    pub fn repetition(mut self, n: usize) -> Self {
        self.repetition = Some(n);
        self
    }

    /// The same location narrowed to component `n`.
    pub fn component(mut self, n: usize) -> Self {
        self.component = Some(n);
        self
    }

    /// The same location narrowed to sub-component `n` of the component.
    pub fn subcomponent(mut self, n: usize) -> Self {
        self.subcomponent = Some(n);
        self
    }

    /// The segment id.
    pub fn segment_id(&self) -> &str {
        &self.segment
    }

    /// Which occurrence of the segment (1 for the first).
    pub fn segment_occurrence(&self) -> usize {
        self.occurrence
    }

    /// The field position, if the location is narrower than a segment.
    pub fn field_position(&self) -> Option<usize> {
        self.field
    }

    /// The field repetition, if given.
    pub fn field_repetition(&self) -> Option<usize> {
        self.repetition
    }

    /// The component number, if given.
    pub fn component_number(&self) -> Option<usize> {
        self.component
    }

    /// The sub-component number, if given.
    pub fn subcomponent_number(&self) -> Option<usize> {
        self.subcomponent
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segment)?;
        if self.occurrence != 1 {
            write!(f, "({})", self.occurrence)?;
        }
        if let Some(field) = self.field {
            write!(f, "-{field}")?;
            if let Some(rep) = self.repetition {
                write!(f, "({rep})")?;
            }
            if let Some(c) = self.component {
                write!(f, "-{c}")?;
                if let Some(s) = self.subcomponent {
                    write!(f, "-{s}")?;
                }
            }
        }
        Ok(())
    }
}

impl FromStr for Location {
    type Err = Hl7Error;

    fn from_str(path: &str) -> Result<Self> {
        // `NAME` or `NAME(n)`, a positive number in the parentheses.
        fn part(s: &str) -> Result<(&str, Option<usize>)> {
            match s.split_once('(') {
                None => Ok((s, None)),
                Some((name, rest)) => {
                    let n = rest.strip_suffix(')').and_then(|n| n.parse::<usize>().ok()).filter(|n| *n > 0);
                    Ok((name, Some(n.ok_or(Hl7Error::InvalidLocation)?)))
                }
            }
        }
        fn number(s: &str) -> Result<usize> {
            s.parse::<usize>().ok().filter(|n| *n > 0).ok_or(Hl7Error::InvalidLocation)
        }
        let mut parts = path.split('-');
        let (segment, occurrence) = part(parts.next().unwrap_or_default())?;
        let id_ok = segment.len() == 3 && segment.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !id_ok {
            return Err(Hl7Error::InvalidLocation);
        }
        let mut location = Self::segment(segment).occurrence(occurrence.unwrap_or(1));
        if let Some(field) = parts.next() {
            let (field, repetition) = part(field)?;
            location.field = Some(number(field)?);
            location.repetition = repetition;
        }
        location.component = parts.next().map(number).transpose()?;
        location.subcomponent = parts.next().map(number).transpose()?;
        if parts.next().is_some() {
            return Err(Hl7Error::InvalidLocation);
        }
        Ok(location)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_ids() {
        assert_eq!(ControlId::new("20111220131032").unwrap().as_str(), "20111220131032");
        for bad in ["", "123456789012345678901", "ab\tc", " lead", "trail ", "山田"] {
            assert!(ControlId::new(bad).is_err(), "{bad:?}");
        }
        assert!(ControlId::new("A-1 2").is_ok());
    }

    #[test]
    fn message_types() {
        let t = MessageType::parse("OML^O33^OML_O33", '^').unwrap();
        assert_eq!((t.code(), t.trigger(), t.structure()), ("OML", Some("O33"), Some("OML_O33")));
        assert_eq!(t.to_string(), "OML^O33^OML_O33");
        let ack = MessageType::parse("ACK", '^').unwrap();
        assert_eq!((ack.trigger(), ack.structure()), (None, None));
        assert_eq!(MessageType::new("ACK", Some("O33"), Some("ACK")).unwrap().to_raw('@'), "ACK@O33@ACK");
        assert_eq!(MessageType::parse("QBP^ZC0", '^').unwrap().to_string(), "QBP^ZC0");
        for bad in ["", "oml^O33", "OML^O33^OML_O33^X", "OMLX^O33", "^O33", "OML^O33^TOOLONG_1"] {
            assert!(MessageType::parse(bad, '^').is_err(), "{bad:?}");
        }
    }

    #[test]
    fn timestamps() {
        for ok in
            ["2024", "202401", "20111220103059", "20111220103059.0000", "20240229235960+0900", "202401011230-0500"]
        {
            assert!(Timestamp::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", "24", "2024011", "20241301", "20240132", "20240101246000", "20240101.5", "2024+09", "abcd"] {
            assert!(Timestamp::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn locations_round_trip() {
        for path in ["PID", "OBX(3)", "PID-5", "PID-5-1", "PID-5(2)-1-2", "OBX(2)-5-1"] {
            let loc: Location = path.parse().unwrap();
            assert_eq!(loc.to_string(), path);
        }
        let loc: Location = "PID-5(2)-1-2".parse().unwrap();
        assert_eq!(loc, Location::field("PID", 5).repetition(2).component(1).subcomponent(2));
        for bad in ["", "pid-5", "PID-0", "PID-x", "PID(0)-1", "PID-1-2-3-4", "PID-5(", "PIDX-1"] {
            assert!(bad.parse::<Location>().is_err(), "{bad}");
        }
    }
}
