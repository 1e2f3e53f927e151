//! Composition of services into one router per target — the "one binary, many targets" shape.
//!
//! `ehr serve` (target `all`) and the test kit both build their router here, so tests exercise
//! exactly what runs.

pub mod config;
mod metrics;
pub mod openapi;

pub use config::{Config, ConfigError, Target};
pub use metrics::{metrics_router, serve_metrics};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{HeaderName, Request};
use ehr_auth::{DEV_ISSUER, KeySource, Trust, Verifier, dev_jwks};
use ehr_core::{Classify, Clock, IssueType};
use ehr_events::{Bus, BusConfig, CancellationToken, LocalBus, RedisBus, Relay, RelayConfig, spawn_consumer};
use ehr_fhir::validate::Validator;
use ehr_gateway::{AuditSink, Gateway, Inner as GatewayInner, KeyRing, Upstream, Upstreams};
use ehr_http::{AuthState, Draining, Readiness, fallback, health_router};
use ehr_kv::{MemoryState, RedisState, SecurityState};
use ehr_lab_interface::{LabInterface, LabSettings};
use ehr_rest::{BaseUrl, FhirService, RestState};
use ehr_store::{Store, StoreConfig, StoreError};
use ehr_terminology::Terminology;
use ehr_validation::FullValidator;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
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
    #[error("gateway: {0}")]
    Gateway(#[from] ehr_gateway::GatewayError),
    #[error("redis: {0}")]
    Kv(#[from] ehr_kv::KvError),
    #[error("terminology: {0}")]
    Terminology(#[from] ehr_terminology::TerminologyError),
    #[error("event bus: {0}")]
    Events(#[from] ehr_events::EventsError),
    #[error("cannot listen for lab results (MLLP) on {0}: {1}")]
    LabListener(String, std::io::Error),
    #[error("cannot listen for metrics on {0}: {1}")]
    MetricsListener(String, std::io::Error),
    #[error("clins-adapter: {0}")]
    Clins(#[from] ehr_clins_adapter::ClinsAdapterError),
    #[error("eprescription-adapter: {0}")]
    EPrescription(#[from] ehr_eprescription_adapter::EPrescriptionAdapterError),
}

impl Classify for AppError {
    fn issue_type(&self) -> IssueType {
        IssueType::Exception
    }
    fn code(&self) -> &'static str {
        "EHR-APP-001"
    }
}

/// A built application: its router, the store it runs on, the gateway when it has one, and its
/// background workers (outbox relay, event consumers, lab sender and MLLP listener).
pub struct App {
    pub router: Router,
    pub store: Store,
    pub gateway: Option<Gateway>,
    /// The lab interface, in the targets that run it.
    pub lab: Option<LabInterface>,
    /// Where the MLLP listener for lab results accepts connections, when one runs.
    pub lab_listener: Option<SocketAddr>,
    /// Cancelling it stops the background workers; each finishes the item in hand (the relay
    /// drains the outbox for a bounded time).
    pub shutdown: CancellationToken,
    pub workers: Vec<JoinHandle<()>>,
    /// Set when the process starts to stop: `/readyz` answers 503 `draining` while requests are
    /// still served.
    pub draining: Draining,
    /// Cancelled first by [`App::stop_workers`]: every worker but the relay (a child of
    /// `shutdown`).
    workers_shutdown: CancellationToken,
    /// The outbox relay, stopped last.
    relay: Option<JoinHandle<()>>,
    /// The target's metrics, served by [`serve_metrics`] on a listener of its own.
    pub metrics: ehr_telemetry::metrics::Metrics,
}

impl App {
    /// Stops the background workers and waits for them, at most `timeout` in all: first every
    /// worker but the relay (each finishes the item in hand — the MLLP listener may still commit
    /// a result and its events), then the relay, which publishes what the outbox holds.
    pub async fn stop_workers(&mut self, timeout: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        self.workers_shutdown.cancel();
        let workers = futures_join(std::mem::take(&mut self.workers));
        if tokio::time::timeout_at(deadline, workers).await.is_err() {
            tracing::warn!("background workers did not stop in time");
        }
        self.shutdown.cancel();
        if let Some(relay) = self.relay.take()
            && tokio::time::timeout_at(deadline, relay).await.is_err()
        {
            tracing::warn!("the outbox relay did not stop in time; unpublished events stay for the next start");
        }
    }
}

async fn futures_join(workers: Vec<JoinHandle<()>>) {
    for w in workers {
        let _ = w.await;
    }
}

/// Consumers per group and process on PostgreSQL (each handles one event at a time).
const CONSUMERS_PER_GROUP: usize = 4;

/// Published outbox rows are kept this long (for investigation), receipts longer than any
/// redelivery could come.
const OUTBOX_KEEP_DAYS: i64 = 7;
const RECEIPTS_KEEP_DAYS: i64 = 30;

/// Hourly: deletes published outbox rows and old event receipts.
fn spawn_purge(store: Store, clock: Arc<dyn Clock>, shutdown: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
            }
            let now = clock.now();
            let outbox = store.outbox_purge_published(now - chrono::Duration::days(OUTBOX_KEEP_DAYS)).await;
            let receipts = store.event_receipts_purge(now - chrono::Duration::days(RECEIPTS_KEEP_DAYS)).await;
            match (outbox, receipts) {
                (Ok(o), Ok(r)) => tracing::info!(outbox = o, receipts = r, "purged published events and old receipts"),
                _ => tracing::warn!("purging published events failed; retried in an hour"),
            }
        }
    })
}

