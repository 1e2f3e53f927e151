//! The loaded code systems and the three questions asked of them: look a code up, validate a
//! code, check the codings of a FHIR resource.

use crate::TerminologyError;
use crate::concept::{Concept, Property, PropertyValue, property};
use crate::load::{self, Batch, MasterFormat};
use crate::shape::{self, Jlac10};
use crate::systems::{self, SystemId};
use ehr_core::{Classify, Issue, Severity};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

type Result<T, E = TerminologyError> = std::result::Result<T, E>;

/// The rule id of [`TerminologyError::CodeDisplayConflict`] issues.
pub const CODE_DISPLAY_CONFLICT: &str = "code-display-conflict";

/// How a well-formed code that is not in the loaded master is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strictness {
    /// Only the code's form is binding: a miss in a partial master is a warning (the shipped
    /// masters are small subsets). The default.
    #[default]
    Shape,
    /// The loaded masters are binding: a miss is an error. For deployments that load the full
    /// official masters with [`Terminology::load_dir`].
    Master,
}

/// The answer of [`Terminology::validate_code`] (the `$validate-code` output parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    pub result: bool,
    pub message: Option<String>,
    /// The code's preferred display, when the code is known.
    pub display: Option<String>,
}

/// What `load_dir` read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    pub files: Vec<LoadedFile>,
    /// Files whose names announce no known format (see [`MasterFormat::detect`]).
    pub skipped: Vec<PathBuf>,
}

/// One file `load_dir` read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedFile {
    pub path: PathBuf,
    pub format: MasterFormat,
    /// Concepts (one per code and system) the file contributed.
    pub concepts: usize,
}

/// One code system's concepts.
#[derive(Debug, Clone, Default)]
struct CodeTable {
    /// Whether the table holds the whole code system (a FHIR CodeSystem with `content =
    /// complete`), so that a miss is an error whatever the strictness.
    complete: bool,
    concepts: HashMap<String, Concept>,
    /// Folded display and designations → the codes they name (sorted), built on first use and
    /// dropped whenever the table changes: a missing code's display is looked up here, not by
    /// a scan of the master (tens of thousands of concepts once the official files are loaded).
    by_display: OnceLock<HashMap<String, Vec<String>>>,
}

impl CodeTable {
    /// The codes of the concepts whose display or a designation folds to `folded`.
    fn codes_named(&self, folded: &str) -> &[String] {
        let index = self.by_display.get_or_init(|| {
            let mut index: HashMap<String, Vec<String>> = HashMap::new();
            for c in self.concepts.values() {
                for name in c.folded_names() {
                    let codes = index.entry(name).or_default();
                    if !codes.contains(&c.code) {
                        codes.push(c.code.clone());
                    }
                }
            }
            index.values_mut().for_each(|codes| codes.sort());
            index
        });
        index.get(folded).map(Vec::as_slice).unwrap_or_default()
    }
}

/// Everything loaded. Replaced as a whole: readers hold an `Arc` of one version.
#[derive(Debug, Clone, Default)]
struct Tables {
    systems: HashMap<SystemId, Arc<CodeTable>>,
    /// JLAC10 測定法 names by code.
    methods: Arc<HashMap<String, String>>,
}

impl Tables {
    /// A new version with the batches merged in. Tables the batches do not touch are shared
    /// with `self`; touched ones are copied first (`Arc::make_mut`), so `self` never changes.
    fn merged(&self, batches: Vec<Batch>) -> Tables {
        let mut next = self.clone();
        for batch in batches {
            for system in batch.complete {
                let table = Arc::make_mut(next.systems.entry(system).or_default());
                table.complete = true;
            }
            for (system, concept) in batch.concepts {
                let table = Arc::make_mut(next.systems.entry(system).or_default());
                // The copy must not keep the index of the concepts it is about to change.
                table.by_display = OnceLock::new();
                // A later file wins the display (an official master loaded over the shipped
                // subset); what the earlier one knew stays as designations and properties.
                let merged = match table.concepts.remove(&concept.code) {
                    Some(old) => {
                        let mut c = concept;
                        c.merge(old);
                        c
                    }
                    None => concept,
                };
                table.concepts.insert(merged.code.clone(), merged);
            }
            if !batch.methods.is_empty() {
                Arc::make_mut(&mut next.methods).extend(batch.methods);
            }
        }
        next
    }
}

