//! The route tables the OpenAPI documents are generated from: one per router, naming the source
//! file that builds the router. `route_tables_match_the_routers` (below) reads those files and
//! fails when a `.route(…)` there is missing here (or a table entry is no longer routed), and
//! `tests/api/openapi.rs` sends every documented operation to the real app and fails on "no such
//! route" — so a table cannot drift from its router in either direction.
//!
//! The FHIR engine's routes are templated by type (`/{ty}/{id}`); [`fhir_engine`] expands them
//! over the types a target serves, which is what clients and fuzzers need.

/// What a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    /// A FHIR resource of the path's type (`application/fhir+json`).
    Resource,
    /// A FHIR `Bundle` (`batch` or `transaction`).
    Bundle,
    /// A FHIR resource of any type (`$validate` of a type takes that type; loose on purpose).
    AnyResource,
    /// A FHIR `Parameters` resource.
    Parameters,
    /// A JSON object (`application/json`).
    Json,
    /// A JSON Patch document (`application/json-patch+json`).
    JsonPatch,
    /// An HTML/OAuth form (`application/x-www-form-urlencoded`) with these fields.
    Form(&'static [&'static str]),
    /// NDJSON files: `multipart/form-data`, or one file as `application/fhir+ndjson`.
    Ndjson,
}

/// What a successful answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A FHIR resource of the path's type.
    Resource,
    /// A FHIR resource of any type.
    AnyResource,
    /// A FHIR `Bundle`.
    Bundle,
    /// A FHIR `OperationOutcome`.
    Outcome,
    /// A FHIR `Parameters` resource.
    Parameters,
    /// JSON whose shape the document does not pin (described in prose in the docs).
    Json,
    /// An HTML page (the login forms) or JSON for clients that ask for it.
    HtmlOrJson,
    /// Plain text.
    Text,
    /// No body.
    Empty,
    /// NDJSON (an export file).
    Ndjson,
    /// A redirect (`Location`).
    Redirect,
    /// Accepted for asynchronous processing (`Content-Location` names the status URL).
    Accepted,
}

/// One documented operation of a router.
#[derive(Debug, Clone, Copy)]
pub struct RouteDoc {
    pub method: &'static str,
    /// The path as clients call it (`{name}` for a path parameter).
    pub path: &'static str,
    pub summary: &'static str,
    /// `false` for public routes (discovery, login steps, health).
    pub auth: bool,
    pub body: Body,
    /// Success statuses and what they carry.
    pub ok: &'static [(u16, Reply)],
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    body: Body,
    ok: &'static [(u16, Reply)],
) -> RouteDoc {
    RouteDoc { method, path, summary, auth: true, body, ok }
}

const fn public(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    body: Body,
    ok: &'static [(u16, Reply)],
) -> RouteDoc {
    RouteDoc { method, path, summary, auth: false, body, ok }
}

const JSON: &[(u16, Reply)] = &[(200, Reply::Json)];
const CREATED: &[(u16, Reply)] = &[(200, Reply::Json), (201, Reply::Json)];
const NO_CONTENT: &[(u16, Reply)] = &[(200, Reply::Json), (204, Reply::Empty)];
const TOKEN_FIELDS: &[&str] = &[
    "grant_type",
    "code",
    "redirect_uri",
    "client_id",
    "code_verifier",
    "refresh_token",
    "scope",
    "client_assertion_type",
    "client_assertion",
];

/// Routes every target serves (`ehr_http::health_router`).
pub const HEALTH: &[RouteDoc] = &[
    public("GET", "/livez", "Liveness: the process runs", Body::None, &[(200, Reply::Text)]),
    public(
        "GET",
        "/readyz",
        "Readiness: not draining, and every dependency answers",
        Body::None,
        &[(200, Reply::Text)],
    ),
];

/// The metrics listener of every target (`telemetry.metrics_listen`,
/// `crates/telemetry/src/metrics.rs`): a port of its own, not the API's.
pub const METRICS: &[RouteDoc] =
    &[public("GET", "/metrics", "Prometheus or OpenMetrics exposition (by Accept)", Body::None, &[(200, Reply::Text)])];