/// The background side of the services of one process: the event bus, the outbox relay, the
/// consumers and the lab interface's workers.
struct Background {
    bus: Arc<dyn Bus>,
    consumers_per_group: usize,
    relay: Arc<tokio::sync::Notify>,
    /// Stops every worker but the relay (a child of `relay_shutdown`).
    shutdown: CancellationToken,
    workers: Vec<JoinHandle<()>>,
    /// Stops the relay, and with it every worker.
    relay_shutdown: CancellationToken,
    relay_task: JoinHandle<()>,
}

impl Background {
    /// The bus (Redis Streams when Redis is configured, else in-process on SQLite) and a relay.
    async fn start(config: &Config, store: &Store, clock: &Arc<dyn Clock>) -> Result<Self, AppError> {
        let bus: Arc<dyn Bus> = match config.redis_url()? {
            // The same prefix as the security state's keys (`<prefix>:…`): `ehr:events:<topic>`.
            Some(url) => {
                let prefix = format!("{}:", config.gateway.redis_prefix.trim_end_matches(':'));
                Arc::new(RedisBus::connect(&url, &prefix, BusConfig::default()).await?)
            }
            None if store.backend_name() != "sqlite" => {
                return Err(ConfigError::Invalid(
                    "PostgreSQL needs Redis for the event bus: set gateway.redis_url (EHR_GATEWAY__REDIS_URL)".into(),
                )
                .into());
            }
            None => Arc::new(LocalBus::new(store.clone(), clock.clone(), BusConfig::default())?),
        };
        let relay_shutdown = CancellationToken::new();
        let shutdown = relay_shutdown.child_token();
        let relay = Relay::new(RelayConfig::default());
        let notifier = relay.notifier();
        let relay_task = relay.spawn(store.clone(), bus.clone(), clock.clone(), relay_shutdown.clone());
        let workers = vec![spawn_purge(store.clone(), clock.clone(), shutdown.clone())];
        let consumers_per_group = if store.backend_name() == "sqlite" { 1 } else { CONSUMERS_PER_GROUP };
        Ok(Self { bus, consumers_per_group, relay: notifier, shutdown, workers, relay_shutdown, relay_task })
    }

    fn consume(
        &mut self,
        store: &Store,
        clock: &Arc<dyn Clock>,
        group: &'static str,
        topics: &[&str],
        handler: Arc<dyn ehr_events::Handler>,
    ) {
        // Several consumers of the group in this process when the bus shares work among them
        // (Redis Streams) and the database takes concurrent writers (PostgreSQL); one otherwise.
        for _ in 0..self.consumers_per_group {
            self.workers.push(spawn_consumer(
                self.bus.clone(),
                store.clone(),
                clock.clone(),
                group,
                topics.iter().map(|t| (*t).to_owned()).collect(),
                handler.clone(),
                self.shutdown.clone(),
            ));
        }
    }

