//! Structural and profile validation driven by the official StructureDefinitions.
//!
//! Definitions are embedded (see `crates/fhir/profiles/README.md`) and parsed once by
//! [`Validator::new`]. A resource is checked in two layers:
//!
//! 1. **Base R4 structure**: known `resourceType`, no unknown elements (choice types,
//!    `_primitive` siblings, contained and Bundle entry resources included), JSON shape per
//!    cardinality, primitive formats, base min/max cardinality, base required bindings. Base trees
//!    come from the JP-CLINS snapshots (`base.min/max`) and from hand tables for the rest.
//! 2. **Profiles** named in `meta.profile` (JP Core differentials, JP-CLINS snapshots): profiled
//!    cardinality, fixed/pattern values, choice-type restrictions, slicing (value/pattern/exists/
//!    type discriminators, and `profile` ones by conformance of the resource to the slice's
//!    profile: `Cx::conforms_to`), required bindings whose value set is expandable from the
//!    packages, extension and data-type profiles found in `type.profile`, and the IG-authored
//!    FHIRPath invariants the small evaluator in `fhirpath` understands.
//!
//! Diagnostics name elements and rules only, never submitted values (they may be PHI).
//!
//! | code | issue type | meaning |
//! |---|---|---|
//! | EHR-VAL-001 | structure | not a JSON object, or `resourceType` missing / not a string |
//! | EHR-VAL-002 | structure | `resourceType` is not an R4 resource type |
//! | EHR-VAL-003 | structure | unknown element |
//! | EHR-VAL-004 | structure | wrong JSON shape (array vs single value, object expected, null, empty) |
//! | EHR-VAL-005 | value | primitive of the wrong JSON type or invalid format |
//! | EHR-VAL-006 | required | base minimum cardinality not met |
//! | EHR-VAL-007 | structure | base maximum cardinality exceeded |
//! | EHR-VAL-008 | required | profile minimum cardinality not met |
//! | EHR-VAL-009 | structure | profile maximum cardinality exceeded |
//! | EHR-VAL-010 | value | fixed value mismatch |
//! | EHR-VAL-011 | value | pattern mismatch |
//! | EHR-VAL-012 | structure | type not allowed by the profile, or profile for another resource type |
//! | EHR-VAL-013 | structure | slice cardinality not met |
//! | EHR-VAL-014 | structure | item matches no slice of a closed slicing |
//! | EHR-VAL-015 | value | code not in a required value set |
//! | EHR-VAL-016 | value (warning) | profile not known; validated against the base type only |
//! | EHR-VAL-017 | not-supported (warning) | resource type without a definition here; content not checked |
//! | EHR-VAL-018 | invariant | profile invariant (FHIRPath constraint) failed |
//! | EHR-VAL-019 | structure | resources nested too deeply |
//! | EHR-VAL-020 | value | `entry.fullUrl` is not `urn:uuid:<uuid>` (rule `clins-fullUrl-uuid`) |
//! | EHR-VAL-021 | duplicate | two entries share a `fullUrl` (`clins-fullUrl-unique`) |
//! | EHR-VAL-022 | invariant | a Composition subject / section entry reference resolves to no entry (`document-reference-resolves`) |
//! | EHR-VAL-023 | invariant | local patient id system and institution number differ (`R1011`) |
//! | EHR-VAL-024 | required | lab result without the JP-CLINS local code (`clins-lab-localCode`) |
//! | EHR-VAL-025 | required | lab result without a JLAC / uncoded-marker coding (`clins-lab-standardCode`) |
//! | EHR-VAL-026 | value | half-width kana, U+3000 or control character in a lab name (`clins-lab-characters`) |
//! | EHR-VAL-027 | value | document Bundle identifier system or format (`R2152`) |
//! | EHR-VAL-028 | value | health-checkup Bundle not of type document (`checkup-bundle-type`) |
//! | EHR-VAL-029 | structure | health-checkup Bundle without its Composition first (`checkup-composition-first`) |
//! | EHR-VAL-030 | value | health-checkup Composition.type (`checkup-composition-type`) |
//! | EHR-VAL-031 | value | health-checkup Composition.category (`checkup-composition-category`) |
//! | EHR-VAL-032 | value | health-checkup Composition.event.code (`checkup-composition-event`) |
//! | EHR-VAL-033 | value | health-checkup section not coded in section-code (`checkup-section-code`) |
//! | EHR-VAL-034 | invariant | health-checkup sections: 01995 xor 01910/01920 (`checkup-section-attachment-xor`) |
//! | EHR-VAL-035 | required | health-checkup result Observation without a code (`checkup-observation-coded`) |
//! | EHR-VAL-036 | structure | JP_Bundle_CLINS entry of another resource type than its tag (`R02143`) |
//! | EHR-VAL-037 | invariant | bundle identifier's institution number differs from the entries' / local patient id's (`clins-bundleIdentifier-institution`) |
//!
//! Every EHR-VAL-018 issue carries the invariant's key as its rule (`Issue::rule`), and every
//! EHR-VAL-020…037 issue its hand-rule id (the IG's R-number where there is one); `rules` has
//! the table of hand rules and what the snapshots already enforce. System URIs are compared
//! through the legacy-OID table in `systems` (JP Core 1.1.2 fixes OIDs that JP-CLINS 1.5 replaced
//! with URLs).

mod fhirpath;
pub(crate) mod model;
mod primitive;
mod rules;
mod systems;

pub use rules::rule_number;

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use ehr_core::{Issue, IssueType, Severity};
use serde_json::{Map, Value};

use model::{Definitions, Disc, PNode, Profile, TypeDef, is_primitive, values_at};