/// What a code is, as far as the loaded tables and its form tell.
enum Outcome {
    Found(Concept),
    BadShape(&'static str),
    /// Well-formed and not loaded; `table` says whether any table is loaded for the system and
    /// whether it is complete.
    Missing(TableState),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TableState {
    None,
    Partial,
    Complete,
}

/// The loaded Japanese code systems. Cheap to clone; clones share the tables, and a load through
/// any clone is seen by all.
#[derive(Clone)]
pub struct Terminology {
    tables: Arc<RwLock<Arc<Tables>>>,
    /// Extra URIs for known systems, from [`Terminology::with_alias`].
    aliases: Arc<HashMap<String, SystemId>>,
    strictness: Strictness,
}

impl std::fmt::Debug for Terminology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tables = self.snapshot();
        let mut counts: Vec<(&str, usize)> =
            tables.systems.iter().map(|(s, t)| (s.info().name, t.concepts.len())).collect();
        counts.sort_unstable();
        f.debug_struct("Terminology").field("strictness", &self.strictness).field("concepts", &counts).finish()
    }
}

/// The shipped subset: `(format, file name, content)`.
const BUILTIN: &[(MasterFormat, &str, &str)] = &[
    (
        MasterFormat::FhirCodeSystem,
        "CodeSystem-jp-clins-codesystem-JLAC10-corelabo-cs.json",
        include_str!("../data/CodeSystem-jp-clins-codesystem-JLAC10-corelabo-cs.json"),
    ),
    (
        MasterFormat::FhirCodeSystem,
        "CodeSystem-jp-clins-codesystem-JLAC10-infectionlabo-cs.json",
        include_str!("../data/CodeSystem-jp-clins-codesystem-JLAC10-infectionlabo-cs.json"),
    ),
    (
        MasterFormat::FhirCodeSystem,
        "CodeSystem-jp-clins-obslabresult-uncoded-cs.json",
        include_str!("../data/CodeSystem-jp-clins-obslabresult-uncoded-cs.json"),
    ),
    (
        MasterFormat::FhirCodeSystem,
        "CodeSystem-jp-eCS-medicationcode-nocoded-cs.json",
        include_str!("../data/CodeSystem-jp-eCS-medicationcode-nocoded-cs.json"),
    ),
    (MasterFormat::Jlac10Materials, "jlac10_materials.csv", include_str!("../data/jlac10_materials.csv")),
    (MasterFormat::Jlac10Methods, "jlac10_methods.csv", include_str!("../data/jlac10_methods.csv")),
    (MasterFormat::Jlac10Items, "jlac10_items_subset.csv", include_str!("../data/jlac10_items_subset.csv")),
    (MasterFormat::HotMaster, "hot_master_subset.csv", include_str!("../data/hot_master_subset.csv")),
    (MasterFormat::ReceiptDrug, "y_receipt_drug_subset.csv", include_str!("../data/y_receipt_drug_subset.csv")),
    (MasterFormat::GeneralName, "general_name_subset.csv", include_str!("../data/general_name_subset.csv")),
    (MasterFormat::DiseaseNames, "nmain_subset.csv", include_str!("../data/nmain_subset.csv")),
];

impl Terminology {
    /// No concepts at all: every known system is checked for its form only.
    pub fn empty() -> Self {
        Self {
            tables: Arc::new(RwLock::new(Arc::new(Tables::default()))),
            aliases: Arc::new(HashMap::new()),
            strictness: Strictness::default(),
        }
    }

    /// The subset shipped in the crate (`data/`): the JP-CLINS lab code systems, ~35 JLAC10
    /// items, the JLAC10 materials and methods they use, 15 drugs, 8 disease names.
    pub fn builtin() -> Result<Self> {
        let batches = BUILTIN
            .iter()
            .map(|(format, name, text)| load::parse(*format, text.as_bytes(), name))
            .collect::<Result<Vec<_>>>()?;
        let t = Self::empty();
        t.swap(|current| current.merged(batches));
        Ok(t)
    }

    /// The same tables judged with `strictness`.
    pub fn with_strictness(&self, strictness: Strictness) -> Self {
        Self { strictness, ..self.clone() }
    }

    /// The strictness in force.
    pub fn strictness(&self) -> Strictness {
        self.strictness
    }