    /// The lab interface with its sender and (when configured) its MLLP listener.
    async fn lab(
        &mut self,
        settings: &LabSettings,
        store: &Store,
        clock: &Arc<dyn Clock>,
        validator: Arc<Validator>,
        terminology: &Terminology,
    ) -> Result<(LabInterface, Option<SocketAddr>), AppError> {
        let lab = LabInterface::new(
            store.clone(),
            clock.clone(),
            settings.clone(),
            validator,
            terminology.clone(),
            Some(self.relay.clone()),
        );
        self.workers.push(lab.spawn_workers(self.shutdown.clone()));
        let mut bound = None;
        if let Some(addr) = &settings.listen {
            let (addr_bound, task) = lab
                .spawn_listener(addr, self.shutdown.clone())
                .await
                .map_err(|e| AppError::LabListener(addr.clone(), e))?;
            bound = Some(addr_bound);
            self.workers.push(task);
        }
        self.consume(
            store,
            clock,
            ehr_lab_interface::outbound::GROUP,
            &[ehr_lab_interface::ORDER_PLACED, ehr_lab_interface::ORDER_CANCELLED],
            Arc::new(lab.clone()),
        );
        Ok((lab, bound))
    }
}

/// Builds the token verifier the config asks for. `gateway` is the in-process gateway's key
/// ring (targets `all` and `gateway`), trusted for the gateway's own issuer.
pub async fn verifier(config: &Config, gateway: Option<(&str, KeySource)>) -> Result<Verifier, AppError> {
    let auth = &config.auth;
    let issuer_configured = auth.issuer.is_some() || auth.jwks_url.is_some() || auth.jwks_file.is_some();
    let mut trusts = Vec::new();
    if let Some((issuer, source)) = gateway {
        trusts.push(Trust { issuer: issuer.to_owned(), sources: vec![source] });
    }
    if auth.development_key {
        // The development key is public (it is in this repository): it may only ever vouch for
        // its own issuer (keys are bound to their issuer), and never in a deployment that
        // trusts an external issuer, where a dev token would pass for a real user's.
        if issuer_configured {
            return Err(ConfigError::Invalid(
                "auth.development_key must be false when auth.issuer, auth.jwks_url or auth.jwks_file is set".into(),
            )
            .into());
        }
        tracing::warn!(
            "trusting the development signing key (auth.development_key = true); never do this in production"
        );
        trusts.push(Trust { issuer: DEV_ISSUER.to_owned(), sources: vec![KeySource::Static(dev_jwks())] });
        return Ok(Verifier::with_trusts(trusts).await?);
    }
    if issuer_configured {
        let issuer = auth.issuer.clone().ok_or_else(|| {
            ConfigError::Invalid("auth.issuer is required with auth.jwks_url or auth.jwks_file".into())
        })?;
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
        trusts.push(Trust { issuer, sources });
    }
    if trusts.is_empty() {
        return Err(ConfigError::Invalid(
            "no token issuer is trusted: set auth.issuer with auth.jwks_url or auth.jwks_file".into(),
        )
        .into());
    }
    Ok(Verifier::with_trusts(trusts).await?)
}

