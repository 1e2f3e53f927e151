//! Routing of FHIR requests to the owning service, with the gateway's checks around it.
//!
//! For every request under `/fhir`: verify the bearer token, check in one round trip to the
//! security state that it is not revoked and take from the per-user and per-tenant rate limits
//! ([`Gateway::admit`]), bound the body, pick the service that owns the resource type, forward
//! (in-process or over HTTP, carrying the request id and W3C trace context), and write the
//! AuditEvent(s) of the access. Services report which patients a
//! response touched in the internal `x-ehr-audit-patients` header, which never leaves the gateway.

use crate::Gateway;
use crate::audit::{Access, Actor, SecurityKind, classify, rest_event, security_event};
use crate::error::GatewayError;
use crate::http::{GwState, client_address};
use crate::settings::BaseUrls;
use crate::upstream::RemoteService;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, header, request::Parts};
use axum::response::{IntoResponse, Response};
use ehr_auth::{AuthError, Claims, VerifiedToken};
use ehr_core::TenantId;
use ehr_kv::{Admission, Admitted, Limit};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

/// The internal header in which a service lists the patients (`Patient/1,Patient/2`) whose data
/// a response holds.
pub const AUDIT_PATIENTS: &str = "x-ehr-audit-patients";

/// Patients audited one event each per request at most (BALP: one event per patient); beyond,
/// one event names them all.
const MAX_PATIENT_EVENTS: usize = 50;

/// A service behind the gateway.
#[derive(Clone)]
pub enum Upstream {
    /// Called in-process (target `all`): the service's router, mounted at `/fhir`.
    Local(Router),
    /// Called over HTTP (microservices mode): the service's instances (base URLs without
    /// `/fhir`), with their health and failover (`upstream.rs`).
    Remote(Arc<RemoteService>),
}

impl Upstream {
    /// A service called over HTTP at `urls` (one instance or several), each instance's
    /// `/readyz` checked every `check_every`.
    pub fn remote(service: &str, urls: &BaseUrls, client: reqwest::Client, check_every: Duration) -> Self {
        let remote = RemoteService::new(service, urls, client);
        remote.spawn_health_checks(check_every);
        Self::Remote(remote)
    }
}

/// Which service serves which resource type (and which one the non-FHIR service APIs).
pub struct Upstreams {
    by_type: HashMap<String, Upstream>,
    /// The services' own (non-FHIR) APIs by the first segment of their paths: the lab
    /// interface's (`/lab/…`, `/admin/connections`), the national-service adapters'
    /// (`/clins/…`, `/eprescription/…`), when they run.
    services: HashMap<&'static str, Upstream>,
    /// The service answering system-level requests (`/metadata`, batch/transaction, `_history`).
    default: Upstream,
    /// The gateway's own FHIR router (AuditEvent, read-only), mounted at `/fhir`.
    audit: Router,
    /// The data-export service (`$export`, `$export-status`, `$export-file`, `$import`,
    /// `$everything`), when it runs, and the largest `$import` body it takes.
    operations: Option<(Upstream, usize)>,
}

/// The operations the data-export service answers: a request path with one of these segments
/// goes there (`/$export`, `/Patient/$export`, `/Group/1/$export`, `/Patient/1/$everything`…).
pub const DATA_EXPORT_OPERATIONS: &[&str] = &["$export", "$export-status", "$export-file", "$import", "$everything"];

impl Upstreams {
    /// A routing table with `default` for system-level requests and `audit` for AuditEvent.
    pub fn new(default: Upstream, audit: Router) -> Self {
        Self { by_type: HashMap::new(), services: HashMap::new(), default, audit, operations: None }
    }

    /// Routes the data-export operations to `upstream`, with its `$import` body limit (larger
    /// than the gateway's general one: an import carries whole files).
    pub fn operations(mut self, upstream: Upstream, max_import_bytes: usize) -> Self {
        self.operations = Some((upstream, max_import_bytes));
        self
    }

    /// The data-export service, if `segments` name one of its operations.
    fn operation(&self, segments: &[&str]) -> Option<&(Upstream, usize)> {
        if segments.iter().any(|s| DATA_EXPORT_OPERATIONS.contains(s)) { self.operations.as_ref() } else { None }
    }

