//! Import: table files back into resources.
//!
//! Whole-file problems (encoding, quoting, header, keys that point nowhere) fail the call;
//! problems of one resource (a cell that is not a boolean, a bad position, a bad path) fail only
//! that resource's record. Messages name file, line and column, never cell or header text.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use crate::FhirError;
use crate::validate::definitions;
use crate::validate::model::is_primitive;

use super::CsvRecord;
use super::export::{JsonKind, json_kind};
use super::layout::{Cursor, Kind, Layout, Step, TableDef, TableKind, capitalize, child, layout};
use super::path::{self, MAX_POSITION};

/// One table file, read and checked against its layout.
struct ParsedTable<'a> {
    file: &'a str,
    /// For every header name of the layout (keys, then columns): its 1-based column in the file.
    cols: Vec<Option<usize>>,
    /// (line, cells aligned with the layout header; absent optional columns are empty).
    rows: Vec<(u64, Vec<String>)>,
}

fn file_err(file: &str, line: u64, what: &str) -> FhirError {
    FhirError::Csv(format!("{file} line {line}: {what}"))
}

/// Checks RFC 4180 quoting: a quoted field ends with a quote followed by a comma or a line end,
/// an unquoted field holds no quote. Returns the line each record starts on (empty lines are not
/// records, as for the csv crate), or the line and column of the first violation.
fn check_quoting(bytes: &[u8]) -> Result<Vec<u64>, (u64, usize, &'static str)> {
    #[derive(PartialEq)]
    enum S {
        FieldStart,
        Unquoted,
        Quoted,
        QuoteInQuoted,
    }
    let mut s = S::FieldStart;
    let (mut line, mut col, mut start_line) = (1u64, 1usize, 1u64);
    let mut starts = Vec::new();
    let mut in_record = false;
    for &b in bytes {
        if !in_record && b != b'\n' && b != b'\r' {
            in_record = true;
            starts.push(line);
        }
        // Outside quotes (also right after a closing one) a comma ends the field and a line end
        // the record.
        if s != S::Quoted && matches!(b, b',' | b'\n' | b'\r') {
            s = S::FieldStart;
            if b == b',' {
                col += 1;
            } else {
                line += u64::from(b == b'\n');
                col = 1;
                in_record = false;
            }
            continue;
        }
        match s {
            S::FieldStart | S::Unquoted => match b {
                b'"' if s == S::FieldStart => {
                    s = S::Quoted;
                    start_line = line;
                }
                b'"' => return Err((line, col, "a double quote inside an unquoted field")),
                _ => s = S::Unquoted,
            },
            S::Quoted => match b {
                b'"' => s = S::QuoteInQuoted,
                b'\n' => line += 1,
                _ => {}
            },
            S::QuoteInQuoted => match b {
                b'"' => s = S::Quoted,
                _ => return Err((line, col, "characters after the closing quote of a field")),
            },
        }
    }
    if s == S::Quoted {
        return Err((start_line, col, "a quoted field is not closed"));
    }
    Ok(starts)
}