    /// The same tables, with `alias` read as the known system `system` (a canonical or alias).
    /// For URIs that are not verified yet, such as the receipt drug code's.
    pub fn with_alias(&self, alias: &str, system: &str) -> Result<Self> {
        let id = self.resolve(system).ok_or_else(|| TerminologyError::UnknownAliasTarget(system.to_owned()))?;
        let mut aliases = (*self.aliases).clone();
        aliases.insert(alias.to_owned(), id);
        Ok(Self { aliases: Arc::new(aliases), ..self.clone() })
    }

    /// The known system a `Coding.system` names.
    pub fn resolve(&self, uri: &str) -> Option<SystemId> {
        SystemId::from_uri(uri).or_else(|| self.aliases.get(uri).copied())
    }

    fn snapshot(&self) -> Arc<Tables> {
        // A poisoned lock still holds a consistent `Arc` (writers only swap it).
        self.tables.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn swap(&self, next: impl FnOnce(&Tables) -> Tables) {
        let mut guard = self.tables.write().unwrap_or_else(|e| e.into_inner());
        let new = next(&guard);
        *guard = Arc::new(new);
    }

    /// Reads every master file in `dir` (formats by file name, see [`MasterFormat::detect`])
    /// and adds them to the tables, or changes nothing if any file fails.
    pub fn load_dir(&self, dir: impl AsRef<Path>) -> Result<LoadReport> {
        let dir = dir.as_ref();
        let io = |path: &Path, source| TerminologyError::Io { file: path.display().to_string(), source };
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io(dir, e))?
            .map(|entry| entry.map(|e| e.path()).map_err(|e| io(dir, e)))
            .collect::<Result<_>>()?;
        paths.sort();
        let mut report = LoadReport::default();
        let mut batches = Vec::new();
        for path in paths {
            let format = path.file_name().and_then(|n| n.to_str()).and_then(MasterFormat::detect);
            let Some(format) = format.filter(|_| path.is_file()) else {
                report.skipped.push(path);
                continue;
            };
            let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
            let batch = load::parse(format, &bytes, &path.display().to_string())?;
            report.files.push(LoadedFile { path, format, concepts: batch.concepts.len() });
            batches.push(batch);
        }
        self.swap(|current| current.merged(batches));
        Ok(report)
    }

    /// Reads one file of a known format from memory (`file` names it in errors); returns the
    /// number of concepts it contributed. Nothing changes if it fails.
    pub fn load_bytes(&self, format: MasterFormat, bytes: &[u8], file: &str) -> Result<usize> {
        let batch = load::parse(format, bytes, file)?;
        let n = batch.concepts.len();
        self.swap(|current| current.merged(vec![batch]));
        Ok(n)
    }

    /// The number of concepts loaded for `system`.
    pub fn concept_count(&self, system: SystemId) -> usize {
        self.snapshot().systems.get(&system).map_or(0, |t| t.concepts.len())
    }

    fn evaluate(&self, system: SystemId, code: &str) -> Outcome {
        let tables = self.snapshot();
        let table = tables.systems.get(&system);
        if let Some(concept) = table.and_then(|t| t.concepts.get(code)) {
            let mut concept = concept.clone();
            add_jlac10_properties(&tables, system, &mut concept);
            return Outcome::Found(concept);
        }
        if let Err(why) = shape::check(system, code) {
            return Outcome::BadShape(why);
        }
        Outcome::Missing(match table {
            None => TableState::None,
            Some(t) if t.complete => TableState::Complete,
            Some(_) => TableState::Partial,
        })
    }

    /// For a code missing from the loaded table of `system`: the code of another concept there
    /// whose display or designation `display` names (compared as [`Concept::matches_display`]).
    /// A code that is absent while its display names a known concept is a mistyped code (the IG
    /// error example `2124030F2ZZZ` 【般】クアゼパム錠２０ｍｇ, which is `1124030F2ZZZ`).
    fn conflicting_code(&self, system: SystemId, display: &str) -> Option<String> {
        let tables = self.snapshot();
        let table = tables.systems.get(&system)?;
        // Sorted: deterministic when several concepts share a name.
        table.codes_named(&Concept::fold_display(display)).first().cloned()
    }

