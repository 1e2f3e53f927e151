//! XML → JSON.

use std::fmt::Display;

use quick_xml::NsReader;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::{PrefixDeclaration, ResolveResult};
use serde_json::{Map, Number, Value};

use super::write::known_reference;
use super::{
    FHIR_NS, MAX_ELEMENT_DEPTH, MAX_NAMESPACES, MAX_RESOURCE_DEPTH, Shape, XHTML_NS, check_attributes, is_extension,
    is_xml_char, resource_def, shape,
};
use crate::FhirError;
use crate::validate::definitions;
use crate::validate::model::{Definitions, TypeDef};

type Result<T = ()> = std::result::Result<T, FhirError>;

const XSI_NS: &[u8] = b"http://www.w3.org/2001/XMLSchema-instance";

/// Reads a complete XML document holding one resource.
pub(super) fn document(src: &str) -> Result<Value> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    if let Some(pos) = src.find(|c| !is_xml_char(c)) {
        return Err(FhirError::Xml(format!(
            "line {}: the document contains a character that XML does not allow",
            line_at(src, pos)
        )));
    }
    let mut p = Parser {
        defs: definitions(),
        r: NsReader::from_str(src),
        src,
        pos: 0,
        path: Vec::new(),
        resources: 0,
        elements: 0,
        namespaces: Vec::new(),
        in_scope: 0,
    };
    let mut first = true;
    let (ns, root, empty) = loop {
        let (ns, ev) = p.next()?;
        match ev {
            Event::Decl(d) if first => p.declaration(&d)?,
            Event::Comment(_) => {}
            Event::Text(t) if is_blank(&t) => {}
            Event::Start(e) => break (ns, e, false),
            Event::Empty(e) => break (ns, e, true),
            Event::DocType(_) => return Err(p.err("DTDs (<!DOCTYPE>) and entity declarations are not allowed")),
            Event::PI(_) | Event::Decl(_) => return Err(p.err("processing instructions are not allowed")),
            Event::Eof => return Err(p.err("the document has no root element")),
            Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) | Event::End(_) => {
                return Err(p.err("text content is not allowed outside the root element"));
            }
        }
        first = false;
    };
    if ns != Ns::Fhir {
        return Err(p.err(format_args!("the root element must be in the FHIR namespace {FHIR_NS}")));
    }
    let v = p.resource(&root, empty)?;
    loop {
        match p.next()?.1 {
            Event::Eof => break,
            Event::Comment(_) => {}
            Event::Text(t) if is_blank(&t) => {}
            Event::PI(_) | Event::Decl(_) => return Err(p.err("processing instructions are not allowed")),
            Event::DocType(_) => return Err(p.err("DTDs (<!DOCTYPE>) are not allowed")),
            _ => return Err(p.err("content after the root element")),
        }
    }
    Ok(v)
}

fn line_at(src: &str, pos: usize) -> usize {
    src.as_bytes().get(..pos).unwrap_or(src.as_bytes()).iter().filter(|&&b| b == b'\n').count() + 1
}

fn is_blank(t: &[u8]) -> bool {
    t.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// The namespace an element name resolved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ns {
    Fhir,
    Xhtml,
    Other,
}

fn ns_of(r: &ResolveResult<'_>) -> Ns {
    match r {
        ResolveResult::Bound(ns) if ns.as_ref() == FHIR_NS.as_bytes() => Ns::Fhir,
        ResolveResult::Bound(ns) if ns.as_ref() == XHTML_NS.as_bytes() => Ns::Xhtml,
        _ => Ns::Other,
    }
}

/// One parsed XML element of a JSON member.
enum Item {
    /// A primitive: its value and its `_name` object (id, extension).
    Prim(Option<Value>, Option<Map<String, Value>>),
    Val(Value),
}

/// The elements of one JSON member, collected before the JSON is built.
struct Member {
    node: usize,
    key: String,
    repeats: bool,
    items: Vec<Item>,
}