fn read_table<'a>(file: &'a str, bytes: &[u8], t: &TableDef) -> Result<ParsedTable<'a>, FhirError> {
    let bytes = bytes.strip_prefix(super::BOM).unwrap_or(bytes);
    if let Err(e) = std::str::from_utf8(bytes) {
        let before = bytes.get(..e.valid_up_to()).unwrap_or_default();
        let line = before.iter().filter(|&&b| b == b'\n').count() as u64 + 1;
        return Err(file_err(file, line, "not UTF-8 text"));
    }
    // Record lines come from this scan: the csv crate's positions are off by one after CRLF.
    let lines = check_quoting(bytes).map_err(|(line, col, what)| {
        FhirError::Csv(format!("{file} line {line}, column {col}: malformed CSV: {what}"))
    })?;
    let mut rdr = ::csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bytes);
    let mut records = rdr.records();
    let header = match records.next() {
        Some(Ok(h)) => h,
        Some(Err(e)) => return Err(csv_err(file, 1, &e)),
        None => return Err(file_err(file, 1, "empty file; the first line must be the header")),
    };
    let layout_header = t.header();
    let mut cols: Vec<Option<usize>> = vec![None; layout_header.len()];
    let mut file_to_layout = Vec::with_capacity(header.len());
    for (i, name) in header.iter().enumerate() {
        // Header text is not echoed: a file without a header would show patient data here.
        let Some(li) = layout_header.iter().position(|h| h == name) else {
            return Err(FhirError::Csv(format!(
                "{file} line 1, column {}: column not in the layout of {} (docs/formats/csv.md)",
                i + 1,
                t.name
            )));
        };
        match cols.get_mut(li) {
            Some(slot @ None) => *slot = Some(i + 1),
            _ => return Err(FhirError::Csv(format!("{file} line 1, column {}: column given twice", i + 1))),
        }
        file_to_layout.push(li);
    }
    let n_keys = t.keys.len();
    for (li, c) in cols.iter().enumerate() {
        let required = li < n_keys || t.columns.get(li - n_keys).is_some_and(|c| c.required);
        if c.is_none() && required {
            let name = layout_header.get(li).map(String::as_str).unwrap_or("");
            return Err(file_err(file, 1, &format!("required column `{name}` is missing")));
        }
    }
    let mut rows = Vec::new();
    for (n, rec) in records.enumerate() {
        let line = lines.get(n + 1).copied().unwrap_or(0);
        let rec = rec.map_err(|e| csv_err(file, line, &e))?;
        if rec.len() != header.len() {
            return Err(file_err(
                file,
                line,
                &format!("malformed CSV: {} fields where the header has {}", rec.len(), header.len()),
            ));
        }
        let mut cells = vec![String::new(); layout_header.len()];
        for (i, f) in rec.iter().enumerate() {
            if let Some(&li) = file_to_layout.get(i)
                && let Some(c) = cells.get_mut(li)
            {
                *c = f.to_string();
            }
        }
        rows.push((line, cells));
    }
    Ok(ParsedTable { file, cols, rows })
}

fn csv_err(file: &str, line: u64, e: &::csv::Error) -> FhirError {
    let what = match e.kind() {
        ::csv::ErrorKind::Utf8 { .. } => "not UTF-8 text",
        ::csv::ErrorKind::UnequalLengths { .. } => "malformed CSV: records of different lengths",
        _ => "malformed CSV",
    };
    file_err(file, line, what)
}

