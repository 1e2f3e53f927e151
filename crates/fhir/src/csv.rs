//! The CSV layouts of docs/formats/csv.md: a published, lossless table form of every resource type
//! for handing a hospital's data over to another vendor (issue #5, standard-spec requirement ④).
//!
//! Layouts are derived from the element definitions of [`crate::validate`], so every type with
//! definitions has one: a main table (one row per resource), child tables for repeating elements
//! (keyed by the resource id and the positions of the repetitions), and the `<Type>.extension`
//! table for extensions, element ids and everything else without a column of its own. The rules
//! are stated once, for readers, in the text [`layout_markdown`] generates (docs/formats/csv.md);
//! `layout` implements the derivation, `export` writes rows, `import` reads files back.
//!
//! Round trip: `flatten` → `write_row` → `unflatten` gives back the identical JSON for every
//! resource the validator accepts (`meta.versionId`/`meta.lastUpdated` included).
//!
//! Errors never quote cell or header text (it may be patient data): they name the file, the line
//! and the column.

mod doc;
mod export;
mod import;
mod layout;
mod path;
#[cfg(test)]
mod tests;

use crate::FhirError;

pub use doc::layout_markdown;
pub use export::flatten;
pub use import::unflatten;

/// One table of a layout: its name (`Patient`, `Patient.name`, …) and header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub columns: Vec<String>,
}

impl Table {
    /// The file the table is written to: `<name>.csv`.
    pub fn file_name(&self) -> String {
        format!("{}.csv", self.name)
    }
}

/// The layout of a resource type: main table first, then child tables, the extension table last.
/// Err for a type without definitions.
pub fn tables(resource_type: &str) -> Result<Vec<Table>, FhirError> {
    let l = layout::layout(resource_type)?;
    Ok(l.tables.iter().map(|t| Table { name: t.name.clone(), columns: t.header() }).collect())
}

/// UTF-8 byte order mark written first when the BOM option is on (spreadsheet software).
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Appends one RFC 4180 record (CRLF-terminated) to `out`: a field is quoted when it contains a
/// comma, a double quote, CR or LF, with inner quotes doubled.
pub fn write_row(out: &mut Vec<u8>, fields: &[String]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if f.contains([',', '"', '\r', '\n']) {
            out.push(b'"');
            out.extend_from_slice(f.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(f.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// One resource rebuilt from the tables, or why it could not be (message names file and line).
#[derive(Debug, Clone, PartialEq)]
pub struct CsvRecord {
    pub id: String,
    pub result: Result<serde_json::Value, String>,
}