/// Attributes FHIR allows on an element.
#[derive(Default)]
struct Attrs {
    id: Option<String>,
    value: Option<String>,
    url: Option<String>,
}

struct Parser<'i> {
    defs: &'static Definitions,
    r: NsReader<&'i [u8]>,
    src: &'i str,
    /// Where the last event read starts.
    pos: usize,
    /// Element names from the root to the current element, for diagnostics.
    path: Vec<String>,
    resources: usize,
    elements: usize,
    /// Namespace declarations of each open element, and their sum.
    namespaces: Vec<usize>,
    in_scope: usize,
}

impl<'i> Parser<'i> {
    fn err(&self, msg: impl Display) -> FhirError {
        self.err_at(self.pos, msg)
    }

    fn err_at(&self, pos: usize, msg: impl Display) -> FhirError {
        let line = line_at(self.src, pos);
        if self.path.is_empty() {
            FhirError::Xml(format!("line {line}: {msg}"))
        } else {
            FhirError::Xml(format!("line {line}: {}: {msg}", self.path.join(".")))
        }
    }

    /// The next event, every start tag's attributes checked (narrative XHTML included).
    fn next(&mut self) -> Result<(Ns, Event<'i>)> {
        self.pos = usize::try_from(self.r.buffer_position()).unwrap_or(usize::MAX);
        let (ns, ev) = match self.r.read_resolved_event() {
            Ok((ns, ev)) => (ns_of(&ns), ev),
            Err(e) => {
                let at = usize::try_from(self.r.error_position()).unwrap_or(self.pos);
                return Err(self.err_at(at, format_args!("malformed XML: {}", describe(&e))));
            }
        };
        match &ev {
            Event::Start(e) | Event::Empty(e) => {
                let declarations = check_attributes(e).map_err(|m| self.err(m))?;
                if self.in_scope + declarations > MAX_NAMESPACES {
                    return Err(self.err(format_args!("more than {MAX_NAMESPACES} namespace declarations in scope")));
                }
                if matches!(ev, Event::Start(_)) {
                    self.namespaces.push(declarations);
                    self.in_scope += declarations;
                }
            }
            Event::End(_) => self.in_scope -= self.namespaces.pop().unwrap_or(0),
            _ => {}
        }
        Ok((ns, ev))
    }

    /// `<?xml version="1.0" encoding="UTF-8"?>`: version 1.0, UTF-8 only.
    fn declaration(&self, d: &quick_xml::events::BytesDecl<'_>) -> Result {
        if d.version().ok().as_deref() != Some(b"1.0".as_slice()) {
            return Err(self.err("only XML version 1.0 is supported"));
        }
        match d.encoding() {
            None => Ok(()),
            Some(Ok(enc)) if enc.eq_ignore_ascii_case(b"utf-8") => Ok(()),
            Some(_) => Err(self.err("only the UTF-8 encoding is supported")),
        }
    }