/// The gateway's own routes (`services/gateway/src/http.rs`), without the routes it forwards.
pub const GATEWAY: &[RouteDoc] = &[
    public("GET", "/.well-known/jwks.json", "The token signing keys (JWKS)", Body::None, JSON),
    public("GET", "/.well-known/smart-configuration", "SMART App Launch 2.0 discovery", Body::None, JSON),
    public("GET", "/fhir/.well-known/smart-configuration", "SMART discovery, under the FHIR base", Body::None, JSON),
    public(
        "GET",
        "/auth/authorize",
        "Start of the authorization-code flow (login form)",
        Body::None,
        &[(200, Reply::HtmlOrJson), (303, Reply::Redirect)],
    ),
    public(
        "POST",
        "/auth/login",
        "Login step: user name and password",
        Body::Form(&["request", "username", "password"]),
        &[(200, Reply::HtmlOrJson), (303, Reply::Redirect)],
    ),
    public(
        "POST",
        "/auth/mfa",
        "Login step: TOTP or recovery code",
        Body::Form(&["login", "code", "recovery_code"]),
        &[(200, Reply::HtmlOrJson), (303, Reply::Redirect)],
    ),
    public("POST", "/auth/token", "OAuth 2.0 token endpoint", Body::Form(TOKEN_FIELDS), JSON),
    public(
        "POST",
        "/auth/revoke",
        "OAuth 2.0 token revocation (RFC 7009)",
        Body::Form(&["token", "client_id", "client_assertion_type", "client_assertion"]),
        &[(200, Reply::Empty)],
    ),
    op("POST", "/auth/logout", "Ends the caller's session", Body::None, &[(204, Reply::Empty)]),
    op("GET", "/admin/tenants", "Lists tenants", Body::None, JSON),
    op("POST", "/admin/tenants", "Creates a tenant", Body::Json, CREATED),
    op("GET", "/admin/tenants/{id}", "One tenant", Body::None, JSON),
    op("POST", "/admin/tenants/{id}/deactivate", "Deactivates a tenant", Body::None, NO_CONTENT),
    op("GET", "/admin/users", "Lists the tenant's users", Body::None, JSON),
    op("POST", "/admin/users", "Creates a user", Body::Json, CREATED),
    op("GET", "/admin/users/{id}", "One user", Body::None, JSON),
    op("PUT", "/admin/users/{id}/roles", "Sets a user's roles", Body::Json, NO_CONTENT),
    op("PUT", "/admin/users/{id}/password", "Sets a user's password", Body::Json, NO_CONTENT),
    op("POST", "/admin/users/{id}/deactivate", "Deactivates a user", Body::None, NO_CONTENT),
    op("POST", "/admin/users/{id}/activate", "Activates a user", Body::None, NO_CONTENT),
    op("POST", "/admin/users/{id}/reset-mfa", "Resets a user's second factor", Body::None, NO_CONTENT),
    op("POST", "/admin/users/{id}/unlock", "Unlocks a locked-out user", Body::None, NO_CONTENT),
    op("GET", "/admin/users/{id}/sessions", "A user's sessions", Body::None, JSON),
    op("POST", "/admin/users/{id}/sessions/end", "Ends a user's sessions", Body::None, NO_CONTENT),
    op("GET", "/admin/reports/unused-accounts", "Accounts unused for a period", Body::None, JSON),
    op("GET", "/admin/clients", "Lists OAuth clients", Body::None, JSON),
    op("POST", "/admin/clients", "Registers an OAuth client", Body::Json, CREATED),
    op("GET", "/admin/clients/{id}", "One OAuth client", Body::None, JSON),
    op("POST", "/admin/clients/{id}/deactivate", "Deactivates an OAuth client", Body::None, NO_CONTENT),
    op("GET", "/admin/keys", "The signing keys and their state", Body::None, JSON),
    op("POST", "/admin/keys/rotate", "Rotates the signing key", Body::None, CREATED),
];

