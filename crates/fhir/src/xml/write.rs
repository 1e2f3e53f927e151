//! JSON → XML.

use std::borrow::Cow;
use std::fmt::Display;

use quick_xml::Reader;
use quick_xml::events::Event;
use serde_json::{Map, Value};

use super::{
    MAX_ELEMENT_DEPTH, MAX_RESOURCE_DEPTH, Shape, XHTML_NS, check_attributes, is_extension, is_xml_char, is_xml_name,
    resource_def, shape,
};
use crate::FhirError;
use crate::validate::definitions;
use crate::validate::model::{Definitions, TypeDef};

type Result<T = ()> = std::result::Result<T, FhirError>;

/// Writes one resource as a complete XML document.
pub(super) fn document(resource: &Value) -> Result<String> {
    let mut w =
        Writer { defs: definitions(), out: String::with_capacity(1024), path: Vec::new(), resources: 0, elements: 0 };
    w.out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    w.resource(resource, true)?;
    Ok(w.out)
}

struct Writer<'v> {
    defs: &'static Definitions,
    out: String,
    /// Element names from the root to the current element, for diagnostics.
    path: Vec<&'v str>,
    resources: usize,
    elements: usize,
}

/// The children of node `idx` in R4 XML order. Trees from the hand tables get the implicit
/// `id`/`extension`/`modifierExtension` of backbone elements appended last; R4 puts them first
/// (Element, then BackboneElement, then the element's own children).
fn ordered_children(td: &TypeDef, idx: usize) -> Vec<usize> {
    let kids = td.children(idx);
    let name = |k: usize| td.nodes.get(k).map_or("", |n| n.name.as_str());
    let inherited = ["id", "extension", "modifierExtension"];
    if idx == 0 {
        // Roots inherit in order (Resource, DomainResource / Element, BackboneElement).
        return kids.to_vec();
    }
    let mut out: Vec<usize> =
        inherited.iter().filter_map(|want| kids.iter().copied().find(|&k| name(k) == *want)).collect();
    out.extend(kids.iter().copied().filter(|&k| !inherited.contains(&name(k))));
    out
}

/// Appends `value` escaped for a double-quoted attribute; `false` if it holds a character XML
/// cannot represent at all.
fn push_attr_value(out: &mut String, value: &str) -> bool {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            // Literal whitespace in attributes is normalised to spaces by XML parsers.
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if !is_xml_char(c) => return false,
            c => out.push(c),
        }
    }
    true
}

/// The XML text of a JSON primitive.
fn primitive_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

impl<'v> Writer<'v> {
    fn err(&self, msg: impl Display) -> FhirError {
        if self.path.is_empty() {
            FhirError::Xml(msg.to_string())
        } else {
            FhirError::Xml(format!("{}: {msg}", self.path.join(".")))
        }
    }

    fn attr(&mut self, name: &str, value: &str) -> Result {
        self.out.push(' ');
        self.out.push_str(name);
        self.out.push_str("=\"");
        if !push_attr_value(&mut self.out, value) {
            return Err(self.err(format_args!("{name} contains a character that XML cannot represent")));
        }
        self.out.push('"');
        Ok(())
    }

    fn string_attr(&mut self, name: &str, v: &Value) -> Result {
        match v.as_str() {
            Some(s) => self.attr(name, s),
            None => Err(self.err(format_args!("{name} must be a JSON string"))),
        }
    }

    fn open_element(&mut self) -> Result {
        self.elements += 1;
        if self.elements > MAX_ELEMENT_DEPTH {
            return Err(self.err(format_args!("elements are nested more than {MAX_ELEMENT_DEPTH} levels deep")));
        }
        Ok(())
    }