/// Whether an issue breaks a basic R4 rule (parse, shape, base cardinality, primitive format):
/// R4 3.1.0.4 answers those with 400, and profile or business-rule failures with 422.
pub fn is_base_rule(issue: &Issue) -> bool {
    matches!(
        issue.ehr_code,
        "EHR-VAL-001"
            | "EHR-VAL-002"
            | "EHR-VAL-003"
            | "EHR-VAL-004"
            | "EHR-VAL-005"
            | "EHR-VAL-006"
            | "EHR-VAL-007"
            | "EHR-VAL-019"
    )
}

/// Nesting limit for contained / Bundle entry resources.
const MAX_DEPTH: usize = 12;

/// How many times one validation may run a profile on a resource that does not declare it, to
/// decide a `profile` discriminator; past that, declaring the profile in `meta.profile` decides
/// (a Bundle of many entries costs at most this many extra profile runs).
const MAX_CONFORMANCE_RUNS: usize = 1000;

/// Validates resources against base R4 structure and the embedded JP Core / JP-CLINS profiles.
pub struct Validator {
    defs: &'static Definitions,
}

static DEFS: OnceLock<Definitions> = OnceLock::new();

/// The embedded definitions (element trees in definition order), parsed once per process; the
/// XML and CSV codecs read the element order, cardinalities and types from them.
pub(crate) fn definitions() -> &'static Definitions {
    DEFS.get_or_init(Definitions::load)
}

impl Validator {
    /// Loads the embedded definitions. Cheap enough to call once at start-up.
    pub fn new() -> Self {
        // Parsed once per process: every Validator shares the same read-only definitions.
        Self { defs: definitions() }
    }

    /// Validates a resource. Returns all issues (errors and warnings); the caller rejects the write if any has Severity::Error or Fatal.
    pub fn validate(&self, resource: &Value) -> Vec<Issue> {
        self.validate_as(resource, &[])
    }

    /// Validates a resource as if `profiles` (canonical URLs, `|version` allowed) were listed in
    /// its `meta.profile` too (the `profile` parameter of `$validate`).
    pub fn validate_as(&self, resource: &Value, profiles: &[&str]) -> Vec<Issue> {
        let extra = profiles.iter().map(|p| p.split('|').next().unwrap_or(p).to_string()).collect();
        let mut cx = Cx::new(self.defs, extra);
        let root = resource.get("resourceType").and_then(Value::as_str).unwrap_or("Resource").to_string();
        cx.resource(resource, &root, 0);
        // Base and profile layers may report the same rule at the same place.
        let mut seen = HashSet::new();
        cx.out.retain(|i| seen.insert((i.ehr_code, i.expression.clone(), i.diagnostics.clone())));
        cx.out
    }

    /// True if the profile canonical URL (with or without |version) is one the validator knows
    /// (embedded, or implemented by hand rules only, like JP_Bundle_eCheckupGeneral).
    pub fn knows_profile(&self, url: &str) -> bool {
        let bare = url.split('|').next().unwrap_or(url);
        self.defs.profiles.contains_key(bare) || rules::is_hand_only(bare)
    }

    /// The canonical URLs (sorted) of the profiles on `resource_type` this validator enforces
    /// when a resource declares them: embedded StructureDefinitions and hand-only profiles (the
    /// CapabilityStatement's `supportedProfile`).
    pub fn profiles_for(&self, resource_type: &str) -> Vec<&str> {
        let mut urls: Vec<&str> = self
            .defs
            .profiles
            .values()
            .filter(|p| p.type_name == resource_type)
            .map(|p| p.url.as_str())
            .chain(rules::HAND_ONLY.iter().copied().filter(|u| rules::hand_only_type(u) == Some(resource_type)))
            .collect();
        urls.sort_unstable();
        urls.dedup();
        urls
    }
}

impl Default for Validator {
    fn default() -> Self {
        Self::new()
    }
}

struct Cx {
    defs: &'static Definitions,
    out: Vec<Issue>,
    /// Profiles the caller asks for on the root resource, besides its meta.profile.
    extra: Vec<String>,
    /// (FHIRPath of a nested resource, bare profile URL) → whether the resource conforms to the
    /// profile (no error from the base layer nor from the profile), for `profile` discriminators.
    /// Filled while validating the declared profiles and by extra runs; FHIRPaths are unique
    /// within one validation.
    conforms: HashMap<String, HashMap<String, bool>>,
    /// FHIRPath of a nested resource → whether its base layer (and its nested resources) had no
    /// error.
    base_ok: HashMap<String, bool>,
    /// Profile runs left for `profile` discriminators (`MAX_CONFORMANCE_RUNS`).
    runs_left: usize,
}

fn err(code: IssueType, ehr: &'static str, fp: &str, diag: String) -> Issue {
    Issue::error(code, ehr, diag).at(fp)
}

