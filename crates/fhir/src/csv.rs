//! The CSV layouts of docs/formats/csv.md (being written; see issue #5).