    /// The next child element of the current element, or `None` at its end tag. Comments and
    /// whitespace are skipped; FHIR elements have no text content.
    fn next_child(&mut self) -> Result<Option<(Ns, BytesStart<'i>, bool)>> {
        loop {
            let (ns, ev) = self.next()?;
            return match ev {
                Event::Start(e) => Ok(Some((ns, e, false))),
                Event::Empty(e) => Ok(Some((ns, e, true))),
                Event::End(_) => Ok(None),
                Event::Comment(_) => continue,
                Event::Text(t) if is_blank(&t) => continue,
                Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) => {
                    Err(self.err("text content is not allowed here (FHIR values go in value attributes)"))
                }
                Event::PI(_) | Event::Decl(_) => Err(self.err("processing instructions are not allowed")),
                Event::DocType(_) => Err(self.err("DTDs (<!DOCTYPE>) are not allowed")),
                Event::Eof => Err(self.err("unexpected end of the document")),
            };
        }
    }

    fn local_name(&self, e: &BytesStart<'_>) -> Result<String> {
        std::str::from_utf8(e.local_name().as_ref())
            .map(str::to_owned)
            .map_err(|_| self.err("an element name is not UTF-8"))
    }

    fn enter(&mut self, name: String) -> Result {
        self.path.push(name);
        self.elements += 1;
        if self.elements > MAX_ELEMENT_DEPTH {
            return Err(self.err(format_args!("elements are nested more than {MAX_ELEMENT_DEPTH} levels deep")));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.path.pop();
        self.elements -= 1;
    }

    /// The FHIR attributes of an element: namespace declarations are skipped, `xsi:` attributes
    /// too where `xsi` is set (resource elements may carry `xsi:schemaLocation`), any attribute
    /// not in `allowed` is an error.
    fn attrs(&self, e: &BytesStart<'_>, allowed: &[&str], xsi: bool) -> Result<Attrs> {
        let mut out = Attrs::default();
        for a in e.attributes() {
            let a = a.map_err(|_| self.err("malformed attribute"))?;
            if a.key.as_namespace_binding().is_some() {
                continue;
            }
            let (ns, local) = self.r.resolve_attribute(a.key);
            let local = std::str::from_utf8(local.as_ref()).map_err(|_| self.err("an attribute name is not UTF-8"))?;
            match ns {
                ResolveResult::Unbound => {}
                ResolveResult::Bound(n) if xsi && n.as_ref() == XSI_NS => continue,
                _ => return Err(self.err(format_args!("attribute {local} in a foreign namespace is not allowed"))),
            }
            if !allowed.contains(&local) {
                return Err(self.err(format_args!("attribute {local} is not allowed on this element")));
            }
            let value = self.attr_value(&a.value)?;
            match local {
                "id" => out.id = Some(value),
                "value" => out.value = Some(value),
                "url" => out.url = Some(value),
                _ => {}
            }
        }
        Ok(out)
    }

    /// An attribute value: whitespace normalised as XML requires, references resolved.
    fn attr_value(&self, raw: &[u8]) -> Result<String> {
        let raw = std::str::from_utf8(raw).map_err(|_| self.err("an attribute value is not UTF-8"))?;
        if raw.contains('<') {
            return Err(self.err("'<' is not allowed in attribute values"));
        }
        let normalised;
        let raw = if raw.contains(['\t', '\n', '\r']) {
            normalised = raw.replace("\r\n", " ").replace(['\t', '\n', '\r'], " ");
            normalised.as_str()
        } else {
            raw
        };
        let value = quick_xml::escape::unescape(raw)
            .map_err(|_| self.err("an attribute value uses an undefined entity or a bad character reference"))?;
        if !value.chars().all(is_xml_char) {
            return Err(self.err("an attribute value refers to a character that XML does not allow"));
        }
        Ok(value.into_owned())
    }

    /// A resource element (`<Patient>`), whose start tag has just been read.
    fn resource(&mut self, start: &BytesStart<'i>, empty: bool) -> Result<Value> {
        let rt = self.local_name(start)?;
        let defs = self.defs;
        let td = match resource_def(defs, &rt) {
            Some(td) => td,
            None if defs.resource_names.contains(&rt) => {
                return Err(self.err(format_args!("resource type {rt} is not supported in XML")));
            }
            None => return Err(self.err("the element is not a FHIR resource type")),
        };
        if self.resources >= MAX_RESOURCE_DEPTH {
            return Err(self.err(format_args!("resources are nested more than {MAX_RESOURCE_DEPTH} levels deep")));
        }
        self.attrs(start, &[], true)?;
        self.resources += 1;
        self.enter(rt.clone())?;
        let mut map = Map::new();
        map.insert("resourceType".into(), Value::String(rt));
        if !empty {
            self.content(td, 0, &mut map, true)?;
        }
        self.leave();
        self.resources -= 1;
        Ok(Value::Object(map))
    }

    /// The child elements of node `idx` of `td` into `map`, up to the parent's end tag.
    fn content(&mut self, td: &'static TypeDef, idx: usize, map: &mut Map<String, Value>, is_resource: bool) -> Result {
        let defs = self.defs;
        let ext_root = is_extension(td, idx);
        let mut members: Vec<Member> = Vec::new();
        while let Some((ns, e, empty)) = self.next_child()? {
            let name = self.local_name(&e)?;
            let found = match ns {
                Ns::Fhir | Ns::Xhtml => td.child_for_key(idx, &name, &defs.all_types),
                Ns::Other => None,
            };
            let Some((ci, tcode)) = found else {
                return Err(match ns {
                    Ns::Fhir => self.err(format_args!("unknown element {name}")),
                    _ => self.err(format_args!("element {name} is not in the FHIR namespace")),
                });
            };
            if (!is_resource && name == "id") || (ext_root && name == "url") {
                return Err(self.err(format_args!("{name} must be an XML attribute here")));
            }
            let sh = shape(defs, td, ci, tcode);
            match (sh, ns) {
                (Shape::Xhtml, Ns::Xhtml) => {}
                (Shape::Xhtml, _) => return Err(self.err("the narrative div must be in the XHTML namespace")),
                (_, Ns::Fhir) => {}
                _ => return Err(self.err(format_args!("element {name} is not in the FHIR namespace"))),
            }
            self.enter(name.clone())?;
            let item = match sh {
                Shape::Primitive(t) => self.primitive(&e, empty, t)?,
                Shape::Xhtml => Item::Val(Value::String(self.xhtml(&e, empty)?)),
                Shape::Resource => Item::Val(self.contained(&e, empty)?),
                Shape::Complex(dt, di) => Item::Val(self.complex(&e, empty, dt, di)?),
                Shape::Undefined(t) => {
                    return Err(self.err(format_args!("elements of type {t} are not supported in XML")));
                }
            };
            let repeats = td.nodes.get(ci).is_some_and(|n| n.max.repeats());
            match members.iter_mut().find(|m| m.node == ci) {
                Some(m) if m.repeats && m.key == name => m.items.push(item),
                Some(_) => return Err(self.err("the element occurs more than once but allows one value")),
                None => members.push(Member { node: ci, key: name, repeats, items: vec![item] }),
            }
            self.leave();
        }
        finish(members, map);
        Ok(())
    }

    /// An element of a data type or a backbone element.
    fn complex(&mut self, e: &BytesStart<'i>, empty: bool, dt: &'static TypeDef, di: usize) -> Result<Value> {
        let allowed: &[&str] = if is_extension(dt, di) { &["id", "url"] } else { &["id"] };
        let a = self.attrs(e, allowed, false)?;
        let mut map = Map::new();
        if let Some(id) = a.id {
            map.insert("id".into(), Value::String(id));
        }
        if let Some(url) = a.url {
            map.insert("url".into(), Value::String(url));
        }
        if !empty {
            self.content(dt, di, &mut map, false)?;
        }
        if map.is_empty() {
            return Err(self.err("the element has no content"));
        }
        Ok(Value::Object(map))
    }

    /// A primitive element: `value` and `id` attributes, `extension` children.
    fn primitive(&mut self, e: &BytesStart<'i>, empty: bool, tcode: &str) -> Result<Item> {
        let a = self.attrs(e, &["id", "value"], false)?;
        let mut extensions = Vec::new();
        if !empty {
            let Some(ext_td) = self.defs.types.get("Extension") else {
                return Err(self.err("the Extension definition is missing"));
            };
            while let Some((ns, c, cempty)) = self.next_child()? {
                if ns != Ns::Fhir || c.local_name().as_ref() != b"extension" {
                    return Err(self.err("a primitive element may only contain extension elements"));
                }
                self.enter("extension".into())?;
                extensions.push(self.complex(&c, cempty, ext_td, 0)?);
                self.leave();
            }
        }
        let value = match a.value {
            Some(v) if v.is_empty() => return Err(self.err("the value attribute must not be empty")),
            Some(v) => Some(self.convert(tcode, v)?),
            None => None,
        };
        let ext = if a.id.is_some() || !extensions.is_empty() {
            let mut m = Map::new();
            if let Some(id) = a.id {
                m.insert("id".into(), Value::String(id));
            }
            if !extensions.is_empty() {
                m.insert("extension".into(), Value::Array(extensions));
            }
            Some(m)
        } else {
            None
        };
        if value.is_none() && ext.is_none() {
            return Err(self.err("the element has neither a value nor extensions"));
        }
        Ok(Item::Prim(value, ext))
    }

    /// A primitive value of type `tcode` as JSON.
    fn convert(&self, tcode: &str, v: String) -> Result<Value> {
        match tcode {
            "boolean" => match v.as_str() {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(self.err("the value is not a valid boolean")),
            },
            "integer" | "positiveInt" | "unsignedInt" if is_integer(&v) => {
                v.parse::<i64>().map(Value::from).map_err(|_| self.err("the integer is out of range"))
            }
            "integer" | "positiveInt" | "unsignedInt" => {
                Err(self.err(format_args!("the value is not a valid {tcode}")))
            }
            "decimal" if is_decimal(&v) => serde_json::from_str::<Number>(&v)
                .map(Value::Number)
                .map_err(|_| self.err("the decimal is out of range")),
            "decimal" => Err(self.err("the value is not a valid decimal")),
            _ => Ok(Value::String(v)),
        }
    }

    /// `<contained>`, `<resource>`, `<outcome>`: exactly one resource element.
    fn contained(&mut self, e: &BytesStart<'i>, empty: bool) -> Result<Value> {
        self.attrs(e, &[], false)?;
        let inner = if empty { None } else { self.next_child()? };
        let Some((ns, inner, inner_empty)) = inner else {
            return Err(self.err("the element must contain a resource"));
        };
        if ns != Ns::Fhir {
            return Err(self.err("the resource element is not in the FHIR namespace"));
        }
        let v = self.resource(&inner, inner_empty)?;
        if self.next_child()?.is_some() {
            return Err(self.err("the element must contain exactly one resource"));
        }
        Ok(v)
    }

    /// `Narrative.div`, captured as written (line ends normalised as XML does), with the XHTML
    /// namespace declared on the div itself.
    fn xhtml(&mut self, e: &BytesStart<'i>, empty: bool) -> Result<String> {
        let start = self.pos;
        let qname_len = e.name().as_ref().len();
        let prefix = e.name().prefix().map(|p| p.as_ref().to_vec());
        let mut declared = false;
        for a in e.attributes() {
            let a = a.map_err(|_| self.err("malformed attribute"))?;
            match (a.key.as_namespace_binding(), &prefix) {
                (Some(PrefixDeclaration::Default), None) => declared = true,
                (Some(PrefixDeclaration::Named(p)), Some(want)) if p == want.as_slice() => declared = true,
                _ => {}
            }
        }
        if !empty {
            let mut depth = 1usize;
            loop {
                let (ns, ev) = self.next()?;
                match ev {
                    Event::Start(_) | Event::Empty(_) if ns != Ns::Xhtml => {
                        return Err(self.err("elements in the narrative div must be XHTML"));
                    }
                    Event::Start(_) => {
                        depth += 1;
                        if depth > MAX_ELEMENT_DEPTH {
                            return Err(self.err("the narrative div is nested too deeply"));
                        }
                    }
                    Event::End(_) => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Event::Empty(_) | Event::Text(_) | Event::CData(_) | Event::Comment(_) => {}
                    Event::GeneralRef(g) => {
                        if !known_reference(&g) {
                            return Err(self.err("the narrative div uses an entity XML does not define"));
                        }
                    }
                    Event::PI(_) | Event::Decl(_) => return Err(self.err("processing instructions are not allowed")),
                    Event::DocType(_) => return Err(self.err("DTDs (<!DOCTYPE>) are not allowed")),
                    Event::Eof => return Err(self.err("unexpected end of the document in the narrative div")),
                }
            }
        }
        let end = usize::try_from(self.r.buffer_position()).unwrap_or(usize::MAX);
        let raw = match self.src.get(start..end) {
            Some(raw) if raw.starts_with('<') && raw.ends_with('>') => raw,
            _ => return Err(self.err("the narrative div could not be captured")),
        };
        let mut div = if raw.contains('\r') { raw.replace("\r\n", "\n").replace('\r', "\n") } else { raw.to_owned() };
        if !declared {
            let decl = match prefix.as_deref().map(std::str::from_utf8) {
                None => format!(" xmlns=\"{XHTML_NS}\""),
                Some(Ok(p)) => format!(" xmlns:{p}=\"{XHTML_NS}\""),
                Some(Err(_)) => return Err(self.err("an element name is not UTF-8")),
            };
            div.insert_str(1 + qname_len, &decl);
        }
        Ok(div)
    }
}