    /// The concept `code` names in `system` (canonical or alias URI), if it is loaded.
    pub fn lookup(&self, system: &str, code: &str) -> Option<Concept> {
        match self.evaluate(self.resolve(system)?, code) {
            Outcome::Found(c) => Some(c),
            _ => None,
        }
    }

    /// Whether `code` is valid in `system`, and its display. A display that names neither the
    /// concept nor any designation (compared ignoring full-width/half-width and spaces) makes
    /// the result false. A well-formed code missing from a partial master is valid in `Shape`
    /// mode, with a message; see `docs/formats/masters.md`.
    pub fn validate_code(&self, system: &str, code: &str, display: Option<&str>) -> Validation {
        let invalid = |e: TerminologyError| Validation { result: false, message: Some(e.to_string()), display: None };
        let Some(id) = self.resolve(system) else {
            return invalid(TerminologyError::UnknownSystem(system.to_owned()));
        };
        let name = id.info().name;
        match (self.evaluate(id, code), self.strictness) {
            (Outcome::Found(c), _) => match display {
                Some(d) if !c.matches_display(d) => Validation {
                    result: false,
                    message: Some(display_mismatch(id, &c).to_string()),
                    display: Some(c.display),
                },
                _ => Validation { result: true, message: None, display: Some(c.display) },
            },
            (Outcome::BadShape(reason), _) => {
                invalid(TerminologyError::InvalidCode { system: name, code: code.to_owned(), reason })
            }
            (Outcome::Missing(TableState::Complete), _) => {
                invalid(TerminologyError::NotInCodeSystem { system: name, code: code.to_owned() })
            }
            (Outcome::Missing(TableState::Partial), _)
                if let Some(known) = display.and_then(|d| self.conflicting_code(id, d)) =>
            {
                invalid(TerminologyError::CodeDisplayConflict { system: name, code: code.to_owned(), known })
            }
            (Outcome::Missing(TableState::Partial), strictness) => Validation {
                result: strictness == Strictness::Shape,
                message: Some(TerminologyError::NotInMaster { system: name, code: code.to_owned() }.to_string()),
                display: None,
            },
            (Outcome::Missing(TableState::None), _) => Validation {
                result: true,
                message: Some(TerminologyError::NoMaster { system: name, code: code.to_owned() }.to_string()),
                display: None,
            },
        }
    }

    /// Issues for one FHIR Coding: none for systems this crate does not know; an error for a
    /// badly formed code; for a well-formed code missing from the loaded master, a warning
    /// (`Shape`) or an error (`Master`); a warning for a display that does not match.
    pub fn check_coding(&self, coding: &Value) -> Vec<Issue> {
        let mut issues = Vec::new();
        self.check_coding_at(coding, None, &mut issues);
        issues
    }

    fn check_coding_at(&self, coding: &Value, path: Option<&str>, out: &mut Vec<Issue>) {
        let Some(id) = coding["system"].as_str().and_then(|s| self.resolve(s)) else { return };
        let name = id.info().name;
        let mut push = |err: TerminologyError, severity: Severity| {
            let mut issue = issue(&err, severity);
            if let Some(p) = path {
                issue = issue.at(p);
            }
            out.push(issue);
        };
        let code = match coding.get("code") {
            None => return,
            Some(Value::String(code)) => code,
            Some(_) => {
                let err = TerminologyError::InvalidCode {
                    system: name,
                    code: String::new(),
                    reason: "the code is not a string",
                };
                return push(err, Severity::Error);
            }
        };
        let owned = || code.clone();
        match self.evaluate(id, code) {
            Outcome::Found(c) => {
                if coding["display"].as_str().is_some_and(|d| !c.matches_display(d)) {
                    push(display_mismatch(id, &c), Severity::Warning);
                }
            }
            Outcome::BadShape(reason) => {
                push(TerminologyError::InvalidCode { system: name, code: owned(), reason }, Severity::Error)
            }
            Outcome::Missing(TableState::Complete) => {
                push(TerminologyError::NotInCodeSystem { system: name, code: owned() }, Severity::Error)
            }
            Outcome::Missing(TableState::Partial)
                if let Some(known) = coding["display"].as_str().and_then(|d| self.conflicting_code(id, d)) =>
            {
                let err = TerminologyError::CodeDisplayConflict { system: name, code: owned(), known };
                let mut i = issue(&err, Severity::Error).rule(CODE_DISPLAY_CONFLICT);
                if let Some(p) = path {
                    i = i.at(p);
                }
                out.push(i);
            }
            Outcome::Missing(TableState::Partial) => {
                let severity = if self.strictness == Strictness::Master { Severity::Error } else { Severity::Warning };
                push(TerminologyError::NotInMaster { system: name, code: owned() }, severity)
            }
            Outcome::Missing(TableState::None) => {
                if self.strictness == Strictness::Master {
                    push(TerminologyError::NoMaster { system: name, code: owned() }, Severity::Warning)
                }
            }
        }
    }