    /// Routes the lab interface's admin API (`/lab/…`, `/admin/connections`) to `upstream`.
    pub fn lab(self, upstream: Upstream) -> Self {
        self.service("lab", upstream.clone()).service("admin", upstream)
    }

    /// Routes a service's own API, the paths starting with `/<prefix>/`, to `upstream`.
    pub fn service(mut self, prefix: &'static str, upstream: Upstream) -> Self {
        self.services.insert(prefix, upstream);
        self
    }

    /// Routes `types` to `upstream`.
    pub fn route(mut self, types: &[&str], upstream: Upstream) -> Self {
        for t in types {
            self.by_type.insert((*t).to_owned(), upstream.clone());
        }
        self
    }

    /// Whether a national-service adapter is routed.
    fn has_national(&self) -> bool {
        NATIONAL_PREFIXES.iter().any(|p| self.services.contains_key(p))
    }

    fn pick(&self, first_segment: Option<&str>) -> Upstream {
        match first_segment {
            Some("AuditEvent") => Upstream::Local(self.audit.clone()),
            Some(t) => self.by_type.get(t).cloned().unwrap_or_else(|| self.default.clone()),
            None => self.default.clone(),
        }
    }
}

/// The actor of a verified token.
pub fn actor_from_claims(claims: &Claims, mut actor: Actor) -> Actor {
    // A system client (client credentials) has no user: its subject is its client id.
    if claims.client_id.as_deref() != Some(claims.sub.as_str()) {
        actor.subject = Some(claims.sub.clone());
    }
    actor.client_id = claims.client_id.clone();
    actor.roles = claims.roles.clone();
    actor.fhir_user = claims.fhir_user.clone();
    actor
}

fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or(AuthError::MissingToken)?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or(AuthError::InvalidToken("expected a Bearer token"))
}

impl Gateway {
    /// Verifies the bearer token's signature and claims and that its tenant is active. A failure
    /// is audited in the system chain: an unverified token names no tenant we may write to.
    ///
    /// Revocation is checked afterwards, by [`admit`](Self::admit), together with the rate limits;
    /// callers hand a revoked token (or a failed check) to [`token_rejected`](Self::token_rejected),
    /// so it is audited exactly like a token this method refuses.
    pub async fn authenticate(&self, headers: &HeaderMap, actor: &Actor) -> Result<VerifiedToken, GatewayError> {
        match self.check_token(headers).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.token_rejected(actor, e).await),
        }
    }

    /// Audits a refused token (`TokenRejected`, in the system chain, with the reason) and hands
    /// the error back.
    pub(crate) async fn token_rejected(&self, actor: &Actor, e: GatewayError) -> GatewayError {
        if matches!(e, GatewayError::Kv(_) | GatewayError::Store(_)) {
            // The security state or the database is unreachable: an outage, not a refused
            // token (the error itself is logged with its id where it was classified).
            return e;
        }
        let tenant = TenantId::system();
        let why = e.to_string();
        let event =
            security_event(&self.now_instant(), &tenant, actor, SecurityKind::TokenRejected, false, Some(&why), None);
        self.audit.record(&tenant, event).await;
        e
    }

    async fn check_token(&self, headers: &HeaderMap) -> Result<VerifiedToken, GatewayError> {
        let v = self.verifier.verify_token(bearer(headers)?, self.now()).await?;
        // The gateway's own tokens are for registered, active tenants only. (Development tokens
        // name any tenant: they exist for tests and local runs.)
        if v.claims.iss == self.keys.issuer() && self.tenant_active(&v.principal.tenant).await? != Some(true) {
            return Err(GatewayError::InactiveTenant);
        }
        Ok(v)
    }

    /// What every authenticated request passes after [`authenticate`](Self::authenticate), in one
    /// round trip to the security state: the token is not revoked (by its `jti`, its session —
    /// logout, refresh-token reuse — or the user's deactivation), then one token from the user's
    /// and then the tenant's bucket (429 with `Retry-After` when one is empty).
    ///
    /// A revoked token takes no token from the buckets. When the tenant's bucket is empty the
    /// user's has still given one: a throttled attempt counts against the user's own rate.
    pub async fn admit(&self, claims: &Claims, tenant: &TenantId) -> Result<(), GatewayError> {
        let rl = &self.settings.rate_limit;
        let user_key = format!("rl:u:{}:{}", tenant.as_str(), claims.sub);
        let tenant_key = format!("rl:t:{}", tenant.as_str());
        let buckets = [
            Limit { key: &user_key, per_sec: rl.user_per_sec, burst: rl.user_burst },
            Limit { key: &tenant_key, per_sec: rl.tenant_per_sec, burst: rl.tenant_burst },
        ];
        let admission = Admission {
            jti: claims.jti.as_deref(),
            session: claims.sid.as_deref(),
            // The verifier parses the tenant claim verbatim, so this is `claims.tenant`: the
            // spelling admin deactivation revokes under.
            tenant: tenant.as_str(),
            subject: &claims.sub,
            issued_at: claims.iat,
            buckets: &buckets,
        };
        match self.kv.admit(&admission, self.clock.now().timestamp_millis()).await? {
            Admitted::Allowed => Ok(()),
            Admitted::Revoked => Err(GatewayError::Revoked),
            // Retry-After is in whole seconds (RFC 9110 §10.2.3): round up, never early.
            Admitted::Throttled { retry_after_ms } => {
                Err(GatewayError::RateLimited { retry_after: (retry_after_ms + 999) / 1000 })
            }
        }
    }
}

