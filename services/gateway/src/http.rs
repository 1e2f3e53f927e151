//! The gateway's routes: discovery documents, the login flow, the token endpoint, the admin API,
//! and everything under `/fhir` (routed by [`crate::proxy`]).

use crate::audit::Actor;
use crate::error::GatewayError;
use crate::login::{AuthorizeParams, PasswordStep, TokenForm};
use crate::{Gateway, Upstreams, admin, pages, proxy};
use axum::extract::{ConnectInfo, Form, FromRequestParts, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header, request::Parts};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{any, get, post, put};
use axum::{Json, Router};
use ehr_auth::{Claims, Interaction, ScopeSet};
use ehr_core::{Classify, TenantId};
use ehr_http::Problem;
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tower_http::set_header::SetResponseHeaderLayer;

/// State of the gateway's routes.
#[derive(Clone)]
pub struct GwState {
    pub gw: Gateway,
    pub upstreams: Arc<Upstreams>,
    /// Largest request body forwarded to a service.
    pub max_body: usize,
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let retry = self.retry_after();
        let mut resp = Problem::from(self).into_response();
        if let Some(secs) = retry {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// The client's address: the TCP peer, or — behind `trusted_proxies` proxies that append to
/// `X-Forwarded-For` (nginx, cloud load balancers) — the hop that many places from the right,
/// the last one a trusted proxy wrote. Anything a client put in the header itself is further
/// left and ignored. Only a valid IP address is used (it is audited and rate-limited by).
pub(crate) fn client_address(
    headers: &HeaderMap,
    peer: Option<&ConnectInfo<SocketAddr>>,
    trusted_proxies: usize,
) -> Option<String> {
    let peer = peer.map(|c| c.0.ip());
    if trusted_proxies == 0 {
        return peer.map(|ip| ip.to_string());
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    hops.len()
        .checked_sub(trusted_proxies)
        .and_then(|i| hops.get(i))
        .and_then(|h| h.parse::<std::net::IpAddr>().ok())
        .or(peer)
        .map(|ip| ip.to_string())
}

fn actor_of(parts: &Parts, trusted_proxies: usize) -> Actor {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>();
    Actor { address: client_address(&parts.headers, peer, trusted_proxies), ..Actor::default() }
}

/// The request's headers and the unauthenticated actor (its address), for the login steps.
pub struct RequestInfo {
    headers: HeaderMap,
    actor: Actor,
}

impl FromRequestParts<GwState> for RequestInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, st: &GwState) -> Result<Self, Self::Rejection> {
        Ok(Self { actor: actor_of(parts, st.gw.settings.trusted_proxies), headers: parts.headers.clone() })
    }
}

/// An authenticated caller of the admin API (token verified, not revoked, within rate limits).
pub struct Authed {
    claims: Arc<Claims>,
    scopes: ScopeSet,
    tenant: TenantId,
    actor: Actor,
}

impl Authed {
    /// Fails with 403 unless the caller's scopes name `resource_type` (an admin pseudo type)
    /// with `interaction`: wildcards do not reach the admin API.
    pub fn require(&self, resource_type: &str, interaction: Interaction) -> Result<(), GatewayError> {
        if self.scopes.allows_explicitly(resource_type, interaction) {
            Ok(())
        } else {
            Err(ehr_auth::AuthError::InsufficientScope {
                interaction: interaction.name(),
                resource_type: resource_type.to_owned(),
            }
            .into())
        }
    }
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }
    pub fn actor(&self) -> &Actor {
        &self.actor
    }
    pub fn subject(&self) -> &str {
        &self.claims.sub
    }
    pub fn roles(&self) -> &[String] {
        &self.claims.roles
    }
}

impl FromRequestParts<GwState> for Authed {
    type Rejection = GatewayError;

    async fn from_request_parts(parts: &mut Parts, st: &GwState) -> Result<Self, GatewayError> {
        let actor = actor_of(parts, st.gw.settings.trusted_proxies);
        let v = st.gw.authenticate(&parts.headers, &actor).await?;
        match st.gw.admit(&v.claims, &v.principal.tenant).await {
            Ok(()) => {}
            // Throttling of the admin API is answered, not audited (as before).
            Err(e @ GatewayError::RateLimited { .. }) => return Err(e),
            // A revoked token (or a failed check) is audited like any refused token.
            Err(e) => return Err(st.gw.token_rejected(&actor, e).await),
        }
        let actor = proxy::actor_from_claims(&v.claims, actor);
        Ok(Self { tenant: v.principal.tenant.clone(), scopes: v.scopes, claims: v.claims, actor })
    }
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("json"))
}

