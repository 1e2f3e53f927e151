//! The layouts: tables and columns derived from the element definitions of `crate::validate`.
//!
//! Rules (docs/formats/csv.md states them for readers):
//! - a non-repeating primitive becomes a column named by its JSON path relative to the table;
//! - a non-repeating complex element is expanded into columns while the column name stays within
//!   [`MAX_COLUMN_DEPTH`] segments; a CodeableConcept puts its first coding inline as
//!   `X.system`/`X.code`/`X.display` (the `coding[0]` level is not in the name), and a Coding
//!   anywhere gets only system/code/display columns;
//! - a repeating element becomes a child table keyed by the resource id and one position column
//!   per repetition (`contact#`, `contact.telecom#`), bounded by [`MAX_TABLE_DEPTH`] and
//!   [`MAX_REPETITIONS`];
//! - choice elements get columns for primitive types and for [`CHOICE_COLUMN_TYPES`];
//! - `id` of elements, `extension`, `modifierExtension` and whatever has no column land in the
//!   `<Type>.extension` table (see `export`), `contained` in a one-JSON-column child table.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use crate::FhirError;
use crate::validate::definitions;
use crate::validate::model::{Definitions, TypeDef, is_primitive};

/// Most segments in a column name (`hospitalization.admitSource.code`).
pub(super) const MAX_COLUMN_DEPTH: usize = 3;
/// Most JSON property names from the resource to the element of a child table.
pub(super) const MAX_TABLE_DEPTH: usize = 4;
/// Most repetitions (position columns) in the key of a child table.
pub(super) const MAX_REPETITIONS: usize = 3;
/// Complex types that get columns when they are one of the types of a choice element; other
/// complex choices (Range, Ratio, Timing, SampledData, ...) are rare and go to the extension table.
pub(super) const CHOICE_COLUMN_TYPES: &[&str] = &["CodeableConcept", "Quantity", "Period", "Reference"];
/// Data types with a fixed, short column set: only these of their elements get columns, the rest
/// (Coding.version, Reference.identifier, Identifier.type/period/assigner, ...) goes to the
/// extension table. Every other type gets a column for each of its elements.
pub(super) const SHAPES: &[(&str, &[&str])] = &[
    ("Coding", &["system", "code", "display"]),
    ("Identifier", &["use", "system", "value"]),
    ("Reference", &["reference", "display"]),
];

/// One step of a JSON path: a property name or a fixed array position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    Key(String),
    Index(usize),
}

/// What the rows of a table stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TableKind {
    /// One row per resource.
    Main,
    /// One row per item of a repeating complex element.
    Objects,
    /// One row per value of a repeating primitive element (one value column).
    Primitives,
    /// One row per item held as FHIR JSON (`contained`).
    Json,
    /// The `<Type>.extension` table: one row per extension or value without a column.
    Extension,
}

/// One element column of a table.
#[derive(Debug, Clone)]
pub(super) struct ColDef {
    pub name: String,
    /// JSON path from the table's item to the value (empty for a primitive/JSON item itself).
    pub steps: Vec<Step>,
    /// FHIR primitive type code, or `json` for a cell holding FHIR JSON.
    pub ty: String,
    /// The header must have this column (elements with minimum cardinality 1 down from the item).
    pub required: bool,
}

/// One table of a layout.
#[derive(Debug, Clone)]
pub(super) struct TableDef {
    pub name: String,
    pub kind: TableKind,
    /// JSON property names from the resource to the table's element; `true` where the element
    /// repeats (one position column each).
    pub steps: Vec<(String, bool)>,
    /// Smallest position of the last repetition (1 for codings after the inline first coding).
    pub min_pos: usize,
    /// Key columns: `id`, then the position columns.
    pub keys: Vec<String>,
    pub columns: Vec<ColDef>,
}

