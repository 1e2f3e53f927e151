//! The catalogue of checks, their results, the readable report and JUnit XML.

use std::fmt::Write;
use std::time::Duration;

/// Where the requirements are described: every check links to an anchor of this document.
pub const REQUIREMENTS_DOC: &str = "docs/conformance.md";

/// A requirement of `docs/conformance.md` (a row of its traceability table), by anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    /// The anchor in `docs/conformance.md` (`req-fhir-rest`).
    pub anchor: &'static str,
    /// The row, as the table names it.
    pub title: &'static str,
}

impl Requirement {
    /// `docs/conformance.md#req-fhir-rest`.
    pub fn link(&self) -> String {
        format!("{REQUIREMENTS_DOC}#{}", self.anchor)
    }
}

pub const REQ_FHIR_REST: Requirement = Requirement { anchor: "req-fhir-rest", title: "③ HL7 FHIR R4 REST API" };
pub const REQ_HISTORY: Requirement =
    Requirement { anchor: "req-history", title: "⑤ guideline: revision history, never overwrite (真正性)" };
pub const REQ_SEARCH: Requirement = Requirement { anchor: "req-search", title: "③ HL7 FHIR R4 REST API: search" };
pub const REQ_CAPABILITY: Requirement =
    Requirement { anchor: "req-capability", title: "CapabilityStatement at `/metadata`" };
pub const REQ_JP_CORE: Requirement = Requirement { anchor: "req-jp-core", title: "③ JP Core profiles" };
pub const REQ_EXPORT: Requirement =
    Requirement { anchor: "req-export", title: "④ export in JSON / FHIR Bulk Data `$export` (NDJSON, async jobs)" };
pub const REQ_IMPORT: Requirement =
    Requirement { anchor: "req-import", title: "④ import of JSON, XML, CSV (`$import`)" };
pub const REQ_MFA: Requirement =
    Requirement { anchor: "req-mfa", title: "② / ⑤ multi-factor authentication (TOTP)" };
pub const REQ_SMART: Requirement =
    Requirement { anchor: "req-smart", title: "login: authorization code + PKCE S256, SMART discovery" };
pub const REQ_AUDIT: Requirement =
    Requirement { anchor: "req-audit", title: "⑤ guideline: access logs / audit trail (AuditEvent per access)" };
pub const REQ_TENANCY: Requirement = Requirement { anchor: "req-tenancy", title: "② multi-tenant data isolation" };
pub const REQ_ERRORS: Requirement = Requirement { anchor: "req-errors", title: "every error is an OperationOutcome" };

/// One check of the kit.
#[derive(Debug, Clone, Copy)]
pub struct CheckDef {
    /// Stable id (`CONF-FHIR-001`).
    pub id: &'static str,
    /// The group it is reported under.
    pub group: &'static str,
    /// What it verifies, in one line.
    pub title: &'static str,
    pub requirement: Requirement,
}

const fn check(id: &'static str, group: &'static str, title: &'static str, requirement: Requirement) -> CheckDef {
    CheckDef { id, group, title, requirement }
}

const CAP: &str = "CapabilityStatement";
const FHIR: &str = "FHIR interactions";
const SEARCH: &str = "Search";
const PROFILE: &str = "JP Core profiles";
const BULK: &str = "Export and import";
const AUTH: &str = "Login, MFA and SMART";
const AUDIT: &str = "Audit";
const TENANT: &str = "Tenant isolation";
const ERR: &str = "Error shapes";

