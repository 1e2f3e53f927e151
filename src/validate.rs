//! `ehr validate FILE…`: the national-service validator on files, with no server, database or
//! configuration.
//!
//! Files or directories (walked recursively; `*.json` and `*.xml`, sorted) are validated by
//! `ehr_validation::FullValidator`: R4 structure, JP Core / JP-CLINS profiles (plus `--profile`),
//! the JP-CLINS hand rules and the master codes. `--masters DIR` loads official master files
//! (`Terminology::load_dir`) over the built-in subset, and then the loaded masters are binding: a
//! well-formed code missing from them is an error, not a warning (`Strictness::Master`).
//!
//! Output per file: `<file>: OK` (and any warnings), or `<file>: <n> error(s)`, then one line per
//! issue, `  <severity> <FHIRPath> [<rule>] <EHR code>: <message>` (`[-]` when the issue has no
//! rule id). With `--json`, one OperationOutcome per file on one line (NDJSON), its `meta.source`
//! naming the file. Exit status: 0 no errors, 1 some file has errors, 2 some file could not be
//! read or parsed (message on stderr; the other files are still validated).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use ehr_core::{Issue, Severity};
use ehr_fhir::validate::Validator;
use ehr_terminology::{Strictness, Terminology};
use ehr_validation::{FullValidator, has_errors};
use serde_json::Value;

/// Runs the validator over `files`; see the module docs for output and exit status.
pub fn run(files: &[PathBuf], profile: Option<&str>, masters: Option<&Path>, json: bool) -> ExitCode {
    let validator = match validator(masters) {
        Ok(v) => v,
        Err(msg) => {
            eprintln!("ehr validate: {msg}");
            return ExitCode::from(2);
        }
    };
    let mut paths = Vec::new();
    let mut unreadable = false;
    for f in files {
        if let Err(msg) = expand(f, &mut paths, 0) {
            eprintln!("{}: {msg}", f.display());
            unreadable = true;
        }
    }
    let mut failed = false;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for path in &paths {
        let resource = match read(path) {
            Ok(v) => v,
            Err(msg) => {
                eprintln!("{}: {msg}", path.display());
                unreadable = true;
                continue;
            }
        };
        let issues = validator.validate(&resource, profile);
        failed |= has_errors(&issues);
        let written = if json { print_json(&mut out, path, &issues) } else { print_text(&mut out, path, &issues) };
        if written.is_err() {
            // stdout closed (a pipe to `head`): nothing more can be reported.
            return ExitCode::from(2);
        }
    }
    if unreadable {
        ExitCode::from(2)
    } else if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn validator(masters: Option<&Path>) -> Result<FullValidator, String> {
    let terminology = Terminology::builtin().map_err(|e| format!("cannot load the built-in masters: {e}"))?;
    let terminology = match masters {
        None => terminology,
        Some(dir) => {
            let report = terminology.load_dir(dir).map_err(|e| format!("cannot load the masters: {e}"))?;
            if report.files.is_empty() {
                return Err(format!("no master file of a known format in {}", dir.display()));
            }
            terminology.with_strictness(Strictness::Master)
        }
    };
    Ok(FullValidator::new(Arc::new(Validator::new()), terminology))
}

/// Adds `path` (a file) or the `*.json` / `*.xml` files under it (a directory) to `out`.
fn expand(path: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_dir() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    if depth > 16 {
        return Err("directories nested too deeply".to_owned());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("cannot read the directory: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            expand(&p, out, depth + 1)?;
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("json" | "xml")) {
            out.push(p);
        }
    }
    Ok(())
}

/// Reads one resource: XML by extension (`.xml`) or content (starts with `<`), JSON otherwise.
fn read(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let xml = path.extension().is_some_and(|e| e == "xml") || text.trim_start().starts_with('<');
    if xml {
        ehr_fhir::xml::from_xml(&text).map_err(|e| format!("not a FHIR XML resource: {e}"))
    } else {
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
        if v.is_object() { Ok(v) } else { Err("not a FHIR JSON resource (not an object)".to_owned()) }
    }
}

fn print_text(out: &mut impl Write, path: &Path, issues: &[Issue]) -> std::io::Result<()> {
    let errors = issues.iter().filter(|i| matches!(i.severity, Severity::Error | Severity::Fatal)).count();
    let others = issues.len() - errors;
    match (errors, others) {
        (0, 0) => writeln!(out, "{}: OK", path.display())?,
        (0, n) => writeln!(out, "{}: OK ({n} warning(s) or note(s))", path.display())?,
        (n, _) => writeln!(out, "{}: {n} error(s)", path.display())?,
    }
    for i in issues {
        let at = if i.expression.is_empty() { "-".to_owned() } else { i.expression.join(", ") };
        let rule = i.rule.as_deref().unwrap_or("-");
        writeln!(out, "  {} {at} [{rule}] {}: {}", i.severity.code(), i.ehr_code, i.diagnostics)?;
    }
    Ok(())
}

fn print_json(out: &mut impl Write, path: &Path, issues: &[Issue]) -> std::io::Result<()> {
    let mut oo = ehr_validation::http::outcome(issues);
    oo["meta"] = serde_json::json!({"source": path.display().to_string()});
    writeln!(out, "{oo}")
}
