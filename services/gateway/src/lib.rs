//! The gateway: the single public entry of the EHR.
//!
//! It owns identity (tenants, users, roles, TOTP enrolments, OAuth clients, signing keys) and the
//! audit trail, issues tokens (SMART App Launch with PKCE, SMART Backend Services), and routes
//! FHIR requests by resource type to the owning service — in-process in `ehr serve`, over HTTP in
//! microservices mode — after verifying the token, checking revocations and rate limits.
//! Services verify tokens again themselves (zero trust inside the cluster).
//!
//! Code map: [`login`] (authorize, password, TOTP, token grants), [`admin`] (account lifecycle),
//! [`proxy`] (routing, limits, per-request audit), [`audit`] (BALP AuditEvents and the writer),
//! [`keys`] (signing-key ring), [`http`] (the routes), [`pages`] (the login pages).

pub mod admin;
pub mod audit;
mod error;
mod http;
pub mod keys;
pub mod login;
pub mod ops;
mod pages;
pub mod proxy;
pub mod seal;
mod settings;
pub mod upstream;

pub use audit::AuditSink;
pub use error::{GatewayError, OAuthFailure};
pub use http::router;
pub use keys::KeyRing;
pub use proxy::{Upstream, Upstreams};
pub use seal::Sealer;
pub use settings::{BaseUrls, GatewaySettings, MAX_ACCESS_TOKEN_SECS, RateLimitSettings};

use ehr_auth::Verifier;
use ehr_core::{Clock, TenantId};
use ehr_kv::SecurityState;
use ehr_store::{ClientRecord, Store};
use std::sync::Arc;

/// The pseudo resource types of the admin API and of the services' own APIs (the lab interface's,
/// the national-service adapters') in docs/security/access-matrix.md: reached only by user scopes
/// that name them, never by a wildcard, and never granted to a system (backend) client — a
/// connection is configured, and a national submission made, by an accountable person.
pub const ADMIN_TYPES: &[&str] =
    &["Account", "Client", "Tenant", "SigningKey", "Connection", "LabMessage", "NationalSubmission", "EPrescription"];

/// The gateway's service layer. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

/// What the gateway works with.
pub struct Inner {
    /// The gateway's own database (identity tables and the audit trail).
    pub store: Store,
    /// Sessions, refresh families, revocations, lockout counters, rate limits.
    pub kv: Arc<dyn SecurityState>,
    pub clock: Arc<dyn Clock>,
    pub settings: GatewaySettings,
    pub keys: KeyRing,
    pub audit: AuditSink,
    /// Verifies bearer tokens: the gateway's own, and the development key's where trusted.
    pub verifier: Verifier,
    /// The public URL (`https://ehr.example-hospital.jp`), when configured.
    pub public_url: Option<String>,
    /// Whether tenants exist and are active, cached briefly (checked on every request).
    pub tenants: TenantCache,
    /// Encrypts TOTP secrets at rest.
    pub sealer: Sealer,
}

/// Seconds a tenant's active flag is cached; a deactivation on another replica takes effect
/// within this time (at once on the replica that made it).
const TENANT_CACHE_SECS: i64 = 30;

/// A short-lived cache of tenants' active flags.
#[derive(Default)]
pub struct TenantCache(std::sync::Mutex<std::collections::HashMap<String, (Option<bool>, i64)>>);

impl std::ops::Deref for Gateway {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl Gateway {
    /// A gateway over its parts.
    pub fn new(inner: Inner) -> Self {
        Self { inner: Arc::new(inner) }
    }

    /// Unix seconds, from the injected clock.
    pub fn now(&self) -> i64 {
        self.clock.now().timestamp()
    }

    /// The current instant as a FHIR `instant`.
    pub fn now_instant(&self) -> String {
        self.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    }

    pub(crate) async fn client(&self, client_id: &str) -> Result<Option<ClientRecord>, GatewayError> {
        let tx = self.store.system_read().await?;
        let client = tx.client(client_id).await?;
        tx.commit().await?;
        Ok(client)
    }

    /// Starts the background work: key rotation when due, key-ring reload (other replicas may
    /// have rotated).
    pub fn spawn_maintenance(&self) {
        let gw = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(keys::RELOAD_SECS));
            loop {
                tick.tick().await;
                if let Err(e) = gw.keys.rotate_if_due(gw.now()).await {
                    tracing::warn!(error = %e, "signing-key maintenance failed");
                }
            }
        });
    }

    /// Whether `tenant` exists (`Some`) and is active; cached for a few seconds.
    pub async fn tenant_active(&self, tenant: &TenantId) -> Result<Option<bool>, GatewayError> {
        let now = self.now();
        if let Ok(cache) = self.tenants.0.lock()
            && let Some((active, at)) = cache.get(tenant.as_str())
            && now - at < TENANT_CACHE_SECS
        {
            return Ok(*active);
        }
        let tx = self.store.system_read().await?;
        let active = tx.tenant(tenant).await?.map(|t| t.active);
        tx.commit().await?;
        if let Ok(mut cache) = self.tenants.0.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(tenant.as_str().to_owned(), (active, now));
        }
        Ok(active)
    }

    /// Drops a tenant from the cache (after its deactivation).
    pub fn forget_tenant(&self, tenant: &TenantId) {
        if let Ok(mut cache) = self.tenants.0.lock() {
            cache.remove(tenant.as_str());
        }
    }

    /// Creates a tenant (used by the CLI bootstrap and the admin API).
    pub async fn create_tenant(&self, id: &TenantId, name: &str) -> Result<(), GatewayError> {
        let tx = self.store.system_write().await?;
        tx.create_tenant(&ehr_store::TenantRecord {
            id: id.clone(),
            name: name.to_owned(),
            active: true,
            created_at: self.now(),
        })
        .await
        .map_err(|e| match e {
            ehr_store::StoreError::AlreadyExists => {
                GatewayError::Conflict(format!("tenant {} already exists", id.as_str()))
            }
            e => e.into(),
        })?;
        tx.commit().await?;
        Ok(())
    }
}
pub use reqwest::Client as HttpClient;