impl TableDef {
    /// All header names: keys then element columns.
    pub fn header(&self) -> Vec<String> {
        self.keys.iter().cloned().chain(self.columns.iter().map(|c| c.name.clone())).collect()
    }
}

/// The layout of one resource type.
#[derive(Debug)]
pub(super) struct Layout {
    pub tables: Vec<TableDef>,
    /// Index-free JSON paths (`name.given`) at or above any column or table: the extension table
    /// splits leftovers under these into single values; elsewhere an element is one JSON value.
    pub covered: HashSet<String>,
}

impl Layout {
    pub fn extension_table(&self) -> usize {
        self.tables.len().saturating_sub(1)
    }
}

/// The layout of a resource type, built once per process for every type with definitions.
pub(super) fn layout(resource_type: &str) -> Result<&'static Layout, FhirError> {
    static LAYOUTS: OnceLock<HashMap<String, Layout>> = OnceLock::new();
    let all = LAYOUTS.get_or_init(|| {
        let defs = definitions();
        defs.resource_types.iter().filter_map(|rt| Some((rt.clone(), build(defs, rt)?))).collect()
    });
    all.get(resource_type).ok_or_else(|| {
        FhirError::Csv(format!("no CSV layout for resource type {resource_type}: it has no definitions"))
    })
}

/// A position in a type tree.
#[derive(Clone, Copy)]
pub(super) struct Cursor<'d> {
    pub td: &'d TypeDef,
    pub idx: usize,
}

/// What a child element holds, by its (chosen) type.
pub(super) enum Kind<'d> {
    Primitive(&'d str),
    /// Complex element: where its children are, and its type name.
    Complex(Cursor<'d>, &'d str),
    /// A resource (`contained`, `Bundle.entry.resource`).
    Resource,
    Unknown,
}

/// Resolves the kind of child `c` of `td` for type code `ty` (the validator's rule: a node with
/// children of its own is a backbone element of the same tree).
pub(super) fn kind_of<'d>(defs: &'d Definitions, td: &'d TypeDef, c: usize, ty: &'d str) -> Kind<'d> {
    if !td.children(c).is_empty() {
        return Kind::Complex(Cursor { td, idx: c }, "BackboneElement");
    }
    if is_primitive(ty) {
        return Kind::Primitive(ty);
    }
    if ty == "Resource" || ty == "DomainResource" || defs.resource_types.contains(ty) {
        return Kind::Resource;
    }
    match defs.types.get(ty) {
        Some(t) => Kind::Complex(Cursor { td: t, idx: 0 }, ty),
        None => Kind::Unknown,
    }
}

/// The child of a cursor a JSON property refers to, with its kind.
pub(super) fn child<'d>(defs: &'d Definitions, cur: Cursor<'d>, key: &str) -> Option<(Kind<'d>, &'d str)> {
    let (c, ty) = cur.td.child_for_key(cur.idx, key, &defs.all_types)?;
    let kind = kind_of(defs, cur.td, c, ty);
    let name = match &kind {
        Kind::Complex(_, n) => n,
        _ => ty,
    };
    Some((kind, name))
}

/// Upper-cases the first letter (`string` → `String`), for choice and extension value names.
pub(super) fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

/// `here` one element further down.
fn descend(here: &Here, key: &str, required: bool) -> Here {
    let mut h = here.clone();
    h.steps.push(Step::Key(key.to_string()));
    h.names.push(key.to_string());
    h.required = here.required && required;
    h
}

struct Builder<'d> {
    defs: &'d Definitions,
    rt: &'d str,
    tables: Vec<TableDef>,
    covered: HashSet<String>,
}

/// Where expansion currently is, inside one table.
#[derive(Clone)]
struct Here {
    table: usize,
    /// JSON steps from the table item.
    steps: Vec<Step>,
    /// Column name segments.
    names: Vec<String>,
    /// Every element from the item down to here has minimum cardinality ≥ 1.
    required: bool,
}