/// The gateway's AuditEvents (`ehr_rest::read_only_router` of `crates/rest/src/lib.rs`, mounted
/// by the gateway at `/fhir`).
pub const AUDIT_EVENTS: &[RouteDoc] = &[
    op("GET", "/fhir/AuditEvent", "Searches AuditEvents", Body::None, &[(200, Reply::Bundle)]),
    op(
        "POST",
        "/fhir/AuditEvent/_search",
        "Searches AuditEvents (form body)",
        Body::Form(&[]),
        &[(200, Reply::Bundle)],
    ),
    op("GET", "/fhir/AuditEvent/{id}", "Reads an AuditEvent", Body::None, &[(200, Reply::Resource)]),
];

/// The gateway's routes that forward to a service, by the prefix they forward (documented in
/// that service's document).
pub const GATEWAY_FORWARDS: &[&str] = &["/lab/", "/admin/connections", "/clins/", "/eprescription/", "/fhir"];

/// The lab interface (`services/lab-interface/src/http.rs`).
pub const LAB_INTERFACE: &[RouteDoc] = &[
    op("GET", "/lab/endpoints", "Lists laboratory endpoints", Body::None, JSON),
    op("POST", "/lab/endpoints", "Registers a laboratory endpoint", Body::Json, CREATED),
    op("GET", "/lab/endpoints/{id}", "One laboratory endpoint", Body::None, JSON),
    op("PUT", "/lab/endpoints/{id}", "Updates a laboratory endpoint", Body::Json, JSON),
    op(
        "POST",
        "/lab/endpoints/{id}/results",
        "Results as a FHIR Bundle from an endpoint",
        Body::Bundle,
        &[(200, Reply::Json), (202, Reply::Json)],
    ),
    op("GET", "/lab/messages", "Lists HL7 v2 messages", Body::None, JSON),
    op("GET", "/lab/messages/{id}", "One HL7 v2 message", Body::None, JSON),
    op("POST", "/lab/messages/{id}/replay", "Replays a message", Body::None, &[(200, Reply::Json), (202, Reply::Json)]),
    op("GET", "/lab/dead-letters", "Messages that could not be processed", Body::None, JSON),
    op("GET", "/admin/connections", "State of the laboratory connections", Body::None, JSON),
];

/// The CLINS adapter (`services/clins-adapter/src/http.rs`).
pub const CLINS_ADAPTER: &[RouteDoc] = &[
    op("POST", "/clins/preview", "Builds (without sending) a submission", Body::Json, JSON),
    op("GET", "/clins/submissions", "Lists submissions", Body::None, JSON),
    op(
        "POST",
        "/clins/submissions",
        "Submits the 6 information items or a document",
        Body::Json,
        &[(200, Reply::Json), (201, Reply::Json), (202, Reply::Json)],
    ),
    op("GET", "/clins/submissions/{id}", "One submission", Body::None, JSON),
    op(
        "POST",
        "/clins/submissions/{id}/cancel",
        "Cancels a submission",
        Body::None,
        &[(200, Reply::Json), (202, Reply::Json)],
    ),
    op(
        "POST",
        "/clins/submissions/{id}/change",
        "Changes a submission",
        Body::Json,
        &[(200, Reply::Json), (202, Reply::Json)],
    ),
    op("POST", "/clins/retrieve", "Retrieves a patient's information from CLINS", Body::Json, JSON),
    op("GET", "/clins/connections", "State of the CLINS connection", Body::None, JSON),
];