/// Builds the JSON members: arrays for repeating elements, `_name` for primitive ids and
/// extensions (with `null` placeholders in repeating ones).
fn finish(members: Vec<Member>, map: &mut Map<String, Value>) {
    for m in members {
        let mut values = Vec::with_capacity(m.items.len());
        let mut exts = Vec::with_capacity(m.items.len());
        for item in m.items {
            match item {
                Item::Prim(v, e) => {
                    values.push(v.unwrap_or(Value::Null));
                    exts.push(e.map_or(Value::Null, Value::Object));
                }
                Item::Val(v) => {
                    values.push(v);
                    exts.push(Value::Null);
                }
            }
        }
        let ext_key = format!("_{}", m.key);
        if m.repeats {
            if values.iter().any(|v| !v.is_null()) {
                map.insert(m.key, Value::Array(values));
            }
            if exts.iter().any(|v| !v.is_null()) {
                map.insert(ext_key, Value::Array(exts));
            }
        } else {
            if let Some(v) = values.into_iter().next().filter(|v| !v.is_null()) {
                map.insert(m.key, v);
            }
            if let Some(e) = exts.into_iter().next().filter(|v| !v.is_null()) {
                map.insert(ext_key, e);
            }
        }
    }
}

/// FHIR `integer`: `-?(0|[1-9][0-9]*)`.
fn is_integer(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0'))
}

