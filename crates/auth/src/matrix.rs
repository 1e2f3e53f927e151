//! Access rights by job type (職種別アクセス権), read from `docs/security/access-matrix.md`.
//!
//! The document is the single source of truth, reviewed as prose and table together; it is
//! embedded at build time and parsed once. A malformed document cannot reach production because
//! the unit test below parses the embedded copy; should it happen anyway, the matrix is empty
//! (nobody gets any right) and the failure is logged, rather than the server panicking.

use crate::Interaction;
use std::collections::HashSet;
use std::sync::LazyLock;

const DOCUMENT: &str = include_str!("../../../docs/security/access-matrix.md");

/// The first header cell that marks the matrix among the document's tables.
const FIRST_HEADER: &str = "resource type";
/// Written in a cell for "no access".
const NONE: &str = "—";
const ALL_LETTERS: &str = "cruds";

static MATRIX: LazyLock<AccessMatrix> = LazyLock::new(|| {
    AccessMatrix::parse(DOCUMENT).unwrap_or_else(|error| {
        tracing::error!(%error, "docs/security/access-matrix.md is malformed; no job type has any access right");
        AccessMatrix::default()
    })
});

/// Which SMART v2 letters (`cruds`) each job type holds on each resource type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessMatrix {
    roles: Vec<String>,
    resource_types: Vec<String>,
    /// `cells[type][role]`: letters in `cruds` order, empty for none.
    cells: Vec<Vec<String>>,
}

impl AccessMatrix {
    /// The matrix of the embedded document.
    pub fn get() -> &'static AccessMatrix {
        &MATRIX
    }

    /// The job types (roles), in column order.
    pub fn roles(&self) -> &[String] {
        &self.roles
    }

    /// The resource types, in row order.
    pub fn resource_types(&self) -> &[String] {
        &self.resource_types
    }

    /// Whether `name` is a job type of the matrix.
    pub fn is_role(&self, name: &str) -> bool {
        self.roles.iter().any(|r| r == name)
    }

    /// The letters `role` holds on `resource_type` ("" for none, or for an unknown role or type).
    pub fn letters(&self, role: &str, resource_type: &str) -> &str {
        let row = self.resource_types.iter().position(|t| t == resource_type);
        let column = self.roles.iter().position(|r| r == role);
        match (row, column) {
            (Some(row), Some(column)) => self.cells.get(row).and_then(|r| r.get(column)).map_or("", String::as_str),
            _ => "",
        }
    }

    /// Whether `role` may perform `interaction` on `resource_type`.
    pub fn allows(&self, role: &str, resource_type: &str, interaction: Interaction) -> bool {
        self.letters(role, resource_type).contains(interaction.letter())
    }

    /// The scopes of a user holding `roles`: `user/<Type>.<letters>` per resource type, the
    /// letters united over the roles; unknown roles add nothing.
    pub fn scopes_for(&self, roles: &[String]) -> String {
        let mut scopes = Vec::new();
        for resource_type in &self.resource_types {
            let letters: String = ALL_LETTERS
                .chars()
                .filter(|&c| roles.iter().any(|role| self.letters(role, resource_type).contains(c)))
                .collect();
            if !letters.is_empty() {
                scopes.push(format!("user/{resource_type}.{letters}"));
            }
        }
        scopes.join(" ")
    }

    /// Parses the document. The error is a message for the log and the test, not for clients.
    fn parse(document: &str) -> Result<Self, String> {
        let mut tables: Vec<Vec<Vec<&str>>> = Vec::new();
        let mut in_table = false;
        for line in document.lines().map(str::trim) {
            let is_row = line.starts_with('|');
            if is_row {
                if !in_table {
                    tables.push(Vec::new());
                }
                if let Some(table) = tables.last_mut() {
                    table.push(split_row(line));
                }
            }
            in_table = is_row;
        }
        let mut matrices = tables.into_iter().filter(|t| t.first().and_then(|h| h.first()) == Some(&FIRST_HEADER));
        let table = matrices.next().ok_or(format!("no table starting with `| {FIRST_HEADER} |`"))?;
        if matrices.next().is_some() {
            return Err(format!("more than one table starting with `| {FIRST_HEADER} |`"));
        }
        let mut rows = table.into_iter();
        let header = rows.next().unwrap_or_default();
        let roles: Vec<String> = header.iter().skip(1).map(|r| (*r).to_owned()).collect();
        if roles.is_empty() || roles.iter().any(String::is_empty) {
            return Err("the header names no job types, or an empty one".into());
        }
        if roles.iter().collect::<HashSet<_>>().len() != roles.len() {
            return Err("a job type appears twice in the header".into());
        }
        let separator = rows.next().unwrap_or_default();
        if separator.len() != header.len()
            || !separator.iter().all(|c| !c.is_empty() && c.chars().all(|ch| "-:".contains(ch)))
        {
            return Err("the header is not followed by a `|---|` separator row".into());
        }
        let mut matrix = Self { roles, ..Self::default() };
        for row in rows {
            let (resource_type, cells) = row.split_first().ok_or("an empty row")?;
            if resource_type.is_empty() || !resource_type.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(format!("`{resource_type}` is not a resource type name"));
            }
            if matrix.resource_types.iter().any(|t| t == resource_type) {
                return Err(format!("{resource_type} appears twice"));
            }
            if cells.len() != matrix.roles.len() {
                return Err(format!("{resource_type} has {} cells for {} job types", cells.len(), matrix.roles.len()));
            }
            let cells = cells.iter().map(|cell| parse_cell(cell).map_err(|e| format!("{resource_type}: {e}")));
            matrix.cells.push(cells.collect::<Result<_, _>>()?);
            matrix.resource_types.push((*resource_type).to_owned());
        }
        if matrix.resource_types.is_empty() {
            return Err("the table has no rows".into());
        }
        Ok(matrix)
    }
}