fn html(status: StatusCode, body: String) -> Response {
    let mut resp = (status, Html(body)).into_response();
    resp.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(pages::CSP));
    resp
}

/// An error of a login step: an OperationOutcome for API clients, the form again for browsers.
fn step_error(e: GatewayError, headers: &HeaderMap, page: impl FnOnce(&str) -> String) -> Response {
    if wants_json(headers) {
        return e.into_response();
    }
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    let retry = e.retry_after();
    let mut resp = html(status, page(&e.to_string()));
    if let Some(secs) = retry {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// The public base URL: configured, or from the request's `Host` and `X-Forwarded-Proto`.
fn base_url(gw: &Gateway, headers: &HeaderMap) -> String {
    if let Some(url) = &gw.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    let proto = headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).unwrap_or("http");
    format!("{proto}://{host}")
}

async fn jwks(State(st): State<GwState>) -> Response {
    let mut resp = Json(st.gw.keys.jwks(st.gw.now())).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
    resp
}

/// SMART App Launch 2.0 discovery (`/.well-known/smart-configuration`).
async fn smart_configuration(State(st): State<GwState>, headers: HeaderMap) -> Json<serde_json::Value> {
    let base = base_url(&st.gw, &headers);
    Json(json!({
        "issuer": st.gw.keys.issuer(),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "authorization_endpoint": format!("{base}/auth/authorize"),
        "token_endpoint": format!("{base}/auth/token"),
        "revocation_endpoint": format!("{base}/auth/revoke"),
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384", "ES256"],
        "scopes_supported": ["openid", "fhirUser", "offline_access", "user/*.cruds", "user/*.rs", "system/*.crus", "system/*.rs"],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": ["launch-standalone", "client-public", "client-confidential-asymmetric", "permission-user", "permission-v1", "permission-v2", "sso-openid-connect"],
    }))
}

async fn authorize(
    State(st): State<GwState>,
    headers: HeaderMap,
    query: Result<Query<AuthorizeParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = match query {
        Ok(Query(p)) => st.gw.authorize(p, Some(&format!("{}/fhir", base_url(&st.gw, &headers)))).await,
        Err(_) => Err(GatewayError::BadAuthorizationRequest("the query string is malformed (a parameter twice?)")),
    };
    match result {
        Ok((id, req)) if wants_json(&headers) => {
            Json(json!({"next": "login", "request": id, "tenant": req.tenant})).into_response()
        }
        Ok((id, req)) => html(StatusCode::OK, pages::login(&id, &req.tenant, None)),
        Err(e) if wants_json(&headers) => e.into_response(),
        Err(e) => {
            html(StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST), pages::error(&e.to_string()))
        }
    }
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    request: String,
    username: String,
    password: String,
}

/// Login-CSRF guard: browsers name the page a form was posted from (`Origin`); a login step
/// posted from another site is refused, so no site can drive a visitor's browser through the
/// login forms (to lock accounts, or to spread password guesses). Clients that send no `Origin`
/// (curl, native apps) are not browsers being misused and pass.
fn cross_site(gw: &Gateway, headers: &HeaderMap) -> Option<Response> {
    let origin = headers.get(header::ORIGIN)?.to_str().ok()?;
    if origin.trim_end_matches('/') == base_url(gw, headers) {
        return None;
    }
    let e = GatewayError::Forbidden("login steps cannot be posted from another site".into());
    Some(if wants_json(headers) {
        e.into_response()
    } else {
        html(StatusCode::FORBIDDEN, pages::error(&e.to_string()))
    })
}

async fn login(State(st): State<GwState>, parts: RequestInfo, StepForm(f): StepForm<LoginForm>) -> Response {
    if let Some(refused) = cross_site(&st.gw, &parts.headers) {
        return refused;
    }
    let actor = parts.actor.clone();
    match st.gw.password(&f.request, &f.username, &f.password, &actor).await {
        Ok(step) if wants_json(&parts.headers) => Json(step).into_response(),
        Ok(PasswordStep::Mfa { login }) => html(StatusCode::OK, pages::mfa(&login, None)),
        Ok(PasswordStep::Enrol { login, otpauth_uri, secret, qr_svg }) => {
            html(StatusCode::OK, pages::enrol(&login, &otpauth_uri, &secret, &qr_svg, None))
        }
        Err(e) => step_error(e, &parts.headers, |msg| pages::login(&f.request, "", Some(msg))),
    }
}

#[derive(Debug, Deserialize)]
struct MfaForm {
    login: String,
    code: Option<String>,
    recovery_code: Option<String>,
}