/// Every check, in the order they are reported.
pub const CHECKS: &[CheckDef] = &[
    check("CONF-CAP-001", CAP, "GET /metadata is an R4 CapabilityStatement for a server, in JSON", REQ_CAPABILITY),
    check(
        "CONF-CAP-002",
        CAP,
        "the statement declares every interaction and search parameter the kit uses on Patient and Observation",
        REQ_CAPABILITY,
    ),
    check(
        "CONF-CAP-003",
        CAP,
        "every type declared searchable answers a search (200, or 401/403 for scopes), never 404/405/501",
        REQ_CAPABILITY,
    ),
    check("CONF-FHIR-001", FHIR, "create: 201, Location with the version, id, meta.versionId 1, ETag", REQ_FHIR_REST),
    check("CONF-FHIR-002", FHIR, "read: 200, the stored content, ETag W/\"1\"", REQ_FHIR_REST),
    check("CONF-FHIR-003", FHIR, "update with a current If-Match: 200, version 2", REQ_FHIR_REST),
    check("CONF-FHIR-004", FHIR, "update with a stale If-Match: 412 and nothing written", REQ_FHIR_REST),
    check("CONF-FHIR-005", FHIR, "JSON Patch: 200, a new version with the change", REQ_FHIR_REST),
    check("CONF-FHIR-006", FHIR, "vread and instance history return every version", REQ_HISTORY),
    check(
        "CONF-FHIR-007",
        FHIR,
        "conditional create (If-None-Exist): an existing match is returned, no match creates",
        REQ_FHIR_REST,
    ),
    check(
        "CONF-FHIR-008",
        FHIR,
        "delete: 200/204, then read is 410 (or 404) and history keeps the versions",
        REQ_HISTORY,
    ),
    check("CONF-SEARCH-001", SEARCH, "string parameter (Patient family, exact and prefix)", REQ_SEARCH),
    check("CONF-SEARCH-002", SEARCH, "token parameter (Patient identifier system|value)", REQ_SEARCH),
    check("CONF-SEARCH-003", SEARCH, "date parameter with prefixes (Patient birthdate ge/lt)", REQ_SEARCH),
    check("CONF-SEARCH-004", SEARCH, "reference parameter (Observation subject)", REQ_SEARCH),
    check("CONF-SEARCH-005", SEARCH, "_count pages with next links that reach every match once; total", REQ_SEARCH),
    check("CONF-SEARCH-006", SEARCH, "_include adds the referenced resource with search.mode include", REQ_SEARCH),
    check("CONF-SEARCH-007", SEARCH, "_summary=count answers the total without entries", REQ_SEARCH),
    check(
        "CONF-SEARCH-008",
        SEARCH,
        "an unknown parameter is ignored (lenient) and refused with Prefer: handling=strict (400)",
        REQ_SEARCH,
    ),
    check(
        "CONF-PROF-001",
        PROFILE,
        "every resource the server returned validates against its meta.profile or the JP Core profile of its type",
        REQ_JP_CORE,
    ),
    check(
        "CONF-BULK-001",
        BULK,
        "Patient/$export kick-off (202, Content-Location) and polling to a 200 manifest",
        REQ_EXPORT,
    ),
    check(
        "CONF-BULK-002",
        BULK,
        "the manifest: transactionTime, request, requiresAccessToken, outputs of the requested types only",
        REQ_EXPORT,
    ),
    check(
        "CONF-BULK-003",
        BULK,
        "every NDJSON line is one resource of its file's type; the kit's records are in it",
        REQ_EXPORT,
    ),
    check(
        "CONF-BULK-004",
        BULK,
        "$import of NDJSON: records readable under their ids; a second import changes nothing",
        REQ_IMPORT,
    ),
    check(
        "CONF-AUTH-001",
        AUTH,
        ".well-known/smart-configuration: endpoints, S256, authorization_code, capabilities",
        REQ_SMART,
    ),
    check("CONF-AUTH-002", AUTH, "an authorization request without a PKCE challenge is refused", REQ_SMART),
    check("CONF-AUTH-003", AUTH, "the password alone yields no code and no token: the TOTP step is required", REQ_MFA),
    check(
        "CONF-AUTH-004",
        AUTH,
        "authorize (PKCE) → password → TOTP → code → a short-lived bearer token the FHIR API accepts",
        REQ_MFA,
    ),
    check(
        "CONF-AUTH-005",
        AUTH,
        "a code redeemed with a wrong PKCE verifier is refused, and the code is spent",
        REQ_SMART,
    ),
    check("CONF-AUDIT-001", AUDIT, "a read produces an AuditEvent naming the patient, found by the auditor", REQ_AUDIT),
    check("CONF-AUDIT-002", AUDIT, "the audit trail cannot be written through the API", REQ_AUDIT),
    check("CONF-TEN-001", TENANT, "another tenant's resource is 404 on read and vread", REQ_TENANCY),
    check("CONF-TEN-002", TENANT, "another tenant's resource is not found by search (_id, identifier)", REQ_TENANCY),
    check(
        "CONF-TEN-003",
        TENANT,
        "another tenant's resource is 404 on instance history, and absent from type history",
        REQ_TENANCY,
    ),
    check("CONF-TEN-004", TENANT, "_include and _revinclude never bring another tenant's resources", REQ_TENANCY),
    check(
        "CONF-TEN-005",
        TENANT,
        "a condition never matches another tenant's resource (If-None-Exist creates anew)",
        REQ_TENANCY,
    ),
    check("CONF-ERR-001", ERR, "404 for an unknown id is an OperationOutcome", REQ_ERRORS),
    check("CONF-ERR-002", ERR, "400 for a malformed JSON body is an OperationOutcome", REQ_ERRORS),
    check("CONF-ERR-003", ERR, "401 without a token is an OperationOutcome", REQ_ERRORS),
    check("CONF-ERR-004", ERR, "405 for a wrong method on /metadata is an OperationOutcome", REQ_ERRORS),
    check("CONF-ERR-005", ERR, "412 for a stale If-Match is an OperationOutcome", REQ_ERRORS),
    check("CONF-ERR-006", ERR, "400 for an unknown parameter under handling=strict is an OperationOutcome", REQ_ERRORS),
];

