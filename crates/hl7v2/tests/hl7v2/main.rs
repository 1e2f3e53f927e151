//! Integration tests of `ehr-hl7v2`: one binary (link time dominates on two cores).
// Helpers outside `#[test]` functions unwrap too; clippy.toml only covers the tests themselves.
#![allow(clippy::unwrap_used)]

mod fixtures;
mod jahis;
mod mllp_io;
mod net;
mod orl;