fn build(defs: &Definitions, rt: &str) -> Option<Layout> {
    let td = defs.types.get(rt)?;
    let mut b = Builder { defs, rt, tables: Vec::new(), covered: HashSet::new() };
    b.tables.push(TableDef {
        name: rt.to_string(),
        kind: TableKind::Main,
        steps: Vec::new(),
        min_pos: 0,
        keys: vec!["id".to_string()],
        columns: Vec::new(),
    });
    b.covered.insert("id".to_string());
    let here = Here { table: 0, steps: Vec::new(), names: Vec::new(), required: true };
    b.expand(Cursor { td, idx: 0 }, &here);
    b.tables.push(TableDef {
        name: format!("{rt}.extension"),
        kind: TableKind::Extension,
        steps: Vec::new(),
        min_pos: 0,
        keys: vec!["id".to_string()],
        columns: ["path", "url", "valueType", "value"]
            .iter()
            .map(|n| ColDef { name: n.to_string(), steps: Vec::new(), ty: "string".to_string(), required: true })
            .collect(),
    });
    Some(Layout { tables: b.tables, covered: b.covered })
}

impl<'d> Builder<'d> {
    /// JSON property names from the resource to `here` (table steps, then item steps).
    fn json_keys(&self, here: &Here) -> Vec<String> {
        let mut keys: Vec<String> =
            self.tables.get(here.table).map(|t| t.steps.iter().map(|s| s.0.clone()).collect()).unwrap_or_default();
        keys.extend(here.steps.iter().filter_map(|s| match s {
            Step::Key(k) => Some(k.clone()),
            Step::Index(_) => None,
        }));
        keys
    }

    fn cover(&mut self, keys: &[String]) {
        for n in 1..=keys.len() {
            if let Some(p) = keys.get(..n) {
                self.covered.insert(p.join("."));
            }
        }
    }

    fn add_column(&mut self, here: &Here, key: &str, ty: &str, required: bool) {
        let mut names = here.names.clone();
        names.push(key.to_string());
        let mut steps = here.steps.clone();
        steps.push(Step::Key(key.to_string()));
        let mut keys = self.json_keys(here);
        keys.push(key.to_string());
        self.cover(&keys);
        let col = ColDef { name: names.join("."), steps, ty: ty.to_string(), required: here.required && required };
        if let Some(t) = self.tables.get_mut(here.table) {
            t.columns.push(col);
        }
    }

    /// Adds the columns (and child tables) of the children of `cur` at `here`.
    fn expand(&mut self, cur: Cursor<'d>, here: &Here) {
        let defs = self.defs;
        for &c in cur.td.children(cur.idx) {
            let Some(node) = cur.td.nodes.get(c) else { continue };
            let name = node.name.as_str();
            // Element ids, extensions: the extension table. The resource id is the key column.
            if matches!(name, "id" | "extension" | "modifierExtension") {
                continue;
            }
            let required = node.min >= 1;
            if node.choice {
                if node.types.iter().any(|t| t == "*") {
                    continue;
                }
                for t in &node.types {
                    let key = format!("{name}{}", capitalize(t));
                    match kind_of(defs, cur.td, c, t) {
                        Kind::Primitive(p) if here.names.len() < MAX_COLUMN_DEPTH => {
                            self.add_column(here, &key, p, false)
                        }
                        Kind::Complex(sub, tn) if CHOICE_COLUMN_TYPES.contains(&tn) => {
                            self.complex(sub, tn, &descend(here, &key, false));
                        }
                        _ => {}
                    }
                }
                continue;
            }
            let ty = node.types.first().map(String::as_str).unwrap_or("");
            let kind = kind_of(defs, cur.td, c, ty);
            if node.max.repeats() {
                self.child_table(here, name, kind);
                continue;
            }
            match kind {
                Kind::Primitive(p) if here.names.len() < MAX_COLUMN_DEPTH => self.add_column(here, name, p, required),
                Kind::Complex(sub, tn) => self.complex(sub, tn, &descend(here, name, required)),
                _ => {}
            }
        }
    }