    /// Issues for the coded elements of a resource that carry these code systems:
    /// `ServiceRequest.code`, `Observation.code`, `Condition.code`, `Specimen.type`,
    /// `Medication.code` and `medicationCodeableConcept` of MedicationRequest (and its
    /// Dispense/Administration/Statement siblings); contained resources and Bundle entries are
    /// walked too. Each issue's expression locates the Coding (`Observation.code.coding[1]`).
    pub fn check_resource(&self, resource: &Value) -> Vec<Issue> {
        let mut issues = Vec::new();
        let root = resource["resourceType"].as_str().unwrap_or("Resource");
        self.walk(resource, root, &mut issues, 0);
        issues
    }

    fn walk(&self, resource: &Value, path: &str, out: &mut Vec<Issue>, depth: usize) {
        // Bundles nest (a referral carrying a discharge summary); a bound keeps a hostile body
        // from recursing without end.
        if depth > 8 {
            return;
        }
        let field = match resource["resourceType"].as_str() {
            Some("ServiceRequest" | "Observation" | "Condition" | "Medication") => Some("code"),
            Some("Specimen") => Some("type"),
            Some("MedicationRequest" | "MedicationDispense" | "MedicationAdministration" | "MedicationStatement") => {
                Some("medicationCodeableConcept")
            }
            _ => None,
        };
        if let Some(field) = field {
            for (i, coding) in resource[field]["coding"].as_array().into_iter().flatten().enumerate() {
                self.check_coding_at(coding, Some(&format!("{path}.{field}.coding[{i}]")), out);
            }
        }
        for (i, contained) in resource["contained"].as_array().into_iter().flatten().enumerate() {
            self.walk(contained, &format!("{path}.contained[{i}]"), out, depth + 1);
        }
        if resource["resourceType"] == "Bundle" {
            for (i, entry) in resource["entry"].as_array().into_iter().flatten().enumerate() {
                self.walk(&entry["resource"], &format!("{path}.entry[{i}].resource"), out, depth + 1);
            }
        }
    }
}

fn issue(err: &TerminologyError, severity: Severity) -> Issue {
    let mut issue = Issue::error(err.issue_type(), err.code(), err.to_string());
    issue.severity = severity;
    issue
}

fn display_mismatch(id: SystemId, c: &Concept) -> TerminologyError {
    TerminologyError::DisplayMismatch { system: id.info().name, code: c.code.clone(), expected: c.display.clone() }
}

/// JLAC10 codes carry their structure: analyte, identification, material (with its name from the
/// material table), method (with its name from the method table), result type.
fn add_jlac10_properties(tables: &Tables, system: SystemId, concept: &mut Concept) {
    if !matches!(system, SystemId::Jlac10 | SystemId::ClinsCoreJlac10 | SystemId::ClinsInfectionJlac10) {
        return;
    }
    let Ok(j) = Jlac10::parse(&concept.code) else { return };
    let material_name = tables
        .systems
        .get(&SystemId::SampleMaterial)
        .and_then(|t| t.concepts.get(j.material))
        .map(|c| c.display.clone());
    let mut props = vec![
        Property::code(property::ANALYTE, j.analyte),
        Property::code(property::IDENTIFICATION, j.identification),
        Property {
            code: property::MATERIAL.to_owned(),
            value: PropertyValue::Coding {
                system: systems::SAMPLE_MATERIAL.to_owned(),
                code: j.material.to_owned(),
                display: material_name,
            },
        },
        Property::code(property::MEASUREMENT_METHOD, j.method),
    ];
    if let Some(name) = tables.methods.get(j.method) {
        props.push(Property::string(property::MEASUREMENT_METHOD_NAME, name.as_str()));
    }
    props.push(Property::code(property::RESULT_TYPE, j.result_type));
    for p in props {
        concept.add_property(p);
    }
}