    /// A resource element (`<Patient>…</Patient>`), the document root if `root`.
    fn resource(&mut self, v: &'v Value, root: bool) -> Result {
        if self.resources >= MAX_RESOURCE_DEPTH {
            return Err(self.err(format_args!("resources are nested more than {MAX_RESOURCE_DEPTH} levels deep")));
        }
        let Some(obj) = v.as_object() else { return Err(self.err("a resource must be a JSON object")) };
        let Some(rt) = obj.get("resourceType").and_then(Value::as_str) else {
            return Err(self.err("resourceType is missing or not a string"));
        };
        if !is_xml_name(rt) {
            return Err(self.err("resourceType is not a resource type name"));
        }
        self.path.push(rt);
        self.resources += 1;
        self.out.push('<');
        self.out.push_str(rt);
        if root {
            self.out.push_str(" xmlns=\"http://hl7.org/fhir\"");
        }
        self.out.push('>');
        match resource_def(self.defs, rt) {
            Some(td) => self.children(td, 0, obj, true)?,
            // No definition (CapabilityStatement, …): JSON key order and JSON kinds.
            None => self.generic_children(obj, true, false)?,
        }
        self.out.push_str("</");
        self.out.push_str(rt);
        self.out.push('>');
        self.resources -= 1;
        self.path.pop();
        Ok(())
    }

    /// The child elements of node `idx` of `td` from the members of `obj`, in definition order.
    fn children(&mut self, td: &'static TypeDef, idx: usize, obj: &'v Map<String, Value>, is_resource: bool) -> Result {
        let defs = self.defs;
        let ext_root = is_extension(td, idx);
        let order = ordered_children(td, idx);
        let mut members: Vec<(usize, &'v str, usize, &'static str)> = Vec::new();
        for key in obj.keys() {
            let key = key.as_str();
            if is_resource && key == "resourceType" {
                continue;
            }
            let primitive_ext = key.starts_with('_');
            let name = key.strip_prefix('_').unwrap_or(key);
            // `id` of an element and `Extension.url` are attributes, written by the caller.
            if (!is_resource && name == "id") || (ext_root && name == "url") {
                if primitive_ext {
                    return Err(self.err(format_args!("{key}: {name} is an XML attribute and cannot have extensions")));
                }
                continue;
            }
            let Some((ci, tcode)) = td.child_for_key(idx, name, &defs.all_types) else {
                return Err(self.err(format_args!("unknown element {key}")));
            };
            if primitive_ext && obj.contains_key(name) {
                continue; // written together with the value
            }
            let pos = order.iter().position(|&k| k == ci).unwrap_or(usize::MAX);
            members.push((pos, name, ci, tcode));
        }
        members.sort_by_key(|m| m.0);
        for (_, name, ci, tcode) in members {
            let ext = obj.get(&format!("_{name}"));
            self.member(td, ci, tcode, name, obj.get(name), ext)?;
        }
        Ok(())
    }