/// The e-prescription adapter (`services/eprescription-adapter/src/http.rs`).
pub const EPRESCRIPTION_ADAPTER: &[RouteDoc] = &[
    op("GET", "/eprescription/prescriptions", "Lists prescriptions", Body::None, JSON),
    op("POST", "/eprescription/prescriptions", "Creates a prescription", Body::Json, CREATED),
    op("GET", "/eprescription/prescriptions/{id}", "One prescription", Body::None, JSON),
    op("POST", "/eprescription/prescriptions/{id}/check", "Duplicate and interaction check", Body::None, JSON),
    op(
        "POST",
        "/eprescription/prescriptions/{id}/register",
        "Registers with the e-prescription service",
        Body::None,
        &[(200, Reply::Json), (202, Reply::Json)],
    ),
    op(
        "POST",
        "/eprescription/prescriptions/{id}/cancel",
        "Cancels a prescription",
        Body::None,
        &[(200, Reply::Json), (202, Reply::Json)],
    ),
    op("POST", "/eprescription/prescriptions/{id}/dispensing", "Fetches the dispensing result", Body::None, JSON),
    op("GET", "/eprescription/prescriptions/{id}/document", "The prescription document", Body::None, JSON),
    op("GET", "/eprescription/prescriptions/{id}/csv", "The prescription as CSV", Body::None, &[(200, Reply::Text)]),
    op("GET", "/eprescription/connections", "State of the e-prescription connection", Body::None, JSON),
];

/// The data-export service (`services/data-export/src/{export,import,everything}.rs`).
pub const DATA_EXPORT: &[RouteDoc] = &[
    op("GET", "/fhir/$export", "Bulk Data system export (kick-off)", Body::None, &[(202, Reply::Accepted)]),
    op(
        "POST",
        "/fhir/$export",
        "Bulk Data system export (kick-off, Parameters)",
        Body::Parameters,
        &[(202, Reply::Accepted)],
    ),
    op("GET", "/fhir/Patient/$export", "Bulk Data patient export (kick-off)", Body::None, &[(202, Reply::Accepted)]),
    op(
        "POST",
        "/fhir/Patient/$export",
        "Bulk Data patient export (kick-off, Parameters)",
        Body::Parameters,
        &[(202, Reply::Accepted)],
    ),
    op("GET", "/fhir/Group/{id}/$export", "Bulk Data group export (kick-off)", Body::None, &[(202, Reply::Accepted)]),
    op(
        "POST",
        "/fhir/Group/{id}/$export",
        "Bulk Data group export (kick-off, Parameters)",
        Body::Parameters,
        &[(202, Reply::Accepted)],
    ),
    op(
        "GET",
        "/fhir/$export-status/{job}",
        "Status of an export job (manifest when done)",
        Body::None,
        &[(200, Reply::Json), (202, Reply::Empty)],
    ),
    op("DELETE", "/fhir/$export-status/{job}", "Cancels an export job", Body::None, &[(202, Reply::Empty)]),
    op(
        "GET",
        "/fhir/$export-file/{job}/{file}",
        "One NDJSON file of a finished export",
        Body::None,
        &[(200, Reply::Ndjson)],
    ),
    op("POST", "/fhir/$import", "Imports NDJSON files", Body::Ndjson, &[(200, Reply::Outcome)]),
    op(
        "GET",
        "/fhir/Patient/{id}/$everything",
        "Everything in a patient's compartment",
        Body::None,
        &[(200, Reply::Bundle)],
    ),
];

/// The FHIR engine's routes that do not depend on a type (`crates/rest/src/lib.rs`).
pub const FHIR_SYSTEM: &[RouteDoc] = &[
    op("GET", "/fhir/metadata", "The CapabilityStatement", Body::None, &[(200, Reply::AnyResource)]),
    op("POST", "/fhir", "Batch or transaction Bundle", Body::Bundle, &[(200, Reply::Bundle)]),
    op("GET", "/fhir/_history", "History of every type", Body::None, &[(200, Reply::Bundle)]),
    // The terminology operations (`crates/terminology/src/http.rs`).
    op("GET", "/fhir/CodeSystem/$lookup", "Looks a code up", Body::None, &[(200, Reply::Parameters)]),
    op(
        "POST",
        "/fhir/CodeSystem/$lookup",
        "Looks a code up (Parameters)",
        Body::Parameters,
        &[(200, Reply::Parameters)],
    ),
    op(
        "GET",
        "/fhir/ValueSet/$validate-code",
        "Checks a code against a value set",
        Body::None,
        &[(200, Reply::Parameters)],
    ),
    op(
        "POST",
        "/fhir/ValueSet/$validate-code",
        "Checks a code against a value set (Parameters)",
        Body::Parameters,
        &[(200, Reply::Parameters)],
    ),
];

