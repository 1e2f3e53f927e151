//! Composition of services into one router per target — the "one binary, many targets" shape.
//!
//! `ehr serve` (target `all`) and the test kit both build their router here, so tests exercise
//! exactly what runs.

pub mod config;

pub use config::{Config, ConfigError, Target};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderName, Request};
use ehr_auth::{KeySource, Verifier};
use ehr_core::{Classify, Clock, IssueType};
use ehr_fhir::validate::Validator;
use ehr_http::{AuthState, Readiness, fallback, health_router};
use ehr_rest::{BaseUrl, FhirService, RestState};
use ehr_store::{Store, StoreConfig, StoreError};
use std::sync::Arc;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// Where FHIR is served.
pub const FHIR_BASE: &str = "/fhir";

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("token verification keys: {0}")]
    Auth(#[from] ehr_auth::AuthError),
    #[error("cannot create data directory {0}: {1}")]
    DataDir(String, std::io::Error),
}

impl Classify for AppError {
    fn issue_type(&self) -> IssueType {
        IssueType::Exception
    }
    fn code(&self) -> &'static str {
        "EHR-APP-001"
    }
}

/// A built application: its router and the store it runs on.
pub struct App {
    pub router: Router,
    pub store: Store,
}

/// Builds the token verifier the config asks for.
pub async fn verifier(config: &Config) -> Result<Verifier, AppError> {
    let auth = &config.auth;
    let issuer_configured = auth.issuer.is_some() || auth.jwks_url.is_some() || auth.jwks_file.is_some();
    if auth.development_key {
        // The development key is public (it is in this repository): it may only ever vouch for
        // its own issuer, in a deployment that trusts nothing else. Mixing it with a real
        // issuer would let anyone sign tokens that pass as that issuer's.
        if issuer_configured {
            return Err(ConfigError::Invalid(
                "auth.development_key must be false when auth.issuer, auth.jwks_url or auth.jwks_file is set".into(),
            )
            .into());
        }
        tracing::warn!(
            "trusting the development signing key (auth.development_key = true); never do this in production"
        );
        return Ok(Verifier::development().await?);
    }
    let issuer = auth
        .issuer
        .clone()
        .ok_or_else(|| ConfigError::Invalid("auth.issuer is required without the development key".into()))?;
    let mut sources = Vec::new();
    if let Some(url) = &auth.jwks_url {
        sources.push(KeySource::Url(url.clone()));
    }
    if let Some(path) = &auth.jwks_file {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
            what: "auth.jwks_file",
            path: path.clone(),
            source,
        })?;
        let jwks = serde_json::from_str(&text).map_err(|e| ConfigError::Invalid(format!("auth.jwks_file: {e}")))?;
        sources.push(KeySource::Static(jwks));
    }
    if sources.is_empty() {
        return Err(
            ConfigError::Invalid("no token verification keys: set auth.jwks_url or auth.jwks_file".into()).into()
        );
    }
    Ok(Verifier::new(issuer, sources).await?)
}

/// Connects the store for `target` and applies migrations.
pub async fn store(config: &Config, target: Target) -> Result<Store, AppError> {
    let url = config.database_url(target)?;
    if url.starts_with("sqlite:") {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| AppError::DataDir(config.data_dir.display().to_string(), e))?;
    }
    let mut sc = StoreConfig::new(url);
    sc.max_connections = config.database.max_connections;
    sc.app_role = Some(config.database.app_role.clone());
    sc.statement_timeout_ms = config.database.statement_timeout_ms;
    let store = Store::connect(&sc).await?;
    store.migrate().await?;
    Ok(store)
}

/// Builds the router of `target` on an already connected store.
pub fn router(config: &Config, store: Store, verifier: Verifier, clock: Arc<dyn Clock>) -> Router {
    let auth = AuthState { verifier, clock: clock.clone() };
    let patient_record = FhirService {
        store: store.clone(),
        validator: Arc::new(Validator::new()),
        clock,
        types: ehr_patient_record::RESOURCE_TYPES.to_vec(),
    };
    let base = match &config.public_url {
        Some(url) => BaseUrl::Fixed(format!("{}{FHIR_BASE}", url.trim_end_matches('/'))),
        None => BaseUrl::FromRequest(FHIR_BASE.to_owned()),
    };
    let rest = RestState { service: Arc::new(patient_record), auth, base };
    let db = store.clone();
    let ready: Readiness = Arc::new(move || {
        let db = db.clone();
        Box::pin(async move { db.ping().await.map_err(|_| "database unreachable".to_owned()) })
    });
    let request_id = HeaderName::from_static("x-request-id");
    Router::new()
        .nest(FHIR_BASE, ehr_patient_record::router(rest))
        .merge(health_router(vec![ready]))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(
            // Spans name the matched route, never the URI: query strings carry PHI (names,
            // birth dates, identifiers).
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str());
                let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
                tracing::info_span!("request", method = %req.method(), route, request_id = id, tenant = tracing::field::Empty)
            })
            .on_response(tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// Builds everything `target` needs from the config.
pub async fn build(config: &Config, target: Target, clock: Arc<dyn Clock>) -> Result<App, AppError> {
    // Keys first: a configuration the verifier refuses should not touch the database.
    let verifier = verifier(config).await?;
    let store = store(config, target).await?;
    Ok(App { router: router(config, store.clone(), verifier, clock), store })
}