    /// All XML elements of one JSON member (`name` and its `_name` sibling).
    fn member(
        &mut self,
        td: &'static TypeDef,
        ci: usize,
        tcode: &'static str,
        name: &'v str,
        v: Option<&'v Value>,
        ext: Option<&'v Value>,
    ) -> Result {
        let repeats = td.nodes.get(ci).is_some_and(|n| n.max.repeats());
        self.path.push(name);
        match shape(self.defs, td, ci, tcode) {
            Shape::Primitive(_) if repeats => {
                let values = self.array_of(v)?;
                let exts = self.array_of(ext)?;
                for i in 0..values.len().max(exts.len()) {
                    let value = values.get(i).filter(|x| !x.is_null());
                    let e = exts.get(i).filter(|x| !x.is_null());
                    if value.is_none() && e.is_none() {
                        return Err(self.err("a repeating primitive has null at a position without extension"));
                    }
                    self.primitive(name, value, e)?;
                }
            }
            Shape::Primitive(_) => {
                if v.is_some_and(Value::is_array) || ext.is_some_and(Value::is_array) {
                    return Err(self.err("the element does not repeat and must not be a JSON array"));
                }
                self.primitive(name, v, ext)?;
            }
            Shape::Xhtml => match (v, ext) {
                (Some(Value::String(s)), None) => self.xhtml(s)?,
                _ => return Err(self.err("the XHTML div must be a JSON string without extensions")),
            },
            sh => {
                if ext.is_some() {
                    return Err(self.err(format_args!("_{name} is only allowed for primitive elements")));
                }
                let items: Vec<&'v Value> = match v {
                    Some(Value::Array(a)) if repeats => a.iter().collect(),
                    Some(Value::Array(_)) => {
                        return Err(self.err("the element does not repeat and must not be a JSON array"));
                    }
                    Some(_) if repeats => return Err(self.err("the element repeats and must be a JSON array")),
                    Some(x) => vec![x],
                    None => Vec::new(),
                };
                for item in items {
                    match sh {
                        Shape::Resource => self.wrapped_resource(name, item)?,
                        Shape::Complex(dt, di) => self.complex(name, dt, di, item)?,
                        _ => self.generic_element(name, item)?,
                    }
                }
            }
        }
        self.path.pop();
        Ok(())
    }

    fn array_of(&self, v: Option<&'v Value>) -> Result<&'v [Value]> {
        match v {
            None => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(self.err("the element repeats and must be a JSON array")),
        }
    }

    /// An element of a data type or backbone element.
    fn complex(&mut self, name: &str, dt: &'static TypeDef, di: usize, item: &'v Value) -> Result {
        let Some(obj) = item.as_object() else { return Err(self.err("the element must be a JSON object")) };
        if obj.is_empty() {
            return Err(self.err("the element must not be an empty JSON object"));
        }
        self.open_element()?;
        self.out.push('<');
        self.out.push_str(name);
        if let Some(id) = obj.get("id") {
            self.string_attr("id", id)?;
        }
        if is_extension(dt, di)
            && let Some(url) = obj.get("url")
        {
            self.string_attr("url", url)?;
        }
        let mark = self.out.len();
        self.out.push('>');
        self.children(dt, di, obj, false)?;
        self.close(name, mark);
        self.elements -= 1;
        Ok(())
    }

    /// Ends an element opened at `mark` (the position of its `>`): `/>` if nothing followed.
    fn close(&mut self, name: &str, mark: usize) {
        if self.out.len() == mark + 1 {
            self.out.truncate(mark);
            self.out.push_str("/>");
        } else {
            self.out.push_str("</");
            self.out.push_str(name);
            self.out.push('>');
        }
    }

    /// A primitive element: `value` attribute, `id` attribute and extensions from `_name`.
    fn primitive(&mut self, name: &str, value: Option<&'v Value>, ext: Option<&'v Value>) -> Result {
        if value.is_none() && ext.is_none() {
            return Ok(());
        }
        self.open_element()?;
        self.out.push('<');
        self.out.push_str(name);
        let mut extensions: &'v [Value] = &[];
        if let Some(e) = ext {
            let Some(eo) = e.as_object() else {
                return Err(self.err(format_args!("_{name} must be a JSON object")));
            };
            for (k, x) in eo {
                match k.as_str() {
                    "id" => self.string_attr("id", x)?,
                    "extension" => match x {
                        Value::Array(a) => extensions = a,
                        _ => return Err(self.err(format_args!("_{name}.extension must be a JSON array"))),
                    },
                    _ => return Err(self.err(format_args!("unknown element _{name}.{k}"))),
                }
            }
        }
        if let Some(v) = value {
            let Some(text) = primitive_text(v) else {
                return Err(self.err("a primitive value must be a JSON string, number or boolean"));
            };
            self.attr("value", &text)?;
        }
        if extensions.is_empty() {
            self.out.push_str("/>");
        } else {
            let Some(ext_td) = self.defs.types.get("Extension") else {
                return Err(self.err("the Extension definition is missing"));
            };
            self.out.push('>');
            self.path.push("extension");
            for item in extensions {
                self.complex("extension", ext_td, 0, item)?;
            }
            self.path.pop();
            self.out.push_str("</");
            self.out.push_str(name);
            self.out.push('>');
        }
        self.elements -= 1;
        Ok(())
    }

    /// `Narrative.div`: the XHTML string, checked and written as it is.
    fn xhtml(&mut self, s: &str) -> Result {
        let div = s.trim();
        let declared = check_div(div).map_err(|m| self.err(m))?;
        if declared {
            self.out.push_str(div);
        } else {
            // JSON narratives should declare the namespace; without it the div would be a FHIR element.
            let rest = div.strip_prefix("<div").unwrap_or(div);
            self.out.push_str("<div xmlns=\"");
            self.out.push_str(XHTML_NS);
            self.out.push('"');
            self.out.push_str(rest);
        }
        Ok(())
    }

    /// Members of an object without a definition, in JSON order.
    fn generic_children(&mut self, obj: &'v Map<String, Value>, is_resource: bool, ext_like: bool) -> Result {
        for (key, v) in obj {
            let key = key.as_str();
            if (is_resource && key == "resourceType")
                || (!is_resource && key == "id" && v.is_string())
                || (ext_like && key == "url" && v.is_string())
            {
                continue;
            }
            match key.strip_prefix('_') {
                Some(base) if obj.contains_key(base) => {}
                Some(base) => self.generic_member(base, None, Some(v))?,
                None => self.generic_member(key, Some(v), obj.get(&format!("_{key}")))?,
            }
        }
        Ok(())
    }

    fn generic_member(&mut self, name: &'v str, v: Option<&'v Value>, ext: Option<&'v Value>) -> Result {
        if !is_xml_name(name) {
            return Err(self.err("a JSON member name is not usable as an XML element name"));
        }
        self.path.push(name);
        let non_null = |x: &&'v Value| !x.is_null();
        match (v, ext) {
            (Some(Value::Array(values)), _) => {
                let exts: &[Value] = ext.and_then(Value::as_array).map_or(&[], Vec::as_slice);
                for (i, value) in values.iter().enumerate() {
                    self.generic_value(name, Some(value).filter(non_null), exts.get(i).filter(non_null))?;
                }
            }
            (None, Some(Value::Array(exts))) => {
                for e in exts {
                    self.generic_value(name, None, Some(e).filter(non_null))?;
                }
            }
            _ => self.generic_value(name, v, ext)?,
        }
        self.path.pop();
        Ok(())
    }

    fn generic_value(&mut self, name: &'v str, v: Option<&'v Value>, ext: Option<&'v Value>) -> Result {
        match v {
            None | Some(Value::Null) if ext.is_some() => self.primitive(name, None, ext),
            None | Some(Value::Null) => Err(self.err("null without extensions")),
            Some(Value::String(s)) if name == "div" && s.trim_start().starts_with("<div") => self.xhtml(s),
            Some(Value::String(_) | Value::Number(_) | Value::Bool(_)) => self.primitive(name, v, ext),
            Some(item @ Value::Object(o)) if o.get("resourceType").is_some_and(Value::is_string) => {
                self.wrapped_resource(name, item)
            }
            Some(item @ Value::Object(_)) => self.generic_element(name, item),
            Some(Value::Array(_)) => Err(self.err("nested JSON arrays cannot be written as XML")),
        }
    }

    /// An object element without a definition: `id` (and `url` of extensions) as attributes.
    /// A nested resource in its wrapper element: `<contained><Patient>…</Patient></contained>`.
    fn wrapped_resource(&mut self, name: &str, item: &'v Value) -> Result {
        self.open_element()?;
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
        self.resource(item, false)?;
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
        self.elements -= 1;
        Ok(())
    }

    fn generic_element(&mut self, name: &str, item: &'v Value) -> Result {
        let Some(obj) = item.as_object() else { return Err(self.err("the element must be a JSON object")) };
        self.open_element()?;
        self.out.push('<');
        self.out.push_str(name);
        if let Some(id) = obj.get("id").filter(|v| v.is_string()) {
            self.string_attr("id", id)?;
        }
        let ext_like = matches!(name, "extension" | "modifierExtension");
        if ext_like && let Some(url) = obj.get("url").filter(|v| v.is_string()) {
            self.string_attr("url", url)?;
        }
        let mark = self.out.len();
        self.out.push('>');
        self.generic_children(obj, false, ext_like)?;
        self.close(name, mark);
        self.elements -= 1;
        Ok(())
    }
}