/// The definition of a check by id.
pub fn definition(id: &str) -> Option<&'static CheckDef> {
    CHECKS.iter().find(|c| c.id == id)
}

/// How a check ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    /// Failed, with the reason.
    Fail(String),
    /// Not run, with the reason (an input missing, a check it depends on failed).
    Skip(String),
}

/// The result of one check.
#[derive(Debug, Clone)]
pub struct CheckResult {
    pub def: &'static CheckDef,
    pub verdict: Verdict,
    pub duration: Duration,
}

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The server the kit ran against.
    pub base_url: String,
    /// In the order of [`CHECKS`].
    pub results: Vec<CheckResult>,
    /// Remarks on the run (an account the kit enrolled).
    pub notes: Vec<String>,
}

impl Report {
    /// The ids of the failed checks.
    pub fn failed(&self) -> Vec<&'static str> {
        self.with(|v| matches!(v, Verdict::Fail(_)))
    }

    /// The ids of the skipped checks.
    pub fn skipped(&self) -> Vec<&'static str> {
        self.with(|v| matches!(v, Verdict::Skip(_)))
    }

    /// The ids of the passed checks.
    pub fn passed(&self) -> Vec<&'static str> {
        self.with(|v| *v == Verdict::Pass)
    }

    fn with(&self, pred: impl Fn(&Verdict) -> bool) -> Vec<&'static str> {
        self.results.iter().filter(|r| pred(&r.verdict)).map(|r| r.def.id).collect()
    }

    /// The readable report: grouped, one line per check, reasons indented, totals.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "EHR conformance kit against {}", self.base_url);
        let _ = writeln!(out, "requirements: {REQUIREMENTS_DOC}");
        let mut group = "";
        for r in &self.results {
            if r.def.group != group {
                group = r.def.group;
                let _ = writeln!(out, "\n== {group} ==");
            }
            let (mark, reason) = match &r.verdict {
                Verdict::Pass => ("PASS", None),
                Verdict::Fail(why) => ("FAIL", Some(why)),
                Verdict::Skip(why) => ("SKIP", Some(why)),
            };
            let _ = writeln!(out, "  {mark}  {:<16} {}", r.def.id, r.def.title);
            let _ = writeln!(out, "        requirement: {} ({})", r.def.requirement.title, r.def.requirement.link());
            if let Some(why) = reason {
                let _ = writeln!(out, "        reason: {why}");
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "\nnote: {note}");
        }
        let _ = writeln!(
            out,
            "\ntotal {}: {} passed, {} failed, {} skipped",
            self.results.len(),
            self.passed().len(),
            self.failed().len(),
            self.skipped().len()
        );
        out
    }

    /// JUnit XML: one `testsuite` per group, one `testcase` per check (`name` = id and title),
    /// `failure` and `skipped` with the reason, the requirement as a property.
    pub fn to_junit(&self) -> String {
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let total: f64 = self.results.iter().map(|r| r.duration.as_secs_f64()).sum();
        let _ = writeln!(
            out,
            "<testsuites name=\"ehr-conformance\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" errors=\"0\" time=\"{total:.3}\">",
            self.results.len(),
            self.failed().len(),
            self.skipped().len()
        );
        let mut groups: Vec<&str> = Vec::new();
        for r in &self.results {
            if !groups.contains(&r.def.group) {
                groups.push(r.def.group);
            }
        }
        for group in groups {
            let cases: Vec<&CheckResult> = self.results.iter().filter(|r| r.def.group == group).collect();
            let failures = cases.iter().filter(|r| matches!(r.verdict, Verdict::Fail(_))).count();
            let skipped = cases.iter().filter(|r| matches!(r.verdict, Verdict::Skip(_))).count();
            let time: f64 = cases.iter().map(|r| r.duration.as_secs_f64()).sum();
            let _ = writeln!(
                out,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" errors=\"0\" time=\"{time:.3}\">",
                xml_escape(group),
                cases.len()
            );
            for r in cases {
                let _ = writeln!(
                    out,
                    "    <testcase classname=\"ehr-conformance.{}\" name=\"{} {}\" time=\"{:.3}\">",
                    xml_escape(&group.to_lowercase().replace(' ', "-")),
                    r.def.id,
                    xml_escape(r.def.title),
                    r.duration.as_secs_f64()
                );
                let _ = writeln!(
                    out,
                    "      <properties><property name=\"requirement\" value=\"{}\"/><property name=\"requirement-link\" value=\"{}\"/></properties>",
                    xml_escape(r.def.requirement.title),
                    xml_escape(&r.def.requirement.link())
                );
                match &r.verdict {
                    Verdict::Pass => {}
                    Verdict::Fail(why) => {
                        let _ = writeln!(
                            out,
                            "      <failure message=\"{}\" type=\"conformance\">{}</failure>",
                            xml_escape(why),
                            xml_escape(why)
                        );
                    }
                    Verdict::Skip(why) => {
                        let _ = writeln!(out, "      <skipped message=\"{}\"/>", xml_escape(why));
                    }
                }
                out.push_str("    </testcase>\n");
            }
            out.push_str("  </testsuite>\n");
        }
        out.push_str("</testsuites>\n");
        out
    }
}