fn split_row(line: &str) -> Vec<&str> {
    let inner = line.strip_prefix('|').unwrap_or(line);
    let inner = inner.strip_suffix('|').unwrap_or(inner);
    inner.split('|').map(str::trim).collect()
}

/// A cell is `—` or a non-empty subset of `cruds`, in that order, each letter once.
fn parse_cell(cell: &str) -> Result<String, String> {
    if cell == NONE {
        return Ok(String::new());
    }
    let mut rest = ALL_LETTERS.chars();
    if !cell.is_empty() && cell.chars().all(|c| rest.by_ref().any(|a| a == c)) {
        Ok(cell.to_owned())
    } else {
        Err(format!("`{cell}` is neither `{NONE}` nor letters of `{ALL_LETTERS}` in that order"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: [&str; 7] =
        ["physician", "nurse", "pharmacist", "lab-technician", "clerk", "tenant-admin", "system-admin"];

    #[test]
    fn the_embedded_document_is_valid() {
        let m = AccessMatrix::parse(DOCUMENT).unwrap_or_else(|e| panic!("access-matrix.md: {e}"));
        assert_eq!(m.roles(), ROLES);
        assert_eq!(m.resource_types().len(), 32);
        assert_eq!(AccessMatrix::get(), &m);
        assert!(ROLES.iter().all(|r| m.is_role(r)));
        assert!(!m.is_role("resource type") && !m.is_role("admin"));
    }

    #[test]
    fn spot_checks_and_invariants() {
        let m = AccessMatrix::get();
        assert_eq!(m.letters("clerk", "Patient"), "crus");
        assert_eq!(m.letters("physician", "Patient"), "rs");
        assert_eq!(m.letters("lab-technician", "Observation"), "crus");
        assert_eq!(m.letters("tenant-admin", "AuditEvent"), "rs");
        assert_eq!(m.letters("system-admin", "SigningKey"), "cr");
        assert_eq!(m.letters("nurse", "AuditEvent"), "");
        assert_eq!(m.letters("nurse", "Medication"), "");
        // A patient list: read like Patient, kept by the physicians and clerks who assemble it.
        assert_eq!(m.letters("physician", "Group"), "crus");
        assert_eq!(m.letters("nurse", "Group"), "rs");
        assert_eq!(m.letters("tenant-admin", "Group"), "");
        // The national services: physicians issue, pharmacists dispense, administrators see none.
        assert_eq!(m.letters("physician", "EPrescription"), "crus");
        assert_eq!(m.letters("pharmacist", "MedicationDispense"), "crus");
        assert_eq!(m.letters("tenant-admin", "NationalSubmission"), "");
        assert_eq!(m.letters("surgeon", "Patient"), "");
        assert!(m.allows("physician", "Condition", Interaction::Create));
        assert!(!m.allows("nurse", "Condition", Interaction::Update));
        // Nothing is ever deleted: corrections are new versions, mistakes are entered-in-error.
        for t in m.resource_types() {
            for r in m.roles() {
                assert!(!m.letters(r, t).contains('d'), "{r} may delete {t}");
            }
        }
        // Least privilege: the operator of the server sees no clinical data.
        let sysadmin = m.scopes_for(&["system-admin".to_owned()]);
        assert_eq!(
            sysadmin,
            "user/AuditEvent.rs user/Account.crus user/Client.crus user/Tenant.crus user/SigningKey.cr"
        );
    }

    #[test]
    fn scopes_unite_roles() {
        let m = AccessMatrix::get();
        let roles = ["lab-technician".to_owned(), "clerk".to_owned(), "nobody".to_owned()];
        let scopes = m.scopes_for(&roles);
        assert!(scopes.starts_with("user/Patient.crus user/Practitioner.rs "), "{scopes}");
        assert!(scopes.contains(" user/Condition.rs ") && scopes.contains(" user/Observation.crus "), "{scopes}");
        assert!(!scopes.contains("AuditEvent"), "{scopes}");
        assert_eq!(m.scopes_for(&[]), "");
    }

    #[test]
    fn malformed_documents_are_refused() {
        let doc = |rows: &str| format!("intro\n\n| resource type | a | b |\n|---|---|---|\n{rows}\nafter\n");
        assert!(AccessMatrix::parse(&doc("| Patient | rs | — |")).is_ok());
        for (rows, why) in [
            ("| Patient | rs | — |\n| Patient | r | — |", "twice"),
            ("| Patient | sr | — |", "`sr`"),
            ("| Patient | rs | x |", "`x`"),
            ("| Patient | rs | |", "``"),
            ("| Patient | rs |", "1 cells"),
            ("| Pa tient | rs | r |", "not a resource type"),
            ("", "no rows"),
        ] {
            let err = AccessMatrix::parse(&doc(rows)).err().unwrap_or_else(|| panic!("accepted {rows}"));
            assert!(err.contains(why), "{err}");
        }
        assert!(AccessMatrix::parse("no table here").is_err());
        assert!(AccessMatrix::parse("| resource type | a | a |\n|---|---|---|\n| P | r | r |").is_err());
        assert!(AccessMatrix::parse("| resource type | a |\n| P | r |").is_err());
        let two = format!("{}{}", doc("| P | r | r |"), doc("| Q | r | r |"));
        assert!(AccessMatrix::parse(&two).is_err());
    }
}