/// The patients a service named in its `x-ehr-audit-patients` header (percent-encoded
/// references, comma-separated).
fn audited_patients(header: Option<&HeaderValue>) -> Vec<String> {
    header
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .filter(|p| !p.is_empty())
                .map(|p| percent_encoding::percent_decode_str(p).decode_utf8_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Declares the data-export operations in a CapabilityStatement's `rest[0]`: `$export` and
/// `$import` at system level, `$export` and `$everything` on Patient, `$export` on Group.
fn add_data_export_operations(rest: &mut serde_json::Value) {
    use serde_json::json;
    const BULK: &str = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition";
    let op = |name: &str, definition: String| json!({"name": name, "definition": definition});
    let mut system = rest.get("operation").and_then(|o| o.as_array()).cloned().unwrap_or_default();
    system.push(op("export", format!("{BULK}/export")));
    // This server's synchronous import (docs/import.md); not the Bulk Data IG's draft $import.
    system.push(json!({"name": "import", "definition": "urn:ehr:OperationDefinition/import",
        "documentation": "POST NDJSON, a Bundle (JSON or XML) or CSV tables (multipart); all records or none"}));
    rest["operation"] = json!(system);
    if let Some(resources) = rest.get_mut("resource").and_then(|r| r.as_array_mut()) {
        for entry in resources {
            let ops = match entry["type"].as_str() {
                Some("Patient") => vec![
                    op("export", format!("{BULK}/patient-export")),
                    op("everything", "http://hl7.org/fhir/OperationDefinition/Patient-everything".to_owned()),
                ],
                Some("Group") => vec![op("export", format!("{BULK}/group-export"))],
                _ => continue,
            };
            let mut list = entry.get("operation").and_then(|o| o.as_array()).cloned().unwrap_or_default();
            list.extend(ops);
            entry["operation"] = json!(list);
        }
    }
}

/// Adds what the gateway contributes to the service's CapabilityStatement: the OAuth endpoints
/// (SMART `oauth-uris` extension), CORS, the read-only AuditEvent resource it serves, and, when
/// the data-export service is routed, its operations (Bulk Data `$export` at system, Patient and
/// Group level, `$import`, `Patient/$everything`).
async fn augment_capabilities(
    resp: Response,
    public_url: Option<&str>,
    host_base: &str,
    data_export: bool,
) -> Response {
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 4 * 1024 * 1024).await else {
        return GatewayError::Upstream.into_response();
    };
    let Ok(mut cs) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let base = public_url.map_or(host_base, |u| u.trim_end_matches('/'));
    if let Some(rest) = cs.pointer_mut("/rest/0") {
        rest["security"]["extension"] = serde_json::json!([{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [
                {"url": "authorize", "valueUri": format!("{base}/auth/authorize")},
                {"url": "token", "valueUri": format!("{base}/auth/token")},
                {"url": "revoke", "valueUri": format!("{base}/auth/revoke")},
            ],
        }]);
        rest["security"]["cors"] = serde_json::json!(true);
        let audit = ehr_rest::capability_statement(&["AuditEvent"], base, chrono::DateTime::<chrono::Utc>::UNIX_EPOCH);
        if let (Some(mut entry), Some(list)) =
            (audit.pointer("/rest/0/resource/0").cloned(), rest.get_mut("resource").and_then(|r| r.as_array_mut()))
        {
            entry["interaction"] = serde_json::json!(
                ["read", "search-type"].iter().map(|c| serde_json::json!({"code": c})).collect::<Vec<_>>()
            );
            if let Some(obj) = entry.as_object_mut() {
                for key in [
                    "updateCreate",
                    "conditionalCreate",
                    "conditionalUpdate",
                    "conditionalDelete",
                    "conditionalRead",
                    "versioning",
                    "readHistory",
                    // The audit trail is served read-only by the gateway itself: no `$validate`,
                    // and no profile is checked on what only the audit writer appends.
                    "operation",
                    "supportedProfile",
                    // Served types of the FHIR engine cannot `_revinclude` the gateway's records.
                    "searchRevInclude",
                ] {
                    obj.remove(key);
                }
            }
            list.push(entry);
        }
        if data_export {
            add_data_export_operations(rest);
        }
    }
    if data_export {
        cs["instantiates"] = serde_json::json!(["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"]);
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(cs.to_string()))
}

/// Hands the gateway's request span to the service as the parent of its own: the client's
/// trace headers are dropped — `traceparent` (at most a link of the gateway's span, or its
/// parent when `telemetry.trust_incoming_traceparent` is set), `tracestate` and `baggage`
/// (vendor data and key-value pairs a client chose, which the services must not trust nor
/// carry on) — and `traceparent` is set to the current span's context. Without an exporter
/// there is no context: the service starts a trace of its own.
fn propagate_trace(headers: &mut HeaderMap) {
    for name in [ehr_telemetry::trace::TRACEPARENT, "tracestate", "baggage"] {
        headers.remove(name);
    }
    ehr_telemetry::trace::inject(headers);
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) are not forwarded.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
    )
}