/// Checks that a JSON `div` string is one well-formed XHTML `div` element that XML can carry as
/// it is; returns whether it declares the XHTML namespace itself.
pub(crate) fn check_div(div: &str) -> std::result::Result<bool, &'static str> {
    if !div.chars().all(is_xml_char) {
        return Err("the XHTML div contains a character that XML does not allow");
    }
    let mut r = Reader::from_str(div);
    let mut depth = 0usize;
    let mut root_seen = false;
    let mut declared = false;
    loop {
        let ev = r.read_event().map_err(|_| "the XHTML div is not well-formed XML")?;
        match ev {
            Event::Start(ref e) | Event::Empty(ref e) => {
                // The div is written as it is: an attribute given twice, an undefined entity in
                // a value or a thousand attributes would make the whole document unreadable.
                check_attributes(e).map_err(|_| "the XHTML div has a malformed, repeated or invalid attribute")?;
                if depth == 0 {
                    if root_seen {
                        return Err("the XHTML div must be a single div element");
                    }
                    root_seen = true;
                    if e.name().as_ref() != b"div" {
                        return Err("the XHTML narrative must be a single unprefixed div element");
                    }
                    for a in e.attributes() {
                        let a = a.map_err(|_| "the XHTML div has a malformed attribute")?;
                        if a.key.as_ref() == b"xmlns" {
                            if a.value.as_ref() != XHTML_NS.as_bytes() {
                                return Err("the XHTML div must be in the XHTML namespace");
                            }
                            declared = true;
                        }
                    }
                }
                if matches!(ev, Event::Start(_)) {
                    depth += 1;
                }
            }
            Event::End(_) => depth = depth.saturating_sub(1),
            Event::Text(t) => {
                if depth == 0 && !t.iter().all(u8::is_ascii_whitespace) {
                    return Err("the XHTML narrative has text outside the div element");
                }
            }
            Event::CData(_) if depth == 0 => return Err("the XHTML narrative has text outside the div element"),
            Event::CData(_) | Event::Comment(_) => {}
            Event::GeneralRef(g) => {
                if depth == 0 {
                    return Err("the XHTML narrative has text outside the div element");
                }
                if !known_reference(&g) {
                    return Err("the XHTML div uses an entity XML does not define (use a character reference)");
                }
            }
            Event::PI(_) | Event::DocType(_) | Event::Decl(_) => {
                return Err("the XHTML div must not contain processing instructions or DTDs");
            }
            Event::Eof => break,
        }
    }
    if !root_seen || depth != 0 {
        return Err("the XHTML div is not well-formed XML");
    }
    Ok(declared)
}

/// A predefined entity or a character reference to a character XML allows.
pub(super) fn known_reference(r: &[u8]) -> bool {
    match r {
        b"lt" | b"gt" | b"amp" | b"apos" | b"quot" => true,
        [b'#', b'x', hex @ ..] => std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .and_then(char::from_u32)
            .is_some_and(|c| c != '\0' && is_xml_char(c)),
        [b'#', dec @ ..] => std::str::from_utf8(dec)
            .ok()
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u32>().ok())
            .and_then(char::from_u32)
            .is_some_and(|c| c != '\0' && is_xml_char(c)),
        _ => false,
    }
}