/// Rebuilds the resources of `resource_type` from its table files (file name, bytes), e.g.
/// `[("Patient.csv", …), ("Patient.name.csv", …)]`. Any subset of the layout's files may be given
/// (an absent table has no rows). Err for whole-file problems: not UTF-8, malformed CSV, a file
/// name not in the layout (or given twice), a header with a column not in the layout, a column
/// twice or a required column missing, two main rows with the same id, a child row whose id has
/// no main row. Otherwise one record per main-table row, in file order.
pub fn unflatten(resource_type: &str, files: &[(&str, &[u8])]) -> Result<Vec<CsvRecord>, FhirError> {
    let l = layout(resource_type)?;
    let mut parsed: Vec<Option<ParsedTable>> = l.tables.iter().map(|_| None).collect();
    for (file, bytes) in files {
        let Some(ti) = l.tables.iter().position(|t| file.strip_suffix(".csv") == Some(t.name.as_str())) else {
            return Err(FhirError::Csv(format!("{file}: not a table of the {resource_type} layout")));
        };
        let (Some(slot), Some(t)) = (parsed.get_mut(ti), l.tables.get(ti)) else { continue };
        if slot.is_some() {
            return Err(FhirError::Csv(format!("{file}: given twice")));
        }
        *slot = Some(read_table(file, bytes, t)?);
    }
    let main_file = format!("{resource_type}.csv");
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut mains: Vec<(u64, &Vec<String>)> = Vec::new();
    if let Some(Some(m)) = parsed.first() {
        for (line, cells) in &m.rows {
            let id = cells.first().map(String::as_str).unwrap_or("");
            if !id.is_empty() && ids.insert(id, mains.len()).is_some() {
                return Err(file_err(&main_file, *line, "id of an earlier row again"));
            }
            mains.push((*line, cells));
        }
    }
    // Child rows grouped by resource: (table, row).
    let mut children: Vec<Vec<(usize, usize)>> = vec![Vec::new(); mains.len()];
    for (ti, p) in parsed.iter().enumerate().skip(1) {
        let Some(p) = p else { continue };
        for (ri, (line, cells)) in p.rows.iter().enumerate() {
            let id = cells.first().map(String::as_str).unwrap_or("");
            match ids.get(id) {
                Some(&mi) if !id.is_empty() => {
                    if let Some(c) = children.get_mut(mi) {
                        c.push((ti, ri));
                    }
                }
                _ => return Err(file_err(p.file, *line, &format!("id has no row in {main_file}"))),
            }
        }
    }
    let mut out = Vec::with_capacity(mains.len());
    for (mi, (line, cells)) in mains.iter().enumerate() {
        let id = cells.first().cloned().unwrap_or_default();
        let result = if id.is_empty() {
            Err(format!("{main_file} line {line}, column {}: empty id", col_of(&parsed, 0, 0)))
        } else {
            let rows = children.get(mi).map(Vec::as_slice).unwrap_or_default();
            build(l, resource_type, &parsed, *line, cells, rows)
        };
        out.push(CsvRecord { id, result });
    }
    Ok(out)
}

/// The file column of layout header position `li` of table `ti`.
fn col_of(parsed: &[Option<ParsedTable>], ti: usize, li: usize) -> usize {
    parsed.get(ti).and_then(Option::as_ref).and_then(|p| p.cols.get(li).copied().flatten()).unwrap_or(0)
}

/// Where a record-level problem is.
struct At<'a> {
    file: &'a str,
    line: u64,
    col: usize,
    name: &'a str,
}

impl At<'_> {
    fn err(&self, what: &str) -> String {
        format!("{} line {}, column {} ({}): {what}", self.file, self.line, self.col, self.name)
    }
}

/// A non-empty column cell as JSON.
fn parse_cell(cell: &str, ty: &str) -> Result<Value, &'static str> {
    if ty == "json" {
        return match serde_json::from_str::<Value>(cell) {
            Ok(v @ Value::Object(_)) => Ok(v),
            _ => Err("not a FHIR JSON object"),
        };
    }
    match json_kind(ty) {
        JsonKind::Bool => match cell {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err("not true or false"),
        },
        JsonKind::Integer => cell.parse::<i64>().map(Value::from).map_err(|_| "not an integer"),
        JsonKind::Decimal => {
            if !cell.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E')) {
                return Err("not a decimal number");
            }
            match serde_json::from_str::<Value>(cell) {
                Ok(v @ Value::Number(_)) => Ok(v),
                _ => Err("not a decimal number"),
            }
        }
        JsonKind::Text => Ok(Value::String(cell.to_string())),
    }
}

/// The value of an extension-table row: text for a primitive type (an empty cell is an empty
/// string there, since the row exists), FHIR JSON for any other type.
fn parse_value(ty: &str, cell: &str) -> Result<Value, &'static str> {
    if is_primitive(ty) {
        if cell.is_empty() {
            return match json_kind(ty) {
                JsonKind::Text => Ok(Value::String(String::new())),
                _ => Err("empty value for a boolean or number"),
            };
        }
        return parse_cell(cell, ty);
    }
    serde_json::from_str::<Value>(cell).map_err(|_| "not valid JSON")
}