async fn call(upstream: Upstream, parts: Parts, body: axum::body::Bytes) -> Result<Response, GatewayError> {
    match upstream {
        Upstream::Local(router) => {
            // A fresh set of extensions: the gateway's own routing left its matched path and
            // path parameters there, which the service's router must not see as its own.
            let mut parts = parts;
            let peer = parts.extensions.remove::<ConnectInfo<SocketAddr>>();
            parts.extensions = axum::http::Extensions::new();
            if let Some(peer) = peer {
                parts.extensions.insert(peer);
            }
            let req = Request::from_parts(parts, Body::from(body));
            Ok(router.oneshot(req).await.into_response())
        }
        Upstream::Remote(remote) => {
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut headers = HeaderMap::with_capacity(parts.headers.len());
            for (name, value) in &parts.headers {
                if !is_hop_by_hop(name.as_str()) {
                    headers.append(name, value.clone());
                }
            }
            // The body is in memory: a request failing over to another instance sends it again.
            let resp = remote.send(&parts.method, path, &headers, body).await?;
            let mut out = Response::builder().status(resp.status().as_u16());
            for (name, value) in resp.headers() {
                if !is_hop_by_hop(name.as_str()) {
                    out = out.header(name, value);
                }
            }
            out.body(Body::from_stream(resp.bytes_stream())).map_err(|_| GatewayError::Upstream)
        }
    }
}

