//! The FHIR R4 XML representation (<https://hl7.org/fhir/R4/xml.html>): JSON ⇄ XML.
//!
//! Both directions are driven by the element definitions of [`crate::validate`] (the base trees
//! of the JP-CLINS snapshots and `profiles/base-types.txt`), which give the element order, the
//! cardinalities (JSON arrays for max > 1) and the primitive types (`boolean`, `integer`,
//! `decimal` become JSON booleans and numbers).
//!
//! | JSON | XML |
//! |---|---|
//! | `"resourceType": "Patient"` | root element `<Patient xmlns="http://hl7.org/fhir">` |
//! | `"birthDate": "1980-04-01"` + `"_birthDate": {"id", "extension"}` | `<birthDate id="…" value="1980-04-01"><extension …/></birthDate>` |
//! | `"given": ["a", null]` + `"_given": [null, {…}]` | `<given value="a"/><given><extension …/></given>` |
//! | `id` of an element, `Extension.url` | attributes `id="…"`, `url="…"` |
//! | `Resource.id` | element `<id value="…"/>` |
//! | `valueQuantity` (choice) | `<valueQuantity>` (same name) |
//! | `text.div` (XHTML string) | the string itself, written and captured raw |
//! | `contained`, `Bundle.entry.resource`, `Parameters.parameter.resource`, … | `<contained><Patient>…</Patient></contained>` |
//!
//! Limits (documented in `docs/fhir-api.md` §XML):
//!
//! - Resource types without a definition here (e.g. `CapabilityStatement`) are written in JSON
//!   key order with JSON kinds (arrays repeat, objects nest, `id`/`url` of objects become
//!   attributes) and cannot be read (`not supported in XML`).
//! - Reading accepts FHIR elements in any order (writing always uses the definition order).
//! - Input must be UTF-8; DTDs, entity declarations and processing instructions are rejected.
//!
//! Error messages name the line and the element path, never element content (it may be PHI).

mod read;
mod write;

#[cfg(test)]
mod tests;

use quick_xml::events::BytesStart;
use serde_json::Value;

use crate::FhirError;
use crate::validate::model::{Definitions, TypeDef, is_primitive};

/// The FHIR namespace of every FHIR element.
pub const FHIR_NS: &str = "http://hl7.org/fhir";
/// The namespace of `Narrative.div`.
pub const XHTML_NS: &str = "http://www.w3.org/1999/xhtml";

/// Nesting limit for contained / Bundle entry resources (as in the validator).
const MAX_RESOURCE_DEPTH: usize = 12;
/// Nesting limit for elements (a deeply nested document must not exhaust the stack).
const MAX_ELEMENT_DEPTH: usize = 128;
/// Attributes of one element. FHIR elements carry `id`, `value` or `url` and a few namespace
/// declarations, XHTML elements of a narrative a handful more. Without a bound, one start tag
/// with a million attributes costs quadratic time (quick-xml's duplicate check compares each
/// attribute with every earlier one).
const MAX_ATTRIBUTES: usize = 64;
/// Namespace declarations in scope at once (on an element and its ancestors): every element
/// name is resolved against them, so their number multiplies the cost of every element.
const MAX_NAMESPACES: usize = 64;

/// Whether a narrative `div` (the JSON string) is one well-formed XHTML `div` element that the
/// XML representation can carry as it is — what the validator requires of every `xhtml` value,
/// so that every stored resource has an XML form.
pub(crate) fn narrative_is_well_formed(div: &str) -> bool {
    write::check_div(div).is_ok()
}

/// Writes a FHIR JSON resource as an R4 XML document (with the XML declaration).
pub fn to_xml(resource: &Value) -> Result<String, FhirError> {
    write::document(resource)
}

/// Reads an R4 XML document into FHIR JSON.
pub fn from_xml(xml: &str) -> Result<Value, FhirError> {
    read::document(xml)
}

/// Reads an R4 XML document given as bytes, which must be UTF-8 (a byte-order mark is allowed).
pub fn from_xml_bytes(xml: &[u8]) -> Result<Value, FhirError> {
    match std::str::from_utf8(xml) {
        Ok(s) => from_xml(s),
        Err(e) => {
            let line = xml.get(..e.valid_up_to()).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count()) + 1;
            Err(FhirError::Xml(format!("line {line}: the document is not UTF-8")))
        }
    }
}

/// What the value of one element is, according to its definition.
#[derive(Clone, Copy)]
enum Shape<'d> {
    /// A primitive of this type code: `value` attribute (+ `id` and extensions).
    Primitive(&'d str),
    /// `Narrative.div`.
    Xhtml,
    /// A nested resource (`contained`, `Bundle.entry.resource`, …).
    Resource,
    /// An element with children: node `usize` of this tree (a data type root or a backbone).
    Complex(&'d TypeDef, usize),
    /// A data type without a definition here.
    Undefined(&'d str),
}

/// The shape of child node `ci` of `td` holding a value of type `tcode`.
fn shape<'d>(defs: &'d Definitions, td: &'d TypeDef, ci: usize, tcode: &'d str) -> Shape<'d> {
    if !td.children(ci).is_empty() {
        Shape::Complex(td, ci)
    } else if tcode == "xhtml" {
        Shape::Xhtml
    } else if is_primitive(tcode) {
        Shape::Primitive(tcode)
    } else if tcode == "Resource" {
        Shape::Resource
    } else {
        match defs.types.get(tcode).filter(|_| !defs.resource_types.contains(tcode)) {
            Some(dt) => Shape::Complex(dt, 0),
            None => Shape::Undefined(tcode),
        }
    }
}

/// The resource definition of a resource type, if it has one.
fn resource_def<'d>(defs: &'d Definitions, rt: &str) -> Option<&'d TypeDef> {
    defs.types.get(rt).filter(|_| defs.resource_types.contains(rt))
}

/// Whether node `idx` of `td` is the root of `Extension` (whose `url` is an XML attribute).
fn is_extension(td: &TypeDef, idx: usize) -> bool {
    idx == 0 && td.nodes.first().is_some_and(|n| n.name == "Extension")
}

/// Whether a string is usable as an XML element name here (ASCII name characters; FHIR names
/// and resource types are all of this kind).
fn is_xml_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Whether a character may appear in an XML 1.0 document at all (even as a reference).
fn is_xml_char(c: char) -> bool {
    !matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}')
}

/// Checks the attributes of a start tag — well-formed, none given twice, values without `<` and
/// with defined entities and allowed characters only, at most [`MAX_ATTRIBUTES`] — and returns
/// how many of them are namespace declarations.
fn check_attributes(e: &BytesStart<'_>) -> Result<usize, &'static str> {
    let mut count = 0;
    let mut declarations = 0;
    for a in e.attributes() {
        let a = a.map_err(|_| "an attribute is malformed or given twice")?;
        count += 1;
        if count > MAX_ATTRIBUTES {
            return Err("an element has more than 64 attributes");
        }
        if a.key.as_namespace_binding().is_some() {
            declarations += 1;
        }
        let raw = std::str::from_utf8(&a.value).map_err(|_| "an attribute value is not UTF-8")?;
        if raw.contains('<') {
            return Err("'<' is not allowed in attribute values");
        }
        let value = quick_xml::escape::unescape(raw)
            .map_err(|_| "an attribute value uses an undefined entity or a bad character reference")?;
        if !value.chars().all(is_xml_char) {
            return Err("an attribute value refers to a character that XML does not allow");
        }
    }
    Ok(declarations)
}