fn warn(code: IssueType, ehr: &'static str, fp: &str, diag: String) -> Issue {
    let mut i = Issue::error(code, ehr, diag).at(fp);
    i.severity = Severity::Warning;
    i
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_error(issues: &[Issue]) -> bool {
    issues.iter().any(|i| matches!(i.severity, Severity::Error | Severity::Fatal))
}

/// Whether `meta.profile` lists `url` (bare), with or without `|version`.
fn declares(v: &Value, url: &str) -> bool {
    v.get("meta")
        .and_then(|m| m.get("profile"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|p| p.split('|').next() == Some(url))
}

impl Cx {
    fn new(defs: &'static Definitions, extra: Vec<String>) -> Self {
        Self {
            defs,
            out: Vec::new(),
            extra,
            conforms: HashMap::new(),
            base_ok: HashMap::new(),
            runs_left: MAX_CONFORMANCE_RUNS,
        }
    }

    fn push(&mut self, i: Issue) {
        self.out.push(i);
    }

    /// Validates a resource at FHIRPath `fp` (`Patient` or `Bundle.entry[0].resource`).
    fn resource(&mut self, v: &Value, fp: &str, depth: usize) {
        if depth > MAX_DEPTH {
            self.push(err(
                IssueType::Structure,
                "EHR-VAL-019",
                fp,
                format!("resources are nested more than {MAX_DEPTH} levels deep"),
            ));
            return;
        }
        let Some(obj) = v.as_object() else {
            self.push(err(
                IssueType::Structure,
                "EHR-VAL-001",
                fp,
                format!("a resource must be a JSON object, found {}", json_kind(v)),
            ));
            return;
        };
        let Some(rt) = obj.get("resourceType").and_then(Value::as_str) else {
            self.push(err(
                IssueType::Structure,
                "EHR-VAL-001",
                fp,
                "resourceType is missing or not a string".to_string(),
            ));
            return;
        };
        let defs = self.defs;
        let Some(td) = defs.types.get(rt).filter(|_| defs.resource_types.contains(rt)) else {
            if defs.resource_names.contains(rt) {
                self.push(warn(
                    IssueType::NotSupported,
                    "EHR-VAL-017",
                    fp,
                    format!(
                        "resource type {rt} has no structural definition in this server; its content was not validated"
                    ),
                ));
            } else {
                self.push(err(
                    IssueType::Structure,
                    "EHR-VAL-002",
                    &format!("{fp}.resourceType"),
                    "resourceType is not a FHIR R4 resource type".to_string(),
                ));
            }
            return;
        };
        let mark = self.out.len();
        self.object(td, 0, obj, fp, true, depth);
        let base_ok = !has_error(self.out.get(mark..).unwrap_or_default());
        if depth > 0 {
            self.base_ok.insert(fp.to_string(), base_ok);
        }
        let profiles = obj.get("meta").and_then(|m| m.get("profile")).and_then(Value::as_array);
        let mut named: Vec<(String, String)> = Vec::new();
        for (i, p) in profiles.into_iter().flatten().enumerate() {
            let Some(url) = p.as_str() else { continue };
            let bare = url.split('|').next().unwrap_or(url);
            if !named.iter().any(|(u, _)| u == bare) {
                named.push((bare.to_string(), format!("{fp}.meta.profile[{i}]")));
            }
        }
        if depth == 0 {
            for bare in std::mem::take(&mut self.extra) {
                if !named.iter().any(|(u, _)| *u == bare) {
                    named.push((bare, fp.to_string()));
                }
            }
        }
        for (bare, pfp) in named {
            let mark = self.out.len();
            let mut applies = false;
            match (defs.profiles.get(&bare), rules::hand_only_type(&bare)) {
                (Some(prof), _) if prof.type_name == rt => {
                    applies = true;
                    self.profile(prof, v, fp, 0);
                }
                (Some(prof), _) => self.push(err(
                    IssueType::Structure,
                    "EHR-VAL-012",
                    &pfp,
                    format!("profile {} constrains {}, not {rt}", prof.name, prof.type_name),
                )),
                (None, Some(ty)) if ty == rt => applies = true,
                (None, Some(ty)) => {
                    let name = bare.rsplit('/').next().unwrap_or(&bare);
                    self.push(err(
                        IssueType::Structure,
                        "EHR-VAL-012",
                        &pfp,
                        format!("profile {name} constrains {ty}, not {rt}"),
                    ))
                }
                (None, None) => self.push(warn(
                    IssueType::Value,
                    "EHR-VAL-016",
                    &pfp,
                    format!("profile {bare} is not known to this server; validated against the base type only"),
                )),
            }
            // The hand rules of a profile run where the profile itself applies (a Bundle
            // profile named on a Patient is the EHR-VAL-012 above, nothing more).
            if applies {
                rules::check(&bare, v, fp, &mut self.out);
            }
            // Remembered for `profile` discriminators of the resource that contains this one.
            if depth > 0 && applies {
                let ok = base_ok && !has_error(self.out.get(mark..).unwrap_or_default());
                self.conforms.entry(fp.to_string()).or_default().insert(bare, ok);
            }
        }
    }

    /// Whether the resource `v` at `fp` conforms to profile `url` (bare): R4 `profile`
    /// discriminator semantics. The resource type decides first; then the result recorded while
    /// validating its declared profiles, else one run of the profile (base layer reused), cached.
    /// A profile this validator does not know, or an exhausted run budget, falls back to whether
    /// `meta.profile` declares it.
    fn conforms_to(&mut self, v: &Value, fp: &str, url: &str) -> bool {
        let defs = self.defs;
        let rt = v.get("resourceType").and_then(Value::as_str);
        let prof = defs.profiles.get(url);
        let want = prof.map(|p| p.type_name.as_str()).or(rules::hand_only_type(url));
        match want {
            Some(t) if rt != Some(t) => return false,
            Some(_) => {}
            None => return declares(v, url),
        }
        if let Some(&ok) = self.conforms.get(fp).and_then(|m| m.get(url)) {
            return ok;
        }
        // An element the profile requires at the top (or in `meta`, e.g. `meta.profile` of
        // the eCS profiles) is missing: the run would fail, so it is not spent.
        if let Some(p) = prof
            && misses_required(p, v)
        {
            self.conforms.entry(fp.to_string()).or_default().insert(url.to_string(), false);
            return false;
        }
        if self.runs_left == 0 {
            return declares(v, url);
        }
        self.runs_left -= 1;
        // The base layer ran on every nested resource before its container's profiles; a
        // resource it did not record stopped early (not an object, unknown type, too deep).
        let base_ok = self.base_ok.get(fp).copied().unwrap_or(false);
        let mut sub = Cx::new(defs, Vec::new());
        sub.conforms = std::mem::take(&mut self.conforms);
        sub.base_ok = std::mem::take(&mut self.base_ok);
        sub.runs_left = self.runs_left;
        if let Some(p) = prof {
            sub.profile(p, v, fp, 0);
        }
        rules::check(url, v, fp, &mut sub.out);
        let ok = base_ok && !has_error(&sub.out);
        self.conforms = sub.conforms;
        self.base_ok = sub.base_ok;
        self.runs_left = sub.runs_left;
        self.conforms.entry(fp.to_string()).or_default().insert(url.to_string(), ok);
        ok
    }

    /// Whether a slice item matches one discriminator of a slice.
    fn disc_matches(&mut self, d: &Disc, c: &PNode, key: &str, v: &Value, ifp: &str) -> bool {
        let Disc::Profile { path, types, profiles } = d else { return disc_matches(d, c, key, v) };
        let rfp = path.iter().fold(ifp.to_string(), |acc, seg| format!("{acc}.{seg}"));
        let Some(r) = path.iter().try_fold(v, |x, seg| x.get(seg.as_str())) else { return false };
        let rt = r.get("resourceType").and_then(Value::as_str);
        if !types.is_empty() && !types.iter().any(|t| rt == Some(t.as_str())) {
            return false;
        }
        profiles.iter().any(|url| self.conforms_to(r, &rfp, url))
    }

    /// Checks the properties of a JSON object against node `idx` of a base type tree.
    fn object(
        &mut self,
        td: &TypeDef,
        idx: usize,
        obj: &Map<String, Value>,
        fp: &str,
        is_resource: bool,
        depth: usize,
    ) {
        let defs = self.defs;
        let kids = td.children(idx);
        let mut counts = vec![0usize; kids.len()];
        if obj.is_empty() && !is_resource {
            self.push(err(
                IssueType::Structure,
                "EHR-VAL-004",
                fp,
                "an element must have content; empty objects are not allowed".to_string(),
            ));
        }
        for (key, v) in obj {
            if is_resource && key == "resourceType" {
                continue;
            }
            let (prim_ext, name) = match key.strip_prefix('_') {
                Some(n) => (true, n),
                None => (false, key.as_str()),
            };
            let kfp = format!("{fp}.{key}");
            let Some((ci, tcode)) = td.child_for_key(idx, name, &defs.all_types) else {
                self.push(err(
                    IssueType::Structure,
                    "EHR-VAL-003",
                    &kfp,
                    format!("unknown element {key} in {}", node_path(td, idx)),
                ));
                continue;
            };
            let Some(node) = td.nodes.get(ci) else { continue };
            if let Some(pos) = kids.iter().position(|&k| k == ci) {
                // A primitive with only `_x` (extensions, no value) still counts as present.
                let n = match v {
                    Value::Array(a) => a.len(),
                    _ => 1,
                };
                if let Some(c) = counts.get_mut(pos) {
                    *c = (*c).max(n);
                }
            }
            let repeats = node.max.repeats();
            if prim_ext {
                if !is_primitive(tcode) {
                    self.push(err(
                        IssueType::Structure,
                        "EHR-VAL-003",
                        &kfp,
                        format!("{key} is only allowed for primitive elements"),
                    ));
                    continue;
                }
                self.prim_ext(v, repeats, &kfp, depth);
                continue;
            }
            let sibling_ext = obj.get(&format!("_{key}"));
            if repeats {
                let Some(items) = v.as_array() else {
                    self.push(err(
                        IssueType::Structure,
                        "EHR-VAL-004",
                        &kfp,
                        format!("{} must be a JSON array", node.path),
                    ));
                    continue;
                };
                if items.is_empty() {
                    self.push(err(
                        IssueType::Structure,
                        "EHR-VAL-004",
                        &kfp,
                        format!("{} must not be an empty array", node.path),
                    ));
                }
                if node.max.exceeded_by(items.len()) {
                    self.push(err(
                        IssueType::Structure,
                        "EHR-VAL-007",
                        &kfp,
                        format!("maximum cardinality of {} is {}, found {}", node.path, node.max.label(), items.len()),
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    let ifp = format!("{kfp}[{i}]");
                    // null is a placeholder when `_key` carries the extension for this position.
                    if item.is_null() && sibling_ext.and_then(|s| s.get(i)).is_some_and(|x| !x.is_null()) {
                        continue;
                    }
                    self.value(td, ci, tcode, item, &ifp, depth);
                }
            } else if v.is_array() {
                self.push(err(
                    IssueType::Structure,
                    "EHR-VAL-004",
                    &kfp,
                    format!("{} has maximum cardinality {} and must not be a JSON array", node.path, node.max.label()),
                ));
            } else {
                self.value(td, ci, tcode, v, &kfp, depth);
            }
        }
        for (pos, &k) in kids.iter().enumerate() {
            let Some(n) = td.nodes.get(k) else { continue };
            let found = counts.get(pos).copied().unwrap_or(0);
            if (n.min as usize) > found {
                self.push(err(
                    IssueType::Required,
                    "EHR-VAL-006",
                    &format!("{fp}.{}", n.name),
                    format!("minimum cardinality of {} is {}, found {found}", n.path, n.min),
                ));
            }
        }
    }

    /// `_name` sibling: an object with only `id`/`extension` (or an array of them / null).
    fn prim_ext(&mut self, v: &Value, repeats: bool, fp: &str, depth: usize) {
        let defs = self.defs;
        let Some(elem) = defs.types.get("Element") else { return };
        let one = |cx: &mut Cx, x: &Value, xfp: &str| match x {
            Value::Object(o) => cx.object(elem, 0, o, xfp, false, depth),
            Value::Null if repeats => {}
            _ => cx.push(err(
                IssueType::Structure,
                "EHR-VAL-004",
                xfp,
                "primitive extension content must be a JSON object".to_string(),
            )),
        };
        match (v, repeats) {
            (Value::Array(a), true) => {
                for (i, x) in a.iter().enumerate() {
                    one(self, x, &format!("{fp}[{i}]"));
                }
            }
            (Value::Array(_), false) => {
                self.push(err(
                    IssueType::Structure,
                    "EHR-VAL-004",
                    fp,
                    "primitive extension content must not be a JSON array".to_string(),
                ));
            }
            _ => one(self, v, fp),
        }
    }

    /// Checks one value (not an array) of base node `ci` whose type is `tcode`.
    fn value(&mut self, td: &TypeDef, ci: usize, tcode: &str, v: &Value, fp: &str, depth: usize) {
        let defs = self.defs;
        let Some(node) = td.nodes.get(ci) else { return };
        if v.is_null() {
            self.push(err(IssueType::Structure, "EHR-VAL-004", fp, format!("{} must not be null", node.path)));
            return;
        }
        if !td.children(ci).is_empty() {
            match v.as_object() {
                Some(o) => self.object(td, ci, o, fp, false, depth),
                None => self.push(err(
                    IssueType::Structure,
                    "EHR-VAL-004",
                    fp,
                    format!("{} must be a JSON object", node.path),
                )),
            }
            return;
        }
        if is_primitive(tcode) {
            match primitive::check(tcode, v) {
                Ok(()) => {}
                Err(primitive::PrimError::Kind(want)) => {
                    self.push(err(
                        IssueType::Value,
                        "EHR-VAL-005",
                        fp,
                        format!("{} is of type {tcode} and must be {want}", node.path),
                    ));
                    return;
                }
                Err(primitive::PrimError::Format) => {
                    self.push(err(
                        IssueType::Value,
                        "EHR-VAL-005",
                        fp,
                        format!("{} is not a valid {tcode}", node.path),
                    ));
                    return;
                }
            }
        } else if tcode == "Resource" {
            self.resource(v, fp, depth + 1);
            return;
        } else if let Some(dt) = defs.types.get(tcode).filter(|_| !defs.resource_types.contains(tcode)) {
            match v.as_object() {
                Some(o) => self.object(dt, 0, o, fp, false, depth),
                None => {
                    self.push(err(
                        IssueType::Structure,
                        "EHR-VAL-004",
                        fp,
                        format!("{} is of type {tcode} and must be a JSON object", node.path),
                    ));
                    return;
                }
            }
        }
        if let Some(b) = &node.binding {
            self.binding(b, v, fp, &node.path);
        }
    }

    /// Required binding check; silently skipped when the value set is not available.
    fn binding(&mut self, vs_url: &str, v: &Value, fp: &str, path: &str) {
        let Some(vs) = self.defs.value_sets.get(vs_url) else { return };
        let in_vs = |system: Option<&str>, code: &str| match system {
            Some(s) if vs.contains_key(s) => vs.get(s).is_some_and(|c| c.contains(code)),
            // A legacy OID for a system the value set lists by URL, or the reverse.
            Some(s) if systems::equivalents(s).any(|e| vs.contains_key(e)) => {
                systems::equivalents(s).any(|e| vs.get(e).is_some_and(|c| c.contains(code)))
            }
            // Hand-written base sets have no system; codes alone decide.
            _ => vs.iter().any(|(s, c)| (s.is_empty() || system.is_none()) && c.contains(code)),
        };
        let coding_ok = |c: &Value| match c.get("code").and_then(Value::as_str) {
            Some(code) => in_vs(c.get("system").and_then(Value::as_str), code),
            None => true,
        };
        let ok = match v {
            Value::String(code) => in_vs(None, code),
            Value::Object(o) => match o.get("coding").and_then(Value::as_array) {
                Some(codings) => codings.is_empty() || codings.iter().any(coding_ok),
                None if o.contains_key("code") => coding_ok(v),
                None => true,
            },
            _ => true,
        };
        if !ok {
            let name = vs_url.rsplit('/').next().unwrap_or(vs_url);
            self.push(err(
                IssueType::Value,
                "EHR-VAL-015",
                fp,
                format!("the code of {path} is not in the required value set {name} ({vs_url})"),
            ));
        }
    }

    /// Validates against a profile; differential-only profiles also apply their parent profiles.
    fn profile(&mut self, p: &Profile, v: &Value, fp: &str, depth: usize) {
        let defs = self.defs;
        let Some(obj) = v.as_object() else { return };
        if !p.snapshot
            && depth < 8
            && let Some(parent) = defs.profiles.get(&p.base)
        {
            self.profile(parent, v, fp, depth + 1);
        }
        self.pnode_children(p, 0, obj, fp);
        if let Some(root) = p.nodes.first() {
            self.invariants(p, root, v, fp);
        }
    }

    fn invariants(&mut self, p: &Profile, n: &PNode, v: &Value, fp: &str) {
        for c in &n.constraints {
            if c.compiled.as_ref().and_then(|e| e.evaluate(v)) == Some(false) {
                let number = rules::rule_number(&c.key).map(|r| format!(" ({r})")).unwrap_or_default();
                let diag = format!("constraint {}{number} of profile {} is not satisfied by {}", c.key, p.name, n.path);
                let mut issue = err(IssueType::Invariant, "EHR-VAL-018", fp, diag).rule(c.key.as_str());
                if !c.error {
                    issue.severity = Severity::Warning;
                }
                self.push(issue);
            }
        }
    }

    /// Applies the children of profile node `idx` to a JSON object.
    fn pnode_children(&mut self, p: &Profile, idx: usize, obj: &Map<String, Value>, fp: &str) {
        let Some(node) = p.nodes.get(idx) else { return };
        for &ci in &node.children {
            let Some(c) = p.nodes.get(ci) else { continue };
            let vals = collect(obj, c, fp);
            let count = vals.len();
            let efp = format!("{fp}.{}", c.name);
            if let Some(min) = c.min
                && count < min as usize
            {
                self.push(err(
                    IssueType::Required,
                    "EHR-VAL-008",
                    &efp,
                    format!("minimum cardinality of {} is {min} in profile {}, found {count}", c.path, p.name),
                ));
            }
            if let Some(max) = c.max
                && max.exceeded_by(count)
            {
                self.push(err(
                    IssueType::Structure,
                    "EHR-VAL-009",
                    &efp,
                    format!(
                        "maximum cardinality of {} is {} in profile {}, found {count}",
                        c.path,
                        max.label(),
                        p.name
                    ),
                ));
            }
            for (key, ifp, v) in &vals {
                if c.choice && !c.types.is_empty() {
                    let suffix = key.strip_prefix(c.name.as_str()).unwrap_or("");
                    if !c.types.iter().any(|t| model::type_suffix_matches(t, suffix)) {
                        self.push(err(
                            IssueType::Structure,
                            "EHR-VAL-012",
                            ifp,
                            format!("type {suffix} is not allowed for {} in profile {}", c.path, p.name),
                        ));
                        continue;
                    }
                }
                self.pvalue(p, ci, v, ifp);
            }
            if c.sliced && !c.slices.is_empty() {
                self.slicing(p, c, &vals, &efp);
            }
        }
    }

    fn slicing(&mut self, p: &Profile, c: &PNode, vals: &[(&str, String, &Value)], efp: &str) {
        // Not enforced when some slice uses a discriminator this validator cannot evaluate.
        let Some(discs) = &c.slice_discs else { return };
        let mut counts = vec![0usize; c.slices.len()];
        for (key, ifp, v) in vals {
            let mut hit = None;
            for (si, d) in discs.iter().enumerate() {
                if d.iter().all(|d| self.disc_matches(d, c, key, v, ifp)) {
                    hit = Some(si);
                    break;
                }
            }
            match hit {
                Some(si) => {
                    if let Some(n) = counts.get_mut(si) {
                        *n += 1;
                    }
                    if let Some(&sidx) = c.slices.get(si) {
                        self.pvalue(p, sidx, v, ifp);
                    }
                }
                None if c.closed => self.push(err(
                    IssueType::Structure,
                    "EHR-VAL-014",
                    ifp,
                    format!(
                        "item does not match any slice of {} and the slicing is closed in profile {}",
                        c.path, p.name
                    ),
                )),
                None => {}
            }
        }
        for (si, &sidx) in c.slices.iter().enumerate() {
            let Some(s) = p.nodes.get(sidx) else { continue };
            let n = counts.get(si).copied().unwrap_or(0);
            // Built only for a finding: slicings are evaluated on every write.
            let sname = || slice_label(s, discs.get(si));
            if let Some(min) = s.min
                && n < min as usize
            {
                self.push(err(
                    IssueType::Structure,
                    "EHR-VAL-013",
                    efp,
                    format!(
                        "slice {} of {} requires at least {min} item(s) in profile {}, found {n}",
                        sname(),
                        c.path,
                        p.name
                    ),
                ));
            }
            if let Some(max) = s.max
                && max.exceeded_by(n)
            {
                self.push(err(
                    IssueType::Structure,
                    "EHR-VAL-013",
                    efp,
                    format!(
                        "slice {} of {} allows at most {} item(s) in profile {}, found {n}",
                        sname(),
                        c.path,
                        max.label(),
                        p.name
                    ),
                ));
            }
        }
    }

    /// Checks one value against profile node `ni` (fixed, pattern, binding, children, type profiles).
    fn pvalue(&mut self, p: &Profile, ni: usize, v: &Value, fp: &str) {
        let Some(n) = p.nodes.get(ni) else { return };
        if let Some(f) = &n.fixed
            && !json_eq(f, v)
        {
            self.push(err(
                IssueType::Value,
                "EHR-VAL-010",
                fp,
                format!("{} does not have the fixed value required by profile {}", n.path, p.name),
            ));
        }
        if let Some(pat) = &n.pattern
            && !pattern_match(pat, v)
        {
            self.push(err(
                IssueType::Value,
                "EHR-VAL-011",
                fp,
                format!("{} does not match the pattern required by profile {}", n.path, p.name),
            ));
        }
        if let Some(b) = &n.binding {
            self.binding(b, v, fp, &n.path);
        }
        let Some(obj) = v.as_object() else { return };
        self.pnode_children(p, ni, obj, fp);
        if !n.constraints.is_empty() {
            self.invariants(p, n, v, fp);
        }
        // Extension and data-type profiles (JP_MedicationDosage_eCS, JP_HumanName, ...).
        let defs = self.defs;
        for tp in &n.type_profiles {
            // A resource already shown to conform (declared profile, `profile` discriminator)
            // would only repeat its findings.
            if self.conforms.get(fp).and_then(|m| m.get(tp)) == Some(&true) {
                continue;
            }
            if let Some(sub) = defs.profiles.get(tp)
                && sub.url != p.url
                && n.types.contains(&sub.type_name)
            {
                self.profile(sub, v, fp, 0);
            }
        }
    }
}

fn node_path(td: &TypeDef, idx: usize) -> &str {
    td.nodes.get(idx).map(|n| n.path.as_str()).unwrap_or("")
}

/// Whether `v` lacks an element that profile `p` requires among the root's children or the
/// children of `meta`: a cheap proof of non-conformance (the profile run would report it as
/// EHR-VAL-008), so that entry slicing does not spend a run on it.
fn misses_required(p: &Profile, v: &Value) -> bool {
    let (Some(obj), Some(root)) = (v.as_object(), p.nodes.first()) else { return false };
    let present = |o: &Map<String, Value>, c: &PNode| {
        let has = |x: &Value| !matches!(x, Value::Array(a) if a.is_empty());
        if c.choice {
            o.iter().any(|(k, x)| {
                k.strip_prefix(c.name.as_str()).is_some_and(|s| s.starts_with(|ch: char| ch.is_ascii_uppercase()))
                    && has(x)
            })
        } else {
            o.get(c.name.as_str()).is_some_and(has)
        }
    };
    let absent = |o: &Map<String, Value>, c: &PNode| c.min.is_some_and(|m| m > 0) && !present(o, c);
    root.children.iter().filter_map(|&ci| p.nodes.get(ci)).any(|c| {
        absent(obj, c)
            || (c.name == "meta"
                && obj
                    .get("meta")
                    .and_then(Value::as_object)
                    .is_some_and(|m| c.children.iter().filter_map(|&k| p.nodes.get(k)).any(|k| absent(m, k))))
    })
}

/// The instance values of profile element `c` in `obj`: (property name, FHIRPath, value).
fn collect<'a>(obj: &'a Map<String, Value>, c: &PNode, fp: &str) -> Vec<(&'a str, String, &'a Value)> {
    let mut out = Vec::new();
    let mut push = |k: &'a str, v: &'a Value| match v {
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                out.push((k, format!("{fp}.{k}[{i}]"), x));
            }
        }
        _ => out.push((k, format!("{fp}.{k}"), v)),
    };
    if c.choice {
        for (k, v) in obj {
            if k.strip_prefix(c.name.as_str()).is_some_and(|s| s.starts_with(|ch: char| ch.is_ascii_uppercase())) {
                push(k.as_str(), v);
            }
        }
    } else if let Some((k, v)) = obj.get_key_value(c.name.as_str()) {
        push(k.as_str(), v);
    }
    out
}

/// `organization (2..4, JP_Organization_eCS)`, `referralPurposeSection (1..1, code.coding.code =
/// 950)`: the slice name, its cardinality and what tells its items apart (profile constants only,
/// never instance values).
fn slice_label(s: &PNode, discs: Option<&Vec<Disc>>) -> String {
    let name = s.slice_name.as_deref().unwrap_or("");
    let card = format!("{}..{}", s.min.unwrap_or(0), s.max.map(|m| m.label()).unwrap_or_else(|| "*".to_string()));
    let what: Vec<String> = discs
        .into_iter()
        .flatten()
        .filter_map(|d| match d {
            Disc::Value { path, expect: Value::String(x), .. } => Some(format!("{} = {x}", path.join("."))),
            Disc::Profile { profiles, .. } => {
                Some(profiles.iter().map(|p| p.rsplit('/').next().unwrap_or(p)).collect::<Vec<_>>().join(" | "))
            }
            _ => None,
        })
        .collect();
    if what.is_empty() { format!("{name} ({card})") } else { format!("{name} ({card}, {})", what.join(", ")) }
}

fn disc_matches(d: &Disc, c: &PNode, key: &str, v: &Value) -> bool {
    match d {
        Disc::Value { path, expect, pattern } => {
            let mut found = Vec::new();
            values_at(v, path, &mut found);
            found.iter().any(|x| if *pattern { pattern_match(expect, x) } else { json_eq(expect, x) })
        }
        Disc::Exists { path, must } => {
            let mut found = Vec::new();
            values_at(v, path, &mut found);
            found.is_empty() != *must
        }
        Disc::Type { types } => {
            let suffix = key.strip_prefix(c.name.as_str()).unwrap_or("");
            let rt = v.get("resourceType").and_then(Value::as_str);
            types.iter().any(|t| (c.choice && model::type_suffix_matches(t, suffix)) || rt == Some(t.as_str()))
        }
        // Needs the validator (`Cx::disc_matches`); never reached from there.
        Disc::Profile { .. } => false,
    }
}

/// Deep equality with numbers compared by value (1 == 1.0) and system URIs through the legacy
/// OID table (`urn:oid:1.2.392.100495.20.3.23` == `…/mhlw/IdSystem/MedicalOrganizationID`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::String(x), Value::String(y)) => systems::same_system(x, y),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| json_eq(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// FHIR pattern semantics: every property of the pattern is present with a matching value; a
/// pattern array matches if each of its items matches some item of the instance array.
fn pattern_match(pat: &Value, v: &Value) -> bool {
    match (pat, v) {
        (Value::Object(p), Value::Object(o)) => {
            p.iter().all(|(k, pv)| o.get(k).is_some_and(|ov| pattern_match(pv, ov)))
        }
        (Value::Array(p), Value::Array(o)) => p.iter().all(|pi| o.iter().any(|oi| pattern_match(pi, oi))),
        // A single pattern value against a repeating instance (or vice versa) is lenient.
        (Value::Array(p), o) => p.iter().all(|pi| pattern_match(pi, o)),
        (p, Value::Array(o)) => o.iter().any(|oi| pattern_match(p, oi)),
        _ => json_eq(pat, v),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn codes(v: &Value) -> Vec<(&'static str, String)> {
        Validator::new()
            .validate(v)
            .into_iter()
            .filter(|i| i.severity == Severity::Error)
            .map(|i| (i.ehr_code, i.expression.first().cloned().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn minimal_patient_is_valid() {
        assert!(codes(&json!({"resourceType": "Patient", "gender": "male", "birthDate": "1990-01-01"})).is_empty());
    }

    #[test]
    fn base_errors() {
        let v = json!({"resourceType": "Patient", "foo": 1, "gender": "x", "active": "yes",
            "name": {"family": "A"}, "_birthDate": {"extension": [{"url": "http://e", "valueString": "a"}]}});
        let c = codes(&v);
        assert!(c.contains(&("EHR-VAL-003", "Patient.foo".into())), "{c:?}");
        assert!(c.contains(&("EHR-VAL-015", "Patient.gender".into())), "{c:?}");
        assert!(c.contains(&("EHR-VAL-005", "Patient.active".into())), "{c:?}");
        assert!(c.contains(&("EHR-VAL-004", "Patient.name".into())), "{c:?}");
        assert_eq!(c.len(), 4, "{c:?}");
    }

    #[test]
    fn choice_and_datatypes() {
        let v = json!({"resourceType": "Observation", "status": "final", "code": {"text": "t"},
            "valueQuantity": {"value": 1, "unit": "mg", "bogus": 1}, "valueFoo": 1});
        let c = codes(&v);
        assert!(c.contains(&("EHR-VAL-003", "Observation.valueQuantity.bogus".into())), "{c:?}");
        assert!(c.contains(&("EHR-VAL-003", "Observation.valueFoo".into())), "{c:?}");
        assert_eq!(c.len(), 2, "{c:?}");
    }

    #[test]
    fn hand_table_resource() {
        let v = json!({"resourceType": "Slot", "schedule": {"reference": "Schedule/1"}, "status": "free",
            "start": "2024-01-01T09:00:00Z"});
        assert_eq!(codes(&v), vec![("EHR-VAL-006", "Slot.end".to_string())]);
    }

    #[test]
    fn unknown_type_and_profile() {
        assert_eq!(codes(&json!({"resourceType": "Nope"})), vec![("EHR-VAL-002", "Nope.resourceType".to_string())]);
        let issues =
            Validator::new().validate(&json!({"resourceType": "Patient", "meta": {"profile": ["http://x/y"]}}));
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].severity, Severity::Warning);
        assert_eq!(issues[0].ehr_code, "EHR-VAL-016");
    }

    #[test]
    fn knows_profiles() {
        let v = Validator::new();
        assert!(v.knows_profile("http://jpfhir.jp/fhir/core/StructureDefinition/JP_Patient"));
        assert!(v.knows_profile("http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Patient_eCS|1.5.2"));
        assert!(!v.knows_profile("http://example.org/x"));
    }

    /// The IG invariants outside the evaluator's subset; kept in step with profiles/README.md.
    #[test]
    fn invariants_not_evaluable() {
        let mut keys: Vec<String> = definitions()
            .profiles
            .values()
            .flat_map(|p| p.nodes.iter().flat_map(|n| n.constraints.iter()))
            .filter(|c| !fhirpath::is_supported(&c.expression))
            .map(|c| c.key.clone())
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys, ["txt-1", "txt-2"]);
    }

    #[test]
    fn entry_profile_invariants_read_as_intended() {
        let rewritten: Vec<&str> = definitions()
            .profiles
            .values()
            .flat_map(|p| p.nodes.iter().flat_map(|n| n.constraints.iter()))
            .filter(|c| c.key.starts_with("validEntryProfile-"))
            .map(|c| c.expression.as_str())
            .collect();
        assert!(rewritten.len() >= 5, "{rewritten:?}");
        assert!(rewritten.iter().all(|e| e.ends_with("|'))")), "{rewritten:?}");
        let url = "http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_Condition_eCS";
        let e =
            format!("entry.resource.ofType(Condition).meta.profile.all($this = '{url}' or $this.startsWith('{url}|'))");
        let bundle = |p: &str| json!({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Condition", "meta": {"profile": [p]}}}]});
        assert_eq!(fhirpath::evaluate(&e, &bundle(&format!("{url}|1"))), Some(true));
        assert_eq!(fhirpath::evaluate(&e, &bundle(url)), Some(true));
        assert_eq!(fhirpath::evaluate(&e, &bundle("http://example.org/Other")), Some(false));
    }

    #[test]
    fn invariant_issues_carry_their_key() {
        let m = json!({"resourceType": "MedicationRequest",
            "meta": {"profile": ["http://jpfhir.jp/fhir/eCS/StructureDefinition/JP_MedicationRequest_eCS"]},
            "status": "completed", "intent": "order", "subject": {"reference": "urn:uuid:x"},
            "medicationCodeableConcept": {"coding": [{"system": "http://example.org", "code": "1"}], "text": "t"}});
        let issues = Validator::new().validate(&m);
        assert!(
            issues.iter().any(|i| i.ehr_code == "EHR-VAL-018"
                && i.rule.as_deref() == Some("needs-anyOfStandardCode-medication")),
            "{issues:?}"
        );
    }

    #[test]
    fn pattern_semantics() {
        let pat = json!({"coding": [{"system": "s", "code": "c"}]});
        assert!(pattern_match(
            &pat,
            &json!({"coding": [{"system": "o"}, {"system": "s", "code": "c", "display": "d"}], "text": "t"})
        ));
        assert!(!pattern_match(&pat, &json!({"coding": [{"system": "s", "code": "d"}]})));
    }
}