/// Every request under `/fhir`.
pub async fn forward(State(st): State<GwState>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches("/fhir").split('/').filter(|s| !s.is_empty()).collect();
    let public = parts.method == axum::http::Method::GET && segments == ["metadata"];
    let mut actor = Actor {
        address: client_address(
            &parts.headers,
            parts.extensions.get::<ConnectInfo<SocketAddr>>(),
            st.gw.settings.trusted_proxies,
        ),
        ..Actor::default()
    };
    let gw = &st.gw;

    let verified = if public {
        None
    } else {
        match gw.authenticate(&parts.headers, &actor).await {
            Ok(v) => Some(v),
            Err(e) => return e.into_response(),
        }
    };
    let tenant = verified.as_ref().map(|v| v.principal.tenant.clone());
    if let (Some(v), Some(tenant)) = (&verified, &tenant) {
        match gw.admit(&v.claims, tenant).await {
            Ok(()) => actor = actor_from_claims(&v.claims, actor),
            // Throttling is the caller's, recorded in its tenant's chain under its identity.
            Err(e @ GatewayError::RateLimited { .. }) => {
                let actor = actor_from_claims(&v.claims, actor);
                gw.audit_security(tenant, &actor, SecurityKind::Throttled, false, Some(&e.to_string()), None).await;
                return e.into_response();
            }
            // Revoked (or not checkable): a refused token, audited as authenticate does, under
            // the bare address — a revoked token vouches for no one.
            Err(e) => return gw.token_rejected(&actor, e).await.into_response(),
        }
    }
    let interaction = classify(&parts.method, &segments);
    let host_base = {
        let host = parts.headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
        let proto = parts.headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).unwrap_or("http");
        format!("{proto}://{host}")
    };
    let request_id = parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);

    let operation = st.upstreams.operation(&segments).cloned();
    let max_body = match &operation {
        Some((_, max_import)) if segments.contains(&"$import") => (*max_import).max(st.max_body),
        _ => st.max_body,
    };
    let body = match axum::body::to_bytes(body, max_body).await {
        Ok(b) => b,
        Err(_) => {
            if let Some(tenant) = &tenant {
                let access = Access {
                    request_id: request_id.as_deref(),
                    resource_type: segments.first().copied(),
                    ..Access::default()
                };
                let event = rest_event(&gw.now_instant(), tenant, &actor, interaction, 413, &access);
                gw.audit.record(tenant, event).await;
            }
            return GatewayError::TooLarge.into_response();
        }
    };
    propagate_trace(&mut parts.headers);
    let first = segments.first().copied().filter(|s| !s.starts_with('_') && *s != "metadata");
    let upstream = match operation {
        Some((upstream, _)) => upstream,
        None => st.upstreams.pick(first),
    };
    if public {
        // The CapabilityStatement is fetched as JSON, augmented, and only then put into the
        // format the client negotiated (`ehr_rest::negotiate` wraps this route).
        parts.headers.remove(header::ACCEPT);
        let query: Vec<(String, String)> = parts
            .uri
            .query()
            .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().filter(|(k, _)| k != "_format").collect())
            .unwrap_or_default();
        let path_and_query = if query.is_empty() {
            parts.uri.path().to_owned()
        } else {
            format!(
                "{}?{}",
                parts.uri.path(),
                form_urlencoded::Serializer::new(String::new()).extend_pairs(query).finish()
            )
        };
        if let Ok(uri) = path_and_query.parse() {
            parts.uri = uri;
        }
    }
    if first == Some("AuditEvent") {
        // Read-your-writes for the audit trail: everything before this query is in it.
        gw.audit.flush().await;
    }
    let query = match (interaction.code, parts.uri.query()) {
        ("search-type", Some(q)) => Some(q.to_owned()),
        ("search-type", None) if parts.method == axum::http::Method::POST => {
            Some(String::from_utf8_lossy(&body).into_owned())
        }
        _ => None,
    };
    let mut resp = match call(upstream, parts, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let patients = resp.headers_mut().remove(AUDIT_PATIENTS);
    let Some(tenant) = tenant else {
        if public && resp.status() == axum::http::StatusCode::OK {
            let data_export = st.upstreams.operations.is_some();
            return augment_capabilities(resp, gw.public_url.as_deref(), &host_base, data_export).await;
        }
        return resp;
    };

    // The resource an instance-level interaction named, or the one a create made.
    let resource = match segments.as_slice() {
        // `Patient/_search`, `Patient/_history`, `Patient/$op` name no resource.
        [t, id, ..] if !t.starts_with(['_', '$']) && !id.starts_with(['_', '$']) => Some(format!("{t}/{id}")),
        _ => resp
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| l.split("/_history/").next())
            .and_then(|l| {
                l.rsplit_once('/').and_then(|(head, id)| head.rsplit('/').next().map(|t| format!("{t}/{id}")))
            }),
    };
    let patients = audited_patients(patients.as_ref());
    let now = gw.now_instant();
    let status = resp.status().as_u16();
    let mut access = Access {
        resource: resource.as_deref(),
        query: query.as_deref(),
        resource_type: segments.first().copied(),
        request_id: request_id.as_deref(),
        patients: &[],
    };
    if patients.len() <= 1 || patients.len() > MAX_PATIENT_EVENTS {
        // No patient, one, or a broad search: one event naming every patient (never dropping
        // one: `AuditEvent?patient=` must find every access).
        access.patients = &patients;
        gw.audit.record(&tenant, rest_event(&now, &tenant, &actor, interaction, status, &access)).await;
    } else {
        for p in patients.chunks(1) {
            access.patients = p;
            gw.audit.record(&tenant, rest_event(&now, &tenant, &actor, interaction, status, &access)).await;
        }
    }
    resp
}