/// The gateway's security state: Redis when configured, else in-process (single process only).
pub async fn security_state(config: &Config, target: Target) -> Result<Arc<dyn SecurityState>, AppError> {
    match config.redis_url()? {
        Some(url) => Ok(Arc::new(RedisState::connect(&url, &config.gateway.redis_prefix).await?)),
        None if target == Target::All => Ok(Arc::new(MemoryState::new())),
        None => Err(ConfigError::Invalid(format!(
            "gateway.redis_url (or EHR_GATEWAY__REDIS_URL / _FILE) is required for target {}: replicas share sessions, revocations and rate limits through Redis",
            target.name()
        ))
        .into()),
    }
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

/// The FHIR base URL of responses.
fn base_url(config: &Config) -> BaseUrl {
    match &config.public_url {
        Some(url) => BaseUrl::Fixed(format!("{}{FHIR_BASE}", url.trim_end_matches('/'))),
        None => BaseUrl::FromRequest(FHIR_BASE.to_owned()),
    }
}

/// A FHIR REST router over `types`, with the orders service's rules when it serves order types,
/// mounted at `/fhir`.
fn fhir_router(
    config: &Config,
    store: Store,
    auth: AuthState,
    validator: Arc<Validator>,
    types: Vec<&'static str>,
    terminology: &Terminology,
) -> Router {
    let clock = auth.clock.clone();
    let rules: Option<Arc<dyn ehr_rest::WriteRules>> = if types.iter().any(|t| ehr_orders::RESOURCE_TYPES.contains(t)) {
        Some(Arc::new(ehr_orders::OrderRules { terminology: terminology.clone(), clock: clock.clone() }))
    } else {
        None
    };
    // `$validate` for every served type: profiles, the JP-CLINS rules and the master codes.
    let validate = ehr_validation::http::router(ehr_validation::http::ValidateState {
        validator: FullValidator::new(validator.clone(), terminology.clone()),
        auth: auth.clone(),
        // Bundles are not stored here but are what the national services take (documents, the
        // 6 information items): they validate too.
        types: types.iter().copied().chain(["Bundle"]).collect(),
    });
    let service = FhirService { store, validator, clock, types, rules };
    let rest = RestState { service: Arc::new(service), auth: auth.clone(), base: base_url(config) };
    Router::new().nest(FHIR_BASE, ehr_rest::router(rest).merge(validate)).nest(
        FHIR_BASE,
        ehr_terminology::http::router(ehr_terminology::http::TerminologyState {
            terminology: terminology.clone(),
            auth,
        }),
    )
}

/// The data-export service's routes mounted at `/fhir`, with its workers started in `bg`.
fn data_export_router(
    config: &Config,
    store: &Store,
    auth: AuthState,
    validator: Arc<Validator>,
    types: Vec<&'static str>,
    bg: &mut Background,
) -> Router {
    let service = ehr_data_export::DataExport {
        store: store.clone(),
        validator,
        clock: auth.clock.clone(),
        types,
        settings: config.export.clone(),
        kick: Arc::new(tokio::sync::Notify::new()),
    };
    bg.workers.extend(ehr_data_export::worker::spawn_workers(&service, bg.shutdown.clone()));
    let state = ehr_data_export::ExportState { service, auth, base: base_url(config) };
    Router::new().nest(FHIR_BASE, ehr_data_export::router(state))
}

/// The clins-adapter's routes (`/clins/…`), with its workers started in `bg`.
fn clins_router(
    config: &Config,
    store: &Store,
    auth: AuthState,
    validator: FullValidator,
    bg: &mut Background,
) -> Result<Router, AppError> {
    let adapter =
        ehr_clins_adapter::ClinsAdapter::new(store.clone(), auth.clock.clone(), validator, config.clins.clone())?;
    bg.workers.extend(adapter.spawn_workers(bg.shutdown.clone()));
    Ok(ehr_clins_adapter::router(ehr_clins_adapter::ClinsState { adapter, auth }))
}

/// The eprescription-adapter's routes (`/eprescription/…`), with its workers started in `bg`.
fn eprescription_router(
    config: &Config,
    store: &Store,
    auth: AuthState,
    validator: FullValidator,
    bg: &mut Background,
) -> Result<Router, AppError> {
    let adapter = ehr_eprescription_adapter::EPrescriptionAdapter::new(
        store.clone(),
        auth.clock.clone(),
        validator,
        config.eprescription.clone(),
    )?;
    bg.workers.extend(adapter.spawn_workers(bg.shutdown.clone()));
    Ok(ehr_eprescription_adapter::router(ehr_eprescription_adapter::EPrescriptionState { adapter, auth }))
}

/// The resource types of patient-record and orders together (target `all` serves them from one
/// engine, so a transaction Bundle may span both), sorted.
fn all_types() -> Vec<&'static str> {
    let mut types: Vec<&'static str> =
        ehr_patient_record::RESOURCE_TYPES.iter().chain(ehr_orders::RESOURCE_TYPES).copied().collect();
    types.sort_unstable();
    types
}