/// The FHIR engine's routes per type (`crates/rest/src/lib.rs`, `$validate` from
/// `crates/validation/src/http.rs`); `{ty}` is the type.
pub const FHIR_TYPE: &[RouteDoc] = &[
    op("GET", "/fhir/{ty}", "Searches", Body::None, &[(200, Reply::Bundle)]),
    op(
        "POST",
        "/fhir/{ty}",
        "Creates (conditionally with If-None-Exist)",
        Body::Resource,
        &[(200, Reply::Resource), (201, Reply::Resource)],
    ),
    op("PUT", "/fhir/{ty}", "Conditional update", Body::Resource, &[(200, Reply::Resource), (201, Reply::Resource)]),
    op("DELETE", "/fhir/{ty}", "Conditional delete", Body::None, &[(200, Reply::Outcome), (204, Reply::Empty)]),
    op("POST", "/fhir/{ty}/_search", "Searches (form body)", Body::Form(&[]), &[(200, Reply::Bundle)]),
    op("GET", "/fhir/{ty}/_history", "History of the type", Body::None, &[(200, Reply::Bundle)]),
    op("GET", "/fhir/{ty}/{id}", "Reads", Body::None, &[(200, Reply::Resource), (304, Reply::Empty)]),
    op(
        "PUT",
        "/fhir/{ty}/{id}",
        "Updates (or creates with a client id)",
        Body::Resource,
        &[(200, Reply::Resource), (201, Reply::Resource)],
    ),
    op("PATCH", "/fhir/{ty}/{id}", "Patches (JSON Patch)", Body::JsonPatch, &[(200, Reply::Resource)]),
    op("DELETE", "/fhir/{ty}/{id}", "Deletes", Body::None, &[(200, Reply::Outcome), (204, Reply::Empty)]),
    op("GET", "/fhir/{ty}/{id}/_history", "History of one resource", Body::None, &[(200, Reply::Bundle)]),
    op("GET", "/fhir/{ty}/{id}/_history/{vid}", "Reads one version", Body::None, &[(200, Reply::Resource)]),
    op("POST", "/fhir/{ty}/$validate", "Validates a resource", Body::AnyResource, &[(200, Reply::Outcome)]),
    op(
        "POST",
        "/fhir/{ty}/{id}/$validate",
        "Validates a resource against a stored one",
        Body::AnyResource,
        &[(200, Reply::Outcome)],
    ),
];