/// Escapes text for XML attributes and content (and drops characters XML 1.0 cannot carry).
fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_well_formed() {
        for (i, c) in CHECKS.iter().enumerate() {
            assert!(c.id.starts_with("CONF-") && c.id.len() >= 12, "{}", c.id);
            assert!(CHECKS[i + 1..].iter().all(|o| o.id != c.id), "duplicate {}", c.id);
        }
    }

    #[test]
    fn junit_escapes_and_counts() {
        let report = Report {
            base_url: "http://x".into(),
            results: vec![
                CheckResult { def: &CHECKS[0], verdict: Verdict::Pass, duration: Duration::from_millis(5) },
                CheckResult {
                    def: &CHECKS[1],
                    verdict: Verdict::Fail("got <b>\"x\" & y".into()),
                    duration: Duration::ZERO,
                },
                CheckResult { def: &CHECKS[2], verdict: Verdict::Skip("no input".into()), duration: Duration::ZERO },
            ],
            notes: Vec::new(),
        };
        let xml = report.to_junit();
        assert!(xml.contains("tests=\"3\" failures=\"1\" skipped=\"1\""), "{xml}");
        assert!(xml.contains("got &lt;b&gt;&quot;x&quot; &amp; y"), "{xml}");
        let text = report.to_text();
        assert!(text.contains("FAIL  CONF-CAP-002"), "{text}");
        assert!(text.contains("total 3: 1 passed, 1 failed, 1 skipped"), "{text}");
    }
}