/// FHIR `decimal`: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_decimal(s: &str) -> bool {
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let frac_ok = frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
    let exp_ok = exp.is_none_or(|e| {
        let d = e.strip_prefix(['+', '-']).unwrap_or(e);
        !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
    });
    is_integer(int) && frac_ok && exp_ok
}

/// A short description of a quick-xml error that never quotes document content.
fn describe(e: &quick_xml::Error) -> String {
    use quick_xml::Error as E;
    use quick_xml::errors::IllFormedError as I;
    match e {
        E::Syntax(s) => s.to_string(),
        // Element names are structure, not content.
        E::IllFormed(I::MismatchedEndTag { expected, found }) => {
            format!("end tag </{found}> does not close <{expected}>")
        }
        E::IllFormed(I::UnmatchedEndTag(name)) => format!("end tag </{name}> has no start tag"),
        E::IllFormed(I::MissingEndTag(name)) => format!("element <{name}> is not closed"),
        E::IllFormed(_) => "the document is not well-formed".to_owned(),
        E::InvalidAttr(_) => "malformed attribute".to_owned(),
        E::Encoding(_) => "the document is not UTF-8".to_owned(),
        E::Escape(_) => "undefined entity or bad character reference".to_owned(),
        E::Namespace(_) => "undeclared or invalid namespace prefix".to_owned(),
        E::Io(_) => "read error".to_owned(),
    }
}