fn build(
    l: &Layout,
    rt: &str,
    parsed: &[Option<ParsedTable>],
    line: u64,
    cells: &[String],
    rows: &[(usize, usize)],
) -> Result<Value, String> {
    let mut root = Value::Object(Map::new());
    if let Value::Object(m) = &mut root {
        m.insert("resourceType".to_string(), Value::String(rt.to_string()));
        m.insert("id".to_string(), Value::String(cells.first().cloned().unwrap_or_default()));
    }
    let main_file = format!("{rt}.csv");
    if let Some(t) = l.tables.first() {
        set_columns(&mut root, t, &[], cells, &At { file: &main_file, line, col: 0, name: "" }, parsed, 0)?;
    }
    let mut seen: HashSet<(usize, Vec<usize>)> = HashSet::new();
    let ext = l.extension_table();
    // Extension-table rows go last: they may refine what the columns built.
    let ordered = rows.iter().filter(|r| r.0 != ext).chain(rows.iter().filter(|r| r.0 == ext));
    for &(ti, ri) in ordered {
        let (Some(t), Some(Some(p))) = (l.tables.get(ti), parsed.get(ti)) else { continue };
        let Some((line, cells)) = p.rows.get(ri) else { continue };
        let at = |li: usize| At {
            file: p.file,
            line: *line,
            col: p.cols.get(li).copied().flatten().unwrap_or(0),
            name: t
                .keys
                .get(li)
                .map(String::as_str)
                .or_else(|| t.columns.get(li.wrapping_sub(t.keys.len())).map(|c| c.name.as_str()))
                .unwrap_or(""),
        };
        if t.kind == TableKind::Extension {
            extension_row(&mut root, cells, &at)?;
            continue;
        }
        let mut positions = Vec::new();
        for (k, cell) in cells.iter().enumerate().take(t.keys.len()).skip(1) {
            match cell.parse::<usize>() {
                Ok(n) if n <= MAX_POSITION && cell.bytes().all(|b| b.is_ascii_digit()) => positions.push(n),
                _ => return Err(at(k).err("not a position (0, 1, 2, …)")),
            }
        }
        if positions.last().is_some_and(|&p| p < t.min_pos) {
            return Err(at(t.keys.len() - 1).err("position 0 of a coding is in the parent row"));
        }
        if !seen.insert((ti, positions.clone())) {
            return Err(at(0).err("same id and positions as an earlier row"));
        }
        let mut steps = Vec::new();
        let mut pos = positions.iter();
        for (key, repeats) in &t.steps {
            steps.push(Step::Key(key.clone()));
            if *repeats {
                steps.push(Step::Index(pos.next().copied().unwrap_or(0)));
            }
        }
        match t.kind {
            TableKind::Objects => {
                path::ensure_object(&mut root, &steps).map_err(|e| at(0).err(e))?;
                set_columns(&mut root, t, &steps, cells, &at(0), parsed, ti)?;
            }
            _ => set_columns(&mut root, t, &steps, cells, &at(0), parsed, ti)?,
        }
    }
    path::compact(&mut root);
    let defs = definitions();
    if let Some(td) = defs.types.get(rt) {
        reorder(&mut root, Some(Cursor { td, idx: 0 }));
    }
    Ok(root)
}

/// Writes the non-empty element cells of a row below `base`.
fn set_columns(
    root: &mut Value,
    t: &TableDef,
    base: &[Step],
    cells: &[String],
    at: &At,
    parsed: &[Option<ParsedTable>],
    ti: usize,
) -> Result<(), String> {
    let n_keys = t.keys.len();
    for (ci, c) in t.columns.iter().enumerate() {
        let Some(cell) = cells.get(n_keys + ci).filter(|c| !c.is_empty()) else { continue };
        let here = At { file: at.file, line: at.line, col: col_of(parsed, ti, n_keys + ci), name: &c.name };
        let v = parse_cell(cell, &c.ty).map_err(|e| here.err(e))?;
        let mut steps = base.to_vec();
        steps.extend(c.steps.iter().cloned());
        path::set(root, &steps, v).map_err(|e| here.err(e))?;
    }
    Ok(())
}