/// The layers every target shares: body limit, request ids, tracing by matched route, request
/// metrics by matched route as `service`.
fn common_layers(
    router: Router,
    config: &Config,
    readiness: Vec<Readiness>,
    draining: &Draining,
    metrics: &ehr_telemetry::metrics::Metrics,
    service: &'static str,
) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    // The public edge (targets `gateway` and `all`, whose service label is `gateway`) starts
    // traces of its own and only links a client's `traceparent`, unless configured to trust
    // it; the services behind the gateway continue the gateway's trace.
    let incoming = if service == metrics::service_label(Target::Gateway) && !config.telemetry.trust_incoming_traceparent
    {
        ehr_telemetry::trace::Incoming::Link
    } else {
        ehr_telemetry::trace::Incoming::Parent
    };
    router
        .merge(health_router(readiness, draining.clone()))
        .fallback(fallback)
        .layer(ehr_telemetry::metrics::layer(metrics, service))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(
            // Spans name the matched route, never the URI: query strings carry PHI (names,
            // birth dates, identifiers). Their parent is the request's `traceparent` (the
            // gateway's span, for a service); at the edge, a link (see `incoming`). A 5xx
            // answer marks the span's status as an error (without a description).
            TraceLayer::new_for_http()
                .make_span_with(move |req: &Request<_>| {
                    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str());
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
                    ehr_telemetry::trace::request_span(req.method(), route, id, req.headers(), incoming)
                })
                .on_response(tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO))
                .on_failure(
                    |class: tower_http::classify::ServerErrorsFailureClass,
                     latency: std::time::Duration,
                     span: &tracing::Span| {
                        tracing::error!(classification = %class, ?latency, "response failed");
                        ehr_telemetry::trace::mark_error(span);
                    },
                ),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

fn db_ready(store: &Store) -> Readiness {
    let db = store.clone();
    Arc::new(move || {
        let db = db.clone();
        Box::pin(async move { db.ping().await.map_err(|_| "database unreachable".to_owned()) })
    })
}

fn kv_ready(kv: &Arc<dyn SecurityState>) -> Readiness {
    let kv = kv.clone();
    Arc::new(move || {
        let kv = kv.clone();
        Box::pin(async move { kv.ping().await.map_err(|_| "redis unreachable".to_owned()) })
    })
}

/// The key-encryption key of the gateway's secrets at rest: configured (file or value), or — in
/// target `all` only — a key file created in `data_dir` on first start, readable by its owner only.
fn sealer(config: &Config, target: Target) -> Result<ehr_gateway::Sealer, AppError> {
    if let Some(text) = config.secret_key()? {
        return Ok(ehr_gateway::Sealer::from_base64(&text)?);
    }
    if target != Target::All {
        return Err(ConfigError::Invalid(format!(
            "gateway.secret_key_file (or EHR_GATEWAY__SECRET_KEY_FILE) is required for target {}: \
             the key that encrypts TOTP secrets and signing keys, the same on every replica",
            target.name()
        ))
        .into());
    }
    let path = config.data_dir.join("gateway-secret.key");
    if !path.exists() {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| AppError::DataDir(config.data_dir.display().to_string(), e))?;
        write_private(&path, &ehr_gateway::Sealer::generate_key()).map_err(|source| ConfigError::File {
            what: "the generated gateway secret key",
            path: path.clone(),
            source,
        })?;
        tracing::warn!(path = %path.display(), "created a key-encryption key for the gateway's secrets; back it up with the database");
    }
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::File {
        what: "gateway secret key",
        path: path.clone(),
        source,
    })?;
    Ok(ehr_gateway::Sealer::from_base64(&text)?)
}