/// The operations of [`FHIR_TYPE`] that are not served for `Bundle`, which is validated only
/// (`$validate` takes Bundles; none are stored).
pub fn fhir_type_ops(ty: &str, served: bool) -> impl Iterator<Item = &'static RouteDoc> + '_ {
    FHIR_TYPE.iter().filter(move |r| served || r.path.contains("$validate")).filter(move |_| !ty.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `(method, path)` a router source file routes, with its mount point prefixed.
    type Routed = (String, String);

    /// The `.route("path", method(…)…)` calls of a Rust source file: the path literal and the
    /// methods (`get(`, `.post(`, … `any(`) inside the call's parentheses.
    fn routes_in(file: &str, prefix: &str) -> Vec<Routed> {
        let path = format!("{}/../../{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).expect("router source");
        // Tests of the file are not its router.
        let text = text.split("#[cfg(test)]\nmod ").next().unwrap_or_default();
        let mut out = Vec::new();
        for (start, _) in text.match_indices(".route(") {
            let call = &text[start + ".route(".len()..];
            let mut depth = 1;
            let end = call
                .char_indices()
                .find(|(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map(|(i, _)| i)
                .expect("closing parenthesis");
            let call = &call[..end];
            // A route that only refuses (405 for every method) is no operation.
            if call.contains("any(method_not_allowed)") {
                continue;
            }
            let literal = call.split('"').nth(1).expect("path literal");
            // A nested `/` is the mount point itself (axum 0.8): `POST /fhir`, not `/fhir/`.
            let full =
                if literal == "/" && !prefix.is_empty() { prefix.to_owned() } else { format!("{prefix}{literal}") };
            let bytes = call.as_bytes();
            for method in ["get", "post", "put", "patch", "delete", "any"] {
                let found = call.match_indices(&format!("{method}(")).any(|(i, _)| {
                    i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b':')
                });
                if found {
                    out.push((method.to_uppercase(), full.clone()));
                }
            }
        }
        assert!(!out.is_empty(), "no routes found in {file}");
        out
    }

    /// Whether a routed path (whose `{ty}` stands for any type) is a table's path.
    fn same_path(routed: &str, documented: &str) -> bool {
        let (a, b): (Vec<&str>, Vec<&str>) = (routed.split('/').collect(), documented.split('/').collect());
        a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| x == y || *x == "{ty}")
    }

    /// Every routed method and path is documented, and every documented one is routed.
    fn assert_match(files: &[(&str, &str)], table: &[&RouteDoc], forwards: &[&str]) {
        let routed: Vec<Routed> = files.iter().flat_map(|(f, prefix)| routes_in(f, prefix)).collect();
        for (method, path) in &routed {
            if method == "ANY" {
                assert!(
                    forwards.iter().any(|p| path.starts_with(p) || p.starts_with(path.as_str())),
                    "{path} forwards to a service the tables do not name"
                );
                continue;
            }
            assert!(
                table.iter().any(|r| r.method == method && same_path(path, r.path)),
                "{method} {path} (in {files:?}) is not in the OpenAPI route tables"
            );
        }
        for r in table {
            assert!(
                routed.iter().any(|(m, p)| m == r.method && same_path(p, r.path)),
                "{} {} is documented but no router in {files:?} routes it",
                r.method,
                r.path
            );
        }
    }

    #[test]
    fn route_tables_match_the_routers() {
        let t = |routes: &'static [RouteDoc]| routes.iter().collect::<Vec<_>>();
        assert_match(&[("services/gateway/src/http.rs", "")], &t(GATEWAY)[..], GATEWAY_FORWARDS);
        // The FHIR engine, `$validate` and the terminology operations, all mounted at `/fhir`.
        let fhir: Vec<&RouteDoc> = FHIR_SYSTEM.iter().chain(FHIR_TYPE).chain(AUDIT_EVENTS).collect();
        assert_match(
            &[
                ("crates/rest/src/lib.rs", "/fhir"),
                ("crates/validation/src/http.rs", "/fhir"),
                ("crates/terminology/src/http.rs", "/fhir"),
            ],
            &fhir,
            &[],
        );
        assert_match(
            &[
                ("services/data-export/src/export.rs", "/fhir"),
                ("services/data-export/src/import.rs", "/fhir"),
                ("services/data-export/src/everything.rs", "/fhir"),
            ],
            &t(DATA_EXPORT),
            &[],
        );
        assert_match(&[("services/lab-interface/src/http.rs", "")], &t(LAB_INTERFACE), &[]);
        assert_match(&[("services/clins-adapter/src/http.rs", "")], &t(CLINS_ADAPTER), &[]);
        assert_match(&[("services/eprescription-adapter/src/http.rs", "")], &t(EPRESCRIPTION_ADAPTER), &[]);
        assert_match(&[("crates/http/src/health.rs", "")], &t(HEALTH), &[]);
        assert_match(&[("crates/telemetry/src/metrics.rs", "")], &t(METRICS), &[]);
    }

    #[test]
    fn the_scanner_sees_methods_and_mount_points() {
        let rest = routes_in("crates/rest/src/lib.rs", "/fhir");
        for (m, p) in [("POST", "/fhir"), ("PATCH", "/fhir/{ty}/{id}"), ("DELETE", "/fhir/{ty}")] {
            assert!(rest.contains(&(m.to_owned(), p.to_owned())), "{m} {p} in {rest:?}");
        }
    }
}