/// The path prefixes of the national-service adapters' APIs.
const NATIONAL_PREFIXES: [&str; 2] = ["clins", "eprescription"];

/// The largest connection list a service may answer (the lab interface lists two rows per
/// endpoint; an adapter one row).
const MAX_CONNECTIONS_BODY: usize = 1024 * 1024;

/// `GET /admin/connections`: the lab interface's list (when it runs) followed by each routed
/// national-service adapter's (`GET /<prefix>/connections`), asked with the caller's own token —
/// every service checks the `Connection` scope itself, and the first refusal (401, 403) is the
/// answer. A service that does not answer, or answers anything but a list, is listed as such
/// (`{"kind", "service", "lastError"}`) rather than failing the whole inventory: the inventory is
/// most needed when a connection is broken.
async fn all_connections(upstreams: &Upstreams, lab: Option<Upstream>, parts: Parts) -> Result<Response, GatewayError> {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().copied();
    let ask = |path: &str| -> Result<Parts, GatewayError> {
        let (mut p, ()) = Request::builder()
            .method(axum::http::Method::GET)
            .uri(path)
            .body(())
            .map_err(|_| GatewayError::Upstream)?
            .into_parts();
        p.headers = parts.headers.clone();
        p.headers.remove(header::CONTENT_LENGTH);
        p.headers.remove(header::CONTENT_TYPE);
        if let Some(peer) = peer {
            p.extensions.insert(peer);
        }
        Ok(p)
    };
    // (kind of its rows, the service, its upstream, the path of its list)
    let mut sources: Vec<(&str, &str, Upstream, String)> = Vec::new();
    if let Some(lab) = lab {
        sources.push(("lab", "lab-interface", lab, "/admin/connections".to_owned()));
    }
    for prefix in NATIONAL_PREFIXES {
        if let Some(up) = upstreams.services.get(prefix) {
            let service = if prefix == "clins" { "clins-adapter" } else { "eprescription-adapter" };
            sources.push(("national", service, up.clone(), format!("/{prefix}/connections")));
        }
    }
    let mut list = Vec::new();
    for (kind, service, upstream, path) in sources {
        let rows = match call(upstream, ask(&path)?, axum::body::Bytes::new()).await {
            Ok(resp) if matches!(resp.status().as_u16(), 401 | 403) => return Ok(resp),
            Ok(resp) if resp.status().is_success() => connection_rows(resp).await,
            Ok(resp) => {
                tracing::warn!(service, status = resp.status().as_u16(), "connection list refused");
                None
            }
            Err(_) => None,
        };
        match rows {
            Some(rows) => list.extend(rows),
            None => list.push(serde_json::json!({
                "kind": kind, "service": service, "lastError": "the service did not answer with its connections",
            })),
        }
    }
    Ok(axum::Json(serde_json::json!({"connections": list})).into_response())
}

/// The `connections` array of a service's answer, if it is one (bounded).
async fn connection_rows(resp: Response) -> Option<Vec<serde_json::Value>> {
    let bytes = axum::body::to_bytes(resp.into_body(), MAX_CONNECTIONS_BODY).await.ok()?;
    let mut value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    match value.get_mut("connections").map(serde_json::Value::take) {
        Some(serde_json::Value::Array(rows)) => Some(rows),
        _ => None,
    }
}

