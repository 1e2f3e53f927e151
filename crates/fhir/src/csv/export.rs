//! Export: one resource as rows of its layout's tables.
//!
//! Columns *take* their values out of a working copy of the resource; what is left afterwards
//! (extensions, element ids, codings' version/userSelected, elements beyond the column depth,
//! rare choice types, values of an unexpected JSON kind, empty strings) becomes rows of the
//! extension table. Nothing is dropped silently, which is what makes the round trip lossless.

use serde_json::{Map, Value};

use crate::FhirError;
use crate::validate::definitions;
use crate::validate::model::{Definitions, is_primitive, type_suffix_matches};

use super::layout::{Cursor, Kind, Layout, Step, TableDef, TableKind, child, layout};
use super::path::{get_mut, is_name, join_index, join_key};

/// How a FHIR primitive is written in JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum JsonKind {
    Bool,
    Integer,
    Decimal,
    Text,
}

pub(super) fn json_kind(ty: &str) -> JsonKind {
    match ty {
        "boolean" => JsonKind::Bool,
        "integer" | "unsignedInt" | "positiveInt" => JsonKind::Integer,
        "decimal" => JsonKind::Decimal,
        _ => JsonKind::Text,
    }
}

/// The cell text of a primitive of type `ty`, if `v` has the JSON kind the type calls for.
/// Empty strings have no cell form (an empty cell means absent).
fn cell_of(v: &Value, ty: &str) -> Option<String> {
    match (json_kind(ty), v) {
        (JsonKind::Bool, Value::Bool(b)) => Some(b.to_string()),
        (JsonKind::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        (JsonKind::Decimal, Value::Number(n)) => Some(n.to_string()),
        (JsonKind::Text, Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// One resource as rows: (index into `tables(resource_type)`, cells aligned with that table's
/// columns). Err when the resource has no `resourceType` with a layout, no `id`, or holds
/// something no row can carry (a property name that is not a name, an extension that is not
/// a JSON object).
pub fn flatten(resource: &Value) -> Result<Vec<(usize, Vec<String>)>, FhirError> {
    let rt = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or_else(|| FhirError::Csv("resource without resourceType".to_string()))?;
    let l = layout(rt)?;
    let id = match resource.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(FhirError::Csv(format!("{rt} without id: the id is the key of every table"))),
    };
    let mut rest = resource.clone();
    if let Value::Object(m) = &mut rest {
        m.shift_remove("resourceType");
        m.shift_remove("id");
    }
    let mut rows = Vec::new();
    for (ti, t) in l.tables.iter().enumerate() {
        if t.kind == TableKind::Extension {
            continue;
        }
        for (positions, steps) in items(&rest, t) {
            let Some(item) = get_mut(&mut rest, &steps) else { continue };
            let mut cells = vec![id.clone()];
            cells.extend(positions.iter().map(usize::to_string));
            match t.kind {
                TableKind::Main | TableKind::Objects => {
                    if !item.is_object() {
                        continue;
                    }
                    for c in &t.columns {
                        cells.push(take(item, &c.steps, &c.ty).unwrap_or_default());
                    }
                }
                TableKind::Primitives => {
                    let ty = t.columns.first().map(|c| c.ty.as_str()).unwrap_or("string");
                    let Some(cell) = cell_of(item, ty) else { continue };
                    // An empty object marks "taken" without shifting the positions after it.
                    *item = Value::Object(Map::new());
                    cells.push(cell);
                }
                TableKind::Json => {
                    if !item.is_object() {
                        continue;
                    }
                    cells.push(item.to_string());
                    *item = Value::Object(Map::new());
                }
                TableKind::Extension => continue,
            }
            rows.push((ti, cells));
        }
    }
    let defs = definitions();
    let root = defs.types.get(rt).map(|td| Cursor { td, idx: 0 });
    let mut w = Leftovers { defs, layout: l, id: &id, rows: Vec::new() };
    if let Value::Object(m) = &rest {
        w.object(m, "", "", root)?;
    }
    let ext = l.extension_table();
    rows.extend(w.rows.into_iter().map(|r| (ext, r)));
    Ok(rows)
}

/// The items of a table in a resource: (positions of the repetitions, JSON steps to the item).
fn items(root: &Value, t: &TableDef) -> Vec<(Vec<usize>, Vec<Step>)> {
    let mut out = vec![(Vec::new(), Vec::new(), root)];
    let last = t.steps.len().saturating_sub(1);
    for (n, (key, repeats)) in t.steps.iter().enumerate() {
        let mut next = Vec::new();
        for (pos, steps, v) in out {
            let Some(child) = v.get(key.as_str()) else { continue };
            let mut steps = steps.clone();
            steps.push(Step::Key(key.clone()));
            if !*repeats {
                next.push((pos, steps, child));
                continue;
            }
            let Some(arr) = child.as_array() else { continue };
            let from = if n == last { t.min_pos } else { 0 };
            for (i, item) in arr.iter().enumerate().skip(from) {
                let mut p = pos.clone();
                p.push(i);
                let mut s = steps.clone();
                s.push(Step::Index(i));
                next.push((p, s, item));
            }
        }
        out = next;
    }
    out.into_iter().map(|(p, s, _)| (p, s)).collect()
}

/// Takes the primitive at `steps` below `item` if its JSON kind fits `ty`; the cell text.
fn take(item: &mut Value, steps: &[Step], ty: &str) -> Option<String> {
    let (last, parents) = steps.split_last()?;
    let parent = get_mut(item, parents)?;
    match (parent, last) {
        (Value::Object(m), Step::Key(k)) => {
            let cell = cell_of(m.get(k)?, ty)?;
            m.shift_remove(k);
            Some(cell)
        }
        _ => None,
    }
}

/// Collects the extension-table rows for what the columns left.
struct Leftovers<'a> {
    defs: &'static Definitions,
    layout: &'a Layout,
    id: &'a str,
    rows: Vec<Vec<String>>,
}

/// Whether a value is nothing (taken, or an empty container).
fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

impl Leftovers<'_> {
    fn row(&mut self, path: &str, url: &str, ty: &str, value: String) {
        self.rows.push(vec![self.id.to_string(), path.to_string(), url.to_string(), ty.to_string(), value]);
    }

    /// A primitive value at `path` whose element type is `ty` (None: unknown element).
    fn leaf(&mut self, path: &str, v: &Value, ty: Option<&str>) {
        let ty = ty.filter(|t| is_primitive(t)).unwrap_or(match v {
            Value::Bool(_) => "boolean",
            Value::Number(_) => "decimal",
            _ => "string",
        });
        match (cell_of(v, ty), v) {
            (Some(cell), _) => self.row(path, "", ty, cell),
            (None, Value::String(s)) if s.is_empty() && json_kind(ty) == JsonKind::Text => {
                self.row(path, "", ty, String::new())
            }
            _ => self.row(path, "", "json", v.to_string()),
        }
    }

    /// A whole element without columns, as FHIR JSON.
    fn whole(&mut self, path: &str, v: &Value, ty: &str) {
        let ty = if ty.is_empty() || is_primitive(ty) { "json" } else { ty };
        self.row(path, "", ty, v.to_string());
    }

    /// Leftovers of an object at `path` (`free`: the same path without positions).
    fn object(
        &mut self,
        m: &Map<String, Value>,
        path: &str,
        free: &str,
        cur: Option<Cursor<'static>>,
    ) -> Result<(), FhirError> {
        for (k, v) in m {
            if is_empty(v) {
                continue;
            }
            if !is_name(k) {
                return Err(FhirError::Csv(format!("{}: a property name at {path} cannot be written", self.id)));
            }
            let p = join_key(path, k);
            let f = join_key(free, k);
            if k == "extension" || k == "modifierExtension" {
                self.extensions(v, &p)?;
                continue;
            }
            if let Some(base) = k.strip_prefix('_') {
                // id and extensions of a primitive (`_birthDate`, `_given[1]`).
                let elem = self.defs.types.get("Element").map(|td| Cursor { td, idx: 0 });
                let base_ty = cur.and_then(|c| child(self.defs, c, base)).map(|(_, t)| t);
                match v {
                    Value::Object(o) => self.object(o, &p, &f, elem)?,
                    Value::Array(a) => {
                        for (i, it) in a.iter().enumerate() {
                            match it {
                                Value::Object(o) => self.object(o, &join_index(&p, i), &f, elem)?,
                                Value::Null => {}
                                other => self.whole(&join_index(&p, i), other, ""),
                            }
                        }
                    }
                    other => self.whole(&p, other, base_ty.unwrap_or("")),
                }
                continue;
            }
            let (kind, ty) = match cur.and_then(|c| child(self.defs, c, k)) {
                Some((kind, ty)) => (Some(kind), ty),
                None => (None, ""),
            };
            let sub = match kind {
                Some(Kind::Complex(c, _)) => Some(c),
                _ => None,
            };
            let prim = if ty.is_empty() { None } else { Some(ty) };
            let covered = self.layout.covered.contains(&f);
            match v {
                // `"given": [null]` next to `"_given": [{…}]`: positions without values, kept as such.
                Value::Array(a) if a.iter().all(Value::is_null) => self.row(&p, "", "json", v.to_string()),
                Value::Array(a) => {
                    for (i, it) in a.iter().enumerate() {
                        let pi = join_index(&p, i);
                        match it {
                            _ if is_empty(it) => {}
                            Value::Object(o) if covered && sub.is_some() => self.object(o, &pi, &f, sub)?,
                            Value::Object(_) | Value::Array(_) => self.whole(&pi, it, ty),
                            _ => self.leaf(&pi, it, prim),
                        }
                    }
                }
                Value::Object(o) if covered && sub.is_some() => self.object(o, &p, &f, sub)?,
                Value::Object(_) => self.whole(&p, v, ty),
                _ => self.leaf(&p, v, prim),
            }
        }
        Ok(())
    }

    /// Extension rows: url and value[x] in the row, the rest (id, nested extensions, `_valueX`)
    /// as further rows below the extension's path.
    fn extensions(&mut self, v: &Value, p: &str) -> Result<(), FhirError> {
        let Value::Array(items) = v else {
            return Err(FhirError::Csv(format!("{}: {p} is not a JSON array", self.id)));
        };
        let ext = self.defs.types.get("Extension").map(|td| Cursor { td, idx: 0 });
        for (i, it) in items.iter().enumerate() {
            let pi = join_index(p, i);
            let Value::Object(m) = it else {
                return Err(FhirError::Csv(format!("{}: extension {pi} is not a JSON object", self.id)));
            };
            let mut rest = m.clone();
            let url = match rest.get("url") {
                Some(Value::String(s)) if !s.is_empty() => {
                    let s = s.clone();
                    rest.shift_remove("url");
                    s
                }
                _ => String::new(),
            };
            let (mut vt, mut val) = (String::new(), String::new());
            let value_key = rest.keys().find(|k| value_type(self.defs, k).is_some()).cloned();
            if let Some(k) = value_key
                && let Some(t) = value_type(self.defs, &k)
                && let Some(x) = rest.get(&k)
            {
                let cell = if is_primitive(t) {
                    cell_of(x, t)
                } else if x.is_object() {
                    Some(x.to_string())
                } else {
                    None
                };
                if let Some(c) = cell {
                    vt = t.to_string();
                    val = c;
                    rest.shift_remove(&k);
                }
            }
            self.row(&pi, &url, &vt, val);
            self.object(&rest, &pi, "extension", ext)?;
        }
        Ok(())
    }
}

/// The data type of an extension's `valueX` property (`valueCodeableConcept` → CodeableConcept).
pub(super) fn value_type(defs: &'static Definitions, key: &str) -> Option<&'static str> {
    let suffix = key.strip_prefix("value")?;
    if !suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
        return None;
    }
    defs.all_types.iter().find(|t| type_suffix_matches(t, suffix)).map(String::as_str)
}