    /// Columns of a single-valued complex element at `here` (its own name already in `here`).
    fn complex(&mut self, cur: Cursor<'d>, type_name: &str, here: &Here) {
        // Room for at least one more name segment below this element.
        if here.names.len() >= MAX_COLUMN_DEPTH {
            return;
        }
        if type_name == "CodeableConcept" {
            let mut first = here.clone();
            first.steps.push(Step::Key("coding".to_string()));
            first.steps.push(Step::Index(0));
            first.required = false;
            if let Some(coding) = self.defs.types.get("Coding") {
                let cur = Cursor { td: coding, idx: 0 };
                self.complex(cur, "Coding", &first);
                self.child_table_from(here, "coding", Kind::Complex(cur, "Coding"), 1);
            }
            self.add_column(here, "text", "string", false);
            return;
        }
        if let Some((_, names)) = SHAPES.iter().find(|s| s.0 == type_name) {
            for &c in cur.td.children(cur.idx) {
                let Some(node) = cur.td.nodes.get(c) else { continue };
                let ty = node.types.first().map(String::as_str).unwrap_or("");
                if names.contains(&node.name.as_str()) && is_primitive(ty) && !node.max.repeats() {
                    self.add_column(here, &node.name, ty, node.min >= 1);
                }
            }
            return;
        }
        self.expand(cur, here);
    }

    fn child_table(&mut self, here: &Here, name: &str, kind: Kind<'d>) {
        self.child_table_from(here, name, kind, 0);
    }

    /// A child table for the repeating element `name` below `here`.
    fn child_table_from(&mut self, here: &Here, name: &str, kind: Kind<'d>, min_pos: usize) {
        let Some(parent) = self.tables.get(here.table) else { return };
        let mut steps = parent.steps.clone();
        steps.extend(here.steps.iter().filter_map(|s| match s {
            Step::Key(k) => Some((k.clone(), false)),
            Step::Index(_) => None,
        }));
        steps.push((name.to_string(), true));
        let repetitions = steps.iter().filter(|s| s.1).count();
        if steps.len() > MAX_TABLE_DEPTH || repetitions > MAX_REPETITIONS {
            return;
        }
        let table_kind = match kind {
            Kind::Primitive(_) => TableKind::Primitives,
            Kind::Complex(..) => TableKind::Objects,
            Kind::Resource => TableKind::Json,
            Kind::Unknown => return,
        };
        let path: Vec<String> = steps.iter().map(|s| s.0.clone()).collect();
        let mut keys = vec!["id".to_string()];
        for (i, s) in steps.iter().enumerate() {
            if s.1
                && let Some(p) = path.get(..=i)
            {
                keys.push(format!("{}#", p.join(".")));
            }
        }
        self.cover(&path);
        let idx = self.tables.len();
        self.tables.push(TableDef {
            name: format!("{}.{}", self.rt, path.join(".")),
            kind: table_kind,
            steps,
            min_pos,
            keys,
            columns: Vec::new(),
        });
        let item = Here { table: idx, steps: Vec::new(), names: Vec::new(), required: true };
        match kind {
            Kind::Primitive(p) => {
                let col = ColDef { name: name.to_string(), steps: Vec::new(), ty: p.to_string(), required: false };
                if let Some(t) = self.tables.get_mut(idx) {
                    t.columns.push(col);
                }
            }
            Kind::Resource => {
                let col = ColDef { name: name.to_string(), steps: Vec::new(), ty: "json".to_string(), required: false };
                if let Some(t) = self.tables.get_mut(idx) {
                    t.columns.push(col);
                }
            }
            // A repeating CodeableConcept: its row holds the first coding and the text.
            Kind::Complex(sub, tn) => self.complex(sub, tn, &item),
            Kind::Unknown => {}
        }
    }
}