async fn mfa(State(st): State<GwState>, parts: RequestInfo, StepForm(f): StepForm<MfaForm>) -> Response {
    if let Some(refused) = cross_site(&st.gw, &parts.headers) {
        return refused;
    }
    let actor = parts.actor.clone();
    let code = f.code.as_deref().filter(|c| !c.trim().is_empty());
    let recovery = f.recovery_code.as_deref().filter(|c| !c.trim().is_empty());
    match st.gw.second_factor(&f.login, code, recovery, &actor).await {
        Ok(done) if wants_json(&parts.headers) => Json(done).into_response(),
        Ok(done) => match &done.recovery_codes {
            Some(codes) => html(StatusCode::OK, pages::recovery_codes(codes, &done.redirect)),
            None => Redirect::to(&done.redirect).into_response(),
        },
        Err(e) => step_error(e, &parts.headers, |msg| pages::mfa(&f.login, Some(msg))),
    }
}

fn no_store(mut resp: Response) -> Response {
    // RFC 6749 §5.1: token responses must not be cached.
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

async fn token(
    State(st): State<GwState>,
    parts: RequestInfo,
    form: Result<Form<TokenForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let endpoint = format!("{}/auth/token", base_url(&st.gw, &parts.headers));
    let actor = parts.actor;
    let result = match form {
        Ok(Form(f)) => st.gw.token(f, &endpoint, &actor).await,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => return GatewayError::TooLarge.into_response(),
        // RFC 6749 §3.2: the token endpoint takes application/x-www-form-urlencoded.
        Err(_) => Err(GatewayError::oauth(
            "invalid_request",
            "the body must be application/x-www-form-urlencoded with each parameter once",
        )),
    };
    match result {
        Ok(t) => no_store(Json(t).into_response()),
        Err(e) => {
            let status = match e.oauth_code() {
                "invalid_client" => StatusCode::UNAUTHORIZED,
                "server_error" => StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_REQUEST,
            };
            let description = match &e {
                GatewayError::OAuth(f) => f.description.clone(),
                GatewayError::Store(_) | GatewayError::Kv(_) => "internal error".to_owned(),
                e => e.to_string(),
            };
            no_store((status, Json(json!({"error": e.oauth_code(), "error_description": description}))).into_response())
        }
    }
}

#[derive(Debug, Deserialize)]
struct RevokeForm {
    token: String,
}

async fn revoke(
    State(st): State<GwState>,
    info: RequestInfo,
    StepForm(f): StepForm<RevokeForm>,
) -> Result<StatusCode, GatewayError> {
    st.gw.revoke(&f.token, &info.actor).await?;
    Ok(StatusCode::OK)
}

async fn logout(State(st): State<GwState>, caller: Authed) -> Result<StatusCode, GatewayError> {
    st.gw.logout(&caller.claims, &caller.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rate limit of the unauthenticated login endpoints, per client address.
async fn limit_by_address(
    State(st): State<GwState>,
    info: RequestInfo,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let rl = &st.gw.settings.rate_limit;
    let key = format!("rl:ip:{}", info.actor.address.as_deref().unwrap_or("unknown"));
    let now_ms = st.gw.clock.now().timestamp_millis();
    match st.gw.kv.take_token(&key, rl.login_per_sec, rl.login_burst, now_ms).await {
        Ok(ehr_kv::Bucket::Allowed { .. }) => next.run(req).await,
        Ok(ehr_kv::Bucket::Throttled { retry_after_ms }) => {
            GatewayError::RateLimited { retry_after: (retry_after_ms + 999) / 1000 }.into_response()
        }
        Err(e) => GatewayError::from(e).into_response(),
    }
}

/// Largest body of the login and token endpoints.
const AUTH_BODY_LIMIT: usize = 16 * 1024;

/// The gateway's router: every public route of the EHR.
pub fn router(gw: Gateway, upstreams: Upstreams, max_body: usize) -> Router {
    let cors = cors_layer(&gw.settings.cors_origins);
    let state = GwState { gw, upstreams: Arc::new(upstreams), max_body };
    let router = Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/smart-configuration", get(smart_configuration))
        .route("/fhir/.well-known/smart-configuration", get(smart_configuration))
        .merge(
            Router::new()
                .merge(
                    Router::new()
                        .route("/auth/authorize", get(authorize))
                        .route("/auth/login", post(login))
                        .route("/auth/mfa", post(mfa))
                        // Per address: the steps where a guess costs an argon2 hash or a TOTP
                        // check. Token refreshes are cheap and come from behind one hospital NAT
                        // by the hundred.
                        .route_layer(axum::middleware::from_fn_with_state(state.clone(), limit_by_address)),
                )
                .route("/auth/token", post(token))
                .route("/auth/revoke", post(revoke))
                // Login forms and token requests are a few hundred bytes; nobody anonymous gets
                // to send the FHIR body limit.
                .layer(axum::extract::DefaultBodyLimit::max(AUTH_BODY_LIMIT)),
        )
        .route("/auth/logout", post(logout))
        .route("/admin/tenants", get(admin::list_tenants).post(admin::create_tenant))
        .route("/admin/tenants/{id}", get(admin::get_tenant))
        .route("/admin/tenants/{id}/deactivate", post(admin::deactivate_tenant))
        .route("/admin/users", get(admin::list_users).post(admin::create_user))
        .route("/admin/users/{id}", get(admin::get_user))
        .route("/admin/users/{id}/roles", put(admin::set_roles))
        .route("/admin/users/{id}/password", put(admin::set_password))
        .route("/admin/users/{id}/deactivate", post(admin::deactivate))
        .route("/admin/users/{id}/activate", post(admin::activate))
        .route("/admin/users/{id}/reset-mfa", post(admin::reset_mfa))
        .route("/admin/users/{id}/unlock", post(admin::unlock))
        .route("/admin/users/{id}/sessions", get(admin::sessions))
        .route("/admin/users/{id}/sessions/end", post(admin::end_sessions))
        .route("/admin/reports/unused-accounts", get(admin::unused_accounts))
        .route("/admin/clients", get(admin::list_clients).post(admin::create_client))
        .route("/admin/clients/{id}", get(admin::get_client))
        .route("/admin/clients/{id}/deactivate", post(admin::deactivate_client))
        .route("/admin/keys", get(admin::list_keys))
        .route("/admin/keys/rotate", post(admin::rotate_keys))
        .route("/lab/{*rest}", any(proxy::forward_service))
        .route("/admin/connections", any(proxy::forward_service))
        .route("/clins/{*rest}", any(proxy::forward_service))
        .route("/eprescription/{*rest}", any(proxy::forward_service))
        // The one public FHIR route: the gateway augments the CapabilityStatement as JSON, then
        // represents it as negotiated (every other FHIR response is negotiated by the service).
        .route("/fhir/metadata", any(proxy::forward).layer(axum::middleware::from_fn(ehr_rest::negotiate)))
        .route("/fhir", any(proxy::forward))
        .route("/fhir/", any(proxy::forward))
        .route("/fhir/{*rest}", any(proxy::forward))
        .method_not_allowed_fallback(ehr_http::method_not_allowed)
        .with_state(state)
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        ))
        // Responses carry patient data: no shared or browser cache keeps them.
        .layer(SetResponseHeaderLayer::if_not_present(header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
    match cors {
        Some(c) => router.layer(c),
        None => router,
    }
}

/// CORS for the configured origins only; none configured, no cross-origin access.
fn cors_layer(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let list: Vec<HeaderValue> = origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    if list.is_empty() {
        return None;
    }
    let h = |s: &'static str| HeaderName::from_static(s);
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(list))
            .allow_methods([Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                header::IF_MATCH,
                header::IF_NONE_MATCH,
                h("if-none-exist"),
                h("prefer"),
                h("x-request-id"),
            ])
            .expose_headers([
                header::ETAG,
                header::LOCATION,
                header::LAST_MODIFIED,
                header::RETRY_AFTER,
                h("content-location"),
                h("x-request-id"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// An unreadable request body: too large (413) or not what the endpoint takes (400).
fn rejected(status: StatusCode, text: String) -> GatewayError {
    if status == StatusCode::PAYLOAD_TOO_LARGE { GatewayError::TooLarge } else { GatewayError::Invalid(text) }
}

/// A JSON request body of the admin API whose rejection (bad JSON, a missing field, a wrong
/// content type) is an OperationOutcome like every other error.
pub struct AdminJson<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for AdminJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = GatewayError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, GatewayError> {
        let Json(v) = Json::<T>::from_request(req, state).await.map_err(|e| rejected(e.status(), e.body_text()))?;
        Ok(Self(v))
    }
}

impl<T, S> axum::extract::OptionalFromRequest<S> for AdminJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = GatewayError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Option<Self>, GatewayError> {
        let has_body = req.headers().get(header::CONTENT_TYPE).is_some();
        if !has_body {
            return Ok(None);
        }
        <Self as axum::extract::FromRequest<S>>::from_request(req, state).await.map(Some)
    }
}

/// A form body of the login steps whose rejection is an OperationOutcome.
pub struct StepForm<T>(pub T);

impl<T, S> axum::extract::FromRequest<S> for StepForm<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = GatewayError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, GatewayError> {
        let Form(v) = Form::<T>::from_request(req, state).await.map_err(|e| rejected(e.status(), e.body_text()))?;
        Ok(Self(v))
    }
}