/// One row of the extension table: an extension (path ending in `extension[n]` or
/// `modifierExtension[n]`: url and value[x]) or a single value at a path.
fn extension_row<'a>(root: &mut Value, cells: &[String], at: &dyn Fn(usize) -> At<'a>) -> Result<(), String> {
    let cell = |i: usize| cells.get(i).map(String::as_str).unwrap_or("");
    let (p, url, vt, value) = (cell(1), cell(2), cell(3), cell(4));
    let steps = path::parse(p).ok_or_else(|| at(1).err("not a path (`name[0].extension[1]`)"))?;
    let is_ext = match steps.as_slice() {
        [.., Step::Key(k), Step::Index(_)] => k == "extension" || k == "modifierExtension",
        _ => false,
    };
    if is_ext {
        path::ensure_object(root, &steps).map_err(|e| at(1).err(e))?;
        if !url.is_empty() {
            let mut s = steps.clone();
            s.push(Step::Key("url".to_string()));
            path::set(root, &s, Value::String(url.to_string())).map_err(|e| at(2).err(e))?;
        }
        if vt.is_empty() {
            if !value.is_empty() {
                return Err(at(4).err("value without valueType"));
            }
            return Ok(());
        }
        if !definitions().all_types.iter().any(|t| t == vt) {
            return Err(at(3).err("not a FHIR data type"));
        }
        let v = parse_value(vt, value).map_err(|e| at(4).err(e))?;
        let mut s = steps;
        s.push(Step::Key(format!("value{}", capitalize(vt))));
        return path::set(root, &s, v).map_err(|e| at(4).err(e));
    }
    if !url.is_empty() {
        return Err(at(2).err("url on a row that is not an extension"));
    }
    if vt.is_empty() {
        return Err(at(3).err("valueType missing"));
    }
    let v = parse_value(vt, value).map_err(|e| at(4).err(e))?;
    path::set(root, &steps, v).map_err(|e| at(1).err(e))
}

/// Puts the properties of every object in definition order (`resourceType` first, `_x` after `x`,
/// unknown properties last), the order FHIR JSON is usually written in.
fn reorder(v: &mut Value, cur: Option<Cursor<'static>>) {
    let defs = definitions();
    match v {
        Value::Array(a) => a.iter_mut().for_each(|x| reorder(x, cur)),
        Value::Object(m) => {
            let kids = cur.map(|c| c.td.children(c.idx)).unwrap_or_default();
            let is_extension = cur.zip(defs.types.get("Extension")).is_some_and(|(c, e)| std::ptr::eq(c.td, e));
            let mut entries: Vec<(String, Value)> = std::mem::take(m).into_iter().collect();
            let rank = |k: &str| -> (usize, usize, bool) {
                // `url` first in an extension, as FHIR JSON writes it (it is an XML attribute).
                if k == "resourceType" || (is_extension && k == "url") {
                    return (0, 0, false);
                }
                let (base, under) = match k.strip_prefix('_') {
                    Some(b) => (b, true),
                    None => (k, false),
                };
                let pos = cur
                    .and_then(|c| c.td.child_for_key(c.idx, base, &defs.all_types))
                    .and_then(|(ci, _)| kids.iter().position(|&x| x == ci));
                match pos {
                    Some(p) => (1, p, under),
                    None => (2, 0, under),
                }
            };
            entries.sort_by_key(|(k, _)| rank(k));
            for (k, x) in &mut entries {
                let sub = match k.strip_prefix('_') {
                    Some(_) => defs.types.get("Element").map(|td| Cursor { td, idx: 0 }),
                    None => match cur.and_then(|c| child(defs, c, k)) {
                        Some((Kind::Complex(c, _), _)) => Some(c),
                        Some((Kind::Resource, _)) => x
                            .get("resourceType")
                            .and_then(Value::as_str)
                            .and_then(|rt| defs.types.get(rt))
                            .map(|td| Cursor { td, idx: 0 }),
                        _ => None,
                    },
                };
                reorder(x, sub);
            }
            m.extend(entries);
        }
        _ => {}
    }
}