/// Writes a file readable and writable by its owner only.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(text.as_bytes())
}

fn listens_on_loopback(listen: &str) -> bool {
    match listen.parse::<std::net::SocketAddr>() {
        Ok(addr) => addr.ip().is_loopback(),
        Err(_) => listen.starts_with("localhost:"),
    }
}

/// The gateway's issuer: configured, else the public URL, else a URN.
fn issuer(config: &Config) -> String {
    config
        .gateway
        .issuer
        .clone()
        .or_else(|| config.public_url.clone().map(|u| u.trim_end_matches('/').to_owned()))
        .unwrap_or_else(|| "urn:ehr:gateway".to_owned())
}

/// Builds everything `target` needs from the config.
pub async fn build(config: &Config, target: Target, clock: Arc<dyn Clock>) -> Result<App, AppError> {
    if config.auth.development_key && (target != Target::All || !listens_on_loopback(&config.listen)) {
        // The development key is public: anyone can sign any tenant's and any role's token with
        // it. Only a process nobody else can reach may trust it.
        return Err(ConfigError::Invalid(format!(
            "auth.development_key = true is only allowed for target all listening on a loopback address (listen = {}); set EHR_AUTH__DEVELOPMENT_KEY=false",
            config.listen
        ))
        .into());
    }
    let draining = Draining::default();
    if matches!(
        target,
        Target::PatientRecord
            | Target::Orders
            | Target::LabInterface
            | Target::DataExport
            | Target::ClinsAdapter
            | Target::EPrescriptionAdapter
    ) {
        // Keys first: a configuration the verifier refuses should not touch the database.
        let verifier = verifier(config, None).await?;
        let store = store(config, target).await?;
        let metrics = metrics::for_target(target, &store, &clock, &config.telemetry);
        let auth = AuthState { verifier, clock: clock.clone() };
        let validator = Arc::new(Validator::new());
        let terminology = Terminology::builtin()?;
        let mut bg = Background::start(config, &store, &clock).await?;
        let (router, lab, lab_listener) = match target {
            Target::PatientRecord => {
                bg.consume(
                    &store,
                    &clock,
                    ehr_patient_record::consumer::GROUP,
                    &[ehr_lab_interface::LAB_RESULT_RECEIVED],
                    Arc::new(ehr_patient_record::LabResults { validator: validator.clone(), clock: clock.clone() }),
                );
                let types = ehr_patient_record::RESOURCE_TYPES.to_vec();
                (fhir_router(config, store.clone(), auth, validator, types, &terminology), None, None)
            }
            Target::Orders => {
                bg.consume(
                    &store,
                    &clock,
                    ehr_orders::consumer::GROUP,
                    &[ehr_lab_interface::LAB_RESULT_RECEIVED],
                    Arc::new(ehr_orders::OrderResults { clock: clock.clone() }),
                );
                let types = ehr_orders::RESOURCE_TYPES.to_vec();
                (fhir_router(config, store.clone(), auth, validator, types, &terminology), None, None)
            }
            Target::DataExport => {
                let router = data_export_router(config, &store, auth, validator, all_types(), &mut bg);
                (router, None, None)
            }
            Target::ClinsAdapter => {
                let full = FullValidator::new(validator, terminology.clone());
                (clins_router(config, &store, auth, full, &mut bg)?, None, None)
            }
            Target::EPrescriptionAdapter => {
                let full = FullValidator::new(validator, terminology.clone());
                (eprescription_router(config, &store, auth, full, &mut bg)?, None, None)
            }
            _ => {
                let (lab, bound) = bg.lab(&config.lab, &store, &clock, validator, &terminology).await?;
                let state = ehr_lab_interface::http::LabState {
                    lab: lab.clone(),
                    auth,
                    listener: bound.map(|a| a.to_string()),
                };
                (ehr_lab_interface::http::router(state), Some(lab), bound)
            }
        };
        let router =
            common_layers(router, config, vec![db_ready(&store)], &draining, &metrics, metrics::service_label(target));
        return Ok(App {
            router,
            store,
            gateway: None,
            lab,
            lab_listener,
            shutdown: bg.relay_shutdown,
            workers: bg.workers,
            draining,
            workers_shutdown: bg.shutdown,
            relay: Some(bg.relay_task),
            metrics,
        });
    }
    // The gateway (alone, or with every service in-process).
    config.validate()?;

    let kv = security_state(config, target).await?;
    let store = store(config, target).await?;
    let metrics = metrics::for_target(target, &store, &clock, &config.telemetry);
    let now = clock.now().timestamp();
    let settings = config.gateway.clone();
    let sealer = sealer(config, target)?;
    let keys = KeyRing::load(
        store.clone(),
        issuer(config),
        settings.key_rotation_days.max(1) * 86_400,
        settings.access_secs(),
        now,
        sealer.clone(),
    )
    .await?;
    let verifier = verifier(config, Some((keys.issuer(), keys.key_source(clock.clone())))).await?;
    let auth = AuthState { verifier: verifier.clone(), clock: clock.clone() };
    let gateway_clock = clock.clone();
    let validator = Arc::new(Validator::new());
    let audit_service = FhirService {
        store: store.clone(),
        validator: validator.clone(),
        clock: clock.clone(),
        types: vec!["AuditEvent"],
        rules: None,
    };
    let audit_rest = RestState { service: Arc::new(audit_service), auth: auth.clone(), base: base_url(config) };
    let audit_router = Router::new().nest(FHIR_BASE, ehr_rest::read_only_router(audit_rest));
    let mut lab = None;
    let mut lab_listener = None;
    let mut background = None;
    let upstreams = if target == Target::All {
        let terminology = Terminology::builtin()?;
        let mut bg = Background::start(config, &store, &clock).await?;
        bg.consume(
            &store,
            &clock,
            ehr_patient_record::consumer::GROUP,
            &[ehr_lab_interface::LAB_RESULT_RECEIVED],
            Arc::new(ehr_patient_record::LabResults { validator: validator.clone(), clock: clock.clone() }),
        );
        bg.consume(
            &store,
            &clock,
            ehr_orders::consumer::GROUP,
            &[ehr_lab_interface::LAB_RESULT_RECEIVED],
            Arc::new(ehr_orders::OrderResults { clock: clock.clone() }),
        );
        let (lab_interface, bound) = bg.lab(&config.lab, &store, &clock, validator.clone(), &terminology).await?;
        let lab_router = ehr_lab_interface::http::router(ehr_lab_interface::http::LabState {
            lab: lab_interface.clone(),
            auth: auth.clone(),
            listener: bound.map(|a| a.to_string()),
        })
        // Each router the gateway calls in-process counts its requests by its own routes.
        .layer(ehr_telemetry::metrics::layer(&metrics, metrics::LAB_INTERFACE));
        lab = Some(lab_interface);
        lab_listener = bound;
        let types = all_types();
        let export = data_export_router(config, &store, auth.clone(), validator.clone(), types.clone(), &mut bg)
            .layer(ehr_telemetry::metrics::layer(&metrics, metrics::DATA_EXPORT));
        let full = FullValidator::new(validator.clone(), terminology.clone());
        let clins = clins_router(config, &store, auth.clone(), full.clone(), &mut bg)?
            .layer(ehr_telemetry::metrics::layer(&metrics, metrics::CLINS_ADAPTER));
        let eprescription = eprescription_router(config, &store, auth.clone(), full, &mut bg)?
            .layer(ehr_telemetry::metrics::layer(&metrics, metrics::EPRESCRIPTION_ADAPTER));
        background = Some(bg);
        // Called in-process, a request reaches this router without the gateway's layers (the
        // extensions are not carried over): the body limit is set again here, or axum's 2 MiB
        // default would apply. `$import` sets its own (export.max_import_bytes).
        let fhir = Upstream::Local(
            fhir_router(config, store.clone(), auth, validator, types.clone(), &terminology)
                .layer(ehr_telemetry::metrics::layer(&metrics, metrics::FHIR_ENGINE))
                .merge(export)
                // A path no route of the engine takes answers an OperationOutcome (as in the
                // services' own targets, `common_layers`), not axum's empty 404.
                .fallback(fallback)
                .layer(DefaultBodyLimit::max(config.max_body_bytes)),
        );
        Upstreams::new(fhir.clone(), audit_router)
            .route(&types, fhir.clone())
            .route(&["CodeSystem", "ValueSet"], fhir.clone())
            // The services' own APIs get the same limit as in their own targets (common_layers).
            .lab(Upstream::Local(lab_router.fallback(fallback).layer(DefaultBodyLimit::max(config.max_body_bytes))))
            .service(
                "clins",
                Upstream::Local(clins.fallback(fallback).layer(DefaultBodyLimit::max(config.max_body_bytes))),
            )
            .service(
                "eprescription",
                Upstream::Local(eprescription.fallback(fallback).layer(DefaultBodyLimit::max(config.max_body_bytes))),
            )
            .operations(fhir, config.export.max_import_bytes)
    } else {
        let upstream_check = std::time::Duration::from_millis(config.gateway.upstream_check_ms.max(50));
        let remote = |name: &str| -> Result<Option<Upstream>, AppError> {
            match config.gateway.upstreams.get(name) {
                // One instance or several; each is health-checked (`ehr_gateway::upstream`).
                Some(urls) => Ok(Some(Upstream::remote(name, urls, reqwest_client()?, upstream_check))),
                None => Ok(None),
            }
        };
        let pr = remote("patient-record")?.ok_or_else(|| {
            ConfigError::Invalid(
                "gateway.upstreams.patient-record (its base URL) is required for target gateway".into(),
            )
        })?;
        let mut up = Upstreams::new(pr.clone(), audit_router)
            .route(ehr_patient_record::RESOURCE_TYPES, pr.clone())
            .route(&["CodeSystem", "ValueSet"], pr);
        if let Some(orders) = remote("orders")? {
            up = up.route(ehr_orders::RESOURCE_TYPES, orders);
        }
        if let Some(lab) = remote("lab-interface")? {
            up = up.lab(lab);
        }
        if let Some(export) = remote("data-export")? {
            up = up.operations(export, config.export.max_import_bytes);
        }
        if let Some(clins) = remote("clins-adapter")? {
            up = up.service("clins", clins);
        }
        if let Some(eprescription) = remote("eprescription-adapter")? {
            up = up.service("eprescription", eprescription);
        }
        up
    };
    let gateway = Gateway::new(GatewayInner {
        store: store.clone(),
        kv: kv.clone(),
        clock: clock.clone(),
        settings,
        keys,
        audit: AuditSink::start(store.clone(), gateway_clock),
        verifier,
        public_url: config.public_url.clone(),
        tenants: ehr_gateway::TenantCache::default(),
        sealer,
    });
    gateway.spawn_maintenance();
    let router = ehr_gateway::router(gateway.clone(), upstreams, config.max_body_bytes);
    let router = common_layers(
        router,
        config,
        vec![db_ready(&store), kv_ready(&kv)],
        &draining,
        &metrics,
        metrics::service_label(target),
    );
    let (shutdown, workers_shutdown, workers, relay) = match background {
        Some(bg) => (bg.relay_shutdown, bg.shutdown, bg.workers, Some(bg.relay_task)),
        None => {
            let shutdown = CancellationToken::new();
            (shutdown.clone(), shutdown, Vec::new(), None)
        }
    };
    Ok(App {
        router,
        store,
        gateway: Some(gateway),
        lab,
        lab_listener,
        shutdown,
        workers,
        draining,
        workers_shutdown,
        relay,
        metrics,
    })
}

/// The client of the gateway's calls to the services: bounded waits, so that a hung service
/// answers 502 instead of holding requests forever.
fn reqwest_client() -> Result<ehr_gateway::HttpClient, AppError> {
    ehr_gateway::HttpClient::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .map_err(|e| ConfigError::Invalid(format!("HTTP client: {e}")).into())
}