/// The AuditEvent action of a request to a service's own API: `R` reads, `C` the POSTs that
/// create (a lab's results, a CLINS submission, a prescription), `D` deletes; the lab
/// interface's other writes are `U` (an endpoint configured, a message replayed); the adapters'
/// other POSTs are operations on a national service (`E`: preview, check, register, cancel,
/// change, retrieve, fetch dispensing results).
fn service_action(method: &axum::http::Method, prefix: &str, path: &str) -> &'static str {
    use axum::http::Method;
    let last = path.rsplit('/').next().unwrap_or_default();
    match (method, prefix) {
        (&Method::GET | &Method::HEAD, _) => "R",
        (&Method::DELETE, _) => "D",
        (&Method::POST, _) if matches!(last, "results" | "submissions" | "prescriptions") => "C",
        (_, "lab" | "admin") | (&Method::PUT | &Method::PATCH, _) => "U",
        _ => "E",
    }
}

/// A service's own (non-FHIR) API behind the gateway — the lab interface's `/lab/…` and
/// `/admin/connections`, the national-service adapters' `/clins/…` and `/eprescription/…`: the
/// same token check, revocation and rate limits as FHIR requests, and an AuditEvent per request
/// (the services check the scopes themselves).
pub async fn forward_service(State(st): State<GwState>, req: Request) -> Response {
    let prefix = req.uri().path().trim_start_matches('/').split('/').next().unwrap_or_default().to_owned();
    // `/admin/connections` lists every external connection: the lab interface's and those of the
    // national-service adapters that run (each answers `/<prefix>/connections`).
    let listing = req.uri().path() == "/admin/connections" && req.method() == axum::http::Method::GET;
    let upstream = st.upstreams.services.get(prefix.as_str()).cloned();
    if upstream.is_none() && !(listing && st.upstreams.has_national()) {
        return ehr_http::Problem::from(ehr_http::HttpError::NoRoute).into_response();
    }
    let (mut parts, body) = req.into_parts();
    let mut actor = Actor {
        address: client_address(
            &parts.headers,
            parts.extensions.get::<ConnectInfo<SocketAddr>>(),
            st.gw.settings.trusted_proxies,
        ),
        ..Actor::default()
    };
    let gw = &st.gw;
    let verified = match gw.authenticate(&parts.headers, &actor).await {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let tenant = verified.principal.tenant.clone();
    match gw.admit(&verified.claims, &tenant).await {
        Ok(()) => actor = actor_from_claims(&verified.claims, actor),
        Err(e @ GatewayError::RateLimited { .. }) => return e.into_response(),
        Err(e) => return gw.token_rejected(&actor, e).await.into_response(),
    }
    let body = match axum::body::to_bytes(body, st.max_body).await {
        Ok(b) => b,
        Err(_) => return GatewayError::TooLarge.into_response(),
    };
    propagate_trace(&mut parts.headers);
    let request_id = parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let path = parts.uri.path().to_owned();
    let action = service_action(&parts.method, &prefix, &path);
    // The pseudo types of the access matrix where one names the API (the inventory of every
    // external connection is `Connection`'s), else the lab interface's.
    let resource_type = match prefix.as_str() {
        "clins" => "NationalSubmission",
        "eprescription" => "EPrescription",
        "admin" => "Connection",
        _ => "LabInterface",
    };
    let interaction = crate::audit::RestInteraction { code: "operation", action };
    let result = match (listing, upstream) {
        (true, lab) => all_connections(&st.upstreams, lab, parts).await,
        (false, Some(upstream)) => call(upstream, parts, body).await,
        (false, None) => Err(GatewayError::Upstream),
    };
    let mut resp = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    // The services name the patients whose data a response holds (a message's text, the results
    // a lab posted, a document sent), as the FHIR services do.
    let patients = audited_patients(resp.headers_mut().remove(AUDIT_PATIENTS).as_ref());
    // The path names endpoints and messages by opaque ids only; no PHI.
    let access = Access {
        resource: Some(path.trim_start_matches('/')),
        resource_type: Some(resource_type),
        request_id: request_id.as_deref(),
        patients: &patients,
        ..Access::default()
    };
    let event = rest_event(&gw.now_instant(), &tenant, &actor, interaction, resp.status().as_u16(), &access);
    gw.audit.record(&tenant, event).await;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{Method, StatusCode};
    use axum::routing::get;

    fn list(rows: serde_json::Value) -> Router {
        Router::new().fallback(get(move || {
            let rows = rows.clone();
            async move { axum::Json(serde_json::json!({ "connections": rows })) }
        }))
    }

    fn status(code: StatusCode) -> Router {
        Router::new().fallback(get(move || async move { code.into_response() }))
    }

    fn upstreams(lab: Option<Router>, clins: Router, eprescription: Router) -> Upstreams {
        let mut up = Upstreams::new(Upstream::Local(Router::new()), Router::new())
            .service("clins", Upstream::Local(clins))
            .service("eprescription", Upstream::Local(eprescription));
        if let Some(lab) = lab {
            up = up.lab(Upstream::Local(lab));
        }
        up
    }

    async fn inventory(up: &Upstreams) -> Response {
        let (parts, ()) = Request::builder().uri("/admin/connections").body(()).unwrap().into_parts();
        let lab = up.services.get("admin").cloned();
        all_connections(up, lab, parts).await.unwrap()
    }

    async fn rows_of(resp: Response) -> Vec<serde_json::Value> {
        assert_eq!(resp.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        value["connections"].as_array().unwrap().clone()
    }

    #[tokio::test]
    async fn the_inventory_merges_every_list_and_names_a_silent_service() {
        let up = upstreams(
            Some(list(serde_json::json!([{"kind": "lab", "name": "lab-1"}]))),
            list(serde_json::json!([{"kind": "national", "name": "CLINS"}])),
            status(StatusCode::BAD_GATEWAY),
        );
        let rows = rows_of(inventory(&up).await).await;
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(rows[0]["name"], "lab-1");
        assert_eq!(rows[1]["name"], "CLINS");
        assert_eq!(
            (rows[2]["kind"].as_str(), rows[2]["service"].as_str()),
            (Some("national"), Some("eprescription-adapter"))
        );
        assert!(rows[2]["lastError"].is_string());

        // A lab answering something else than a list is listed as silent too, not fatal; without
        // a lab interface the adapters still answer.
        let up = upstreams(Some(status(StatusCode::OK)), list(serde_json::json!([])), list(serde_json::json!([])));
        let rows = rows_of(inventory(&up).await).await;
        assert_eq!(
            (rows.len(), rows[0]["kind"].as_str(), rows[0]["service"].as_str()),
            (1, Some("lab"), Some("lab-interface"))
        );
        let up = upstreams(None, list(serde_json::json!([{"name": "CLINS"}])), list(serde_json::json!([])));
        assert_eq!(rows_of(inventory(&up).await).await.len(), 1);
    }

    #[tokio::test]
    async fn a_refusal_of_the_callers_token_is_the_answer() {
        let up =
            upstreams(Some(list(serde_json::json!([]))), status(StatusCode::FORBIDDEN), list(serde_json::json!([])));
        assert_eq!(inventory(&up).await.status(), StatusCode::FORBIDDEN);
        let up = upstreams(None, list(serde_json::json!([])), status(StatusCode::UNAUTHORIZED));
        assert_eq!(inventory(&up).await.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn service_requests_are_audited_with_their_action() {
        for (method, path, action) in [
            (Method::GET, "/clins/submissions/1", "R"),
            (Method::POST, "/clins/submissions", "C"),
            (Method::POST, "/clins/preview", "E"),
            (Method::POST, "/clins/submissions/1/cancel", "E"),
            (Method::POST, "/eprescription/prescriptions", "C"),
            (Method::POST, "/eprescription/prescriptions/1/register", "E"),
            (Method::DELETE, "/eprescription/prescriptions/1", "D"),
            (Method::POST, "/lab/endpoints/1/results", "C"),
            (Method::POST, "/lab/messages/1/replay", "U"),
            (Method::PUT, "/lab/endpoints/1", "U"),
            (Method::GET, "/admin/connections", "R"),
        ] {
            let prefix = path.trim_start_matches('/').split('/').next().unwrap();
            assert_eq!(service_action(&method, prefix, path), action, "{method} {path}");
        }
    }
}
