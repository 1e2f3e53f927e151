//! Operations the `ehr` CLI runs against the gateway's database: bootstrapping a tenant and its
//! first administrator, and verifying the audit hash chains.

use crate::error::GatewayError;
use crate::login::ctx;
use crate::settings::GatewaySettings;
use ehr_core::TenantId;
use ehr_store::{AuditVerification, ClientRecord, Store, StoreError, TenantRecord};

/// What [`bootstrap_tenant`] created.
#[derive(Debug)]
pub struct Bootstrapped {
    pub admin_id: Option<String>,
    /// A public OAuth client for command-line and first-party use, with a loopback redirect.
    pub client_id: String,
    pub redirect_uri: String,
}

/// The loopback redirect URI of the bootstrap client (RFC 8252 §7.3: native apps).
pub const CLI_REDIRECT: &str = "http://127.0.0.1:8765/callback";

/// Creates a tenant (if it does not exist), its first administrator with `roles`, and a public
/// OAuth client `<tenant>-cli`. The administrator enrols TOTP at first login.
pub async fn bootstrap_tenant(
    store: &Store,
    settings: &GatewaySettings,
    now: i64,
    tenant: &TenantId,
    name: &str,
    admin: Option<(&str, &str, Vec<String>)>,
) -> Result<Bootstrapped, GatewayError> {
    // Everything that can be refused is checked before anything is written.
    if let Some((username, password, roles)) = &admin {
        crate::admin::check_username(username)?;
        settings.password.check(password)?;
        let matrix = ehr_auth::AccessMatrix::get();
        if let Some(bad) = roles.iter().find(|r| !matrix.is_role(r)) {
            return Err(GatewayError::Invalid(format!("unknown role `{bad}`; known: {}", matrix.roles().join(", "))));
        }
    }
    let tx = store.system_write().await?;
    match tx
        .create_tenant(&TenantRecord { id: tenant.clone(), name: name.to_owned(), active: true, created_at: now })
        .await
    {
        Ok(()) | Err(StoreError::AlreadyExists) => {}
        Err(e) => return Err(e.into()),
    }
    let client_id = format!("{}-cli", tenant.as_str());
    let client = ClientRecord {
        client_id: client_id.clone(),
        tenant: tenant.clone(),
        name: "ehr command line".into(),
        kind: "public".into(),
        redirect_uris: vec![CLI_REDIRECT.into()],
        jwks: None,
        scope: "openid fhirUser offline_access user/*.cruds".into(),
        active: true,
        created_at: now,
    };
    match tx.create_client(&client).await {
        Ok(()) => {}
        // Re-running the bootstrap is fine; a client of that name in another tenant is not.
        Err(StoreError::AlreadyExists) if tx.client(&client_id).await?.is_some_and(|c| &c.tenant == tenant) => {}
        Err(StoreError::AlreadyExists) => {
            return Err(GatewayError::Conflict(format!("client id `{client_id}` belongs to another tenant")));
        }
        Err(e) => return Err(e.into()),
    }
    tx.commit().await?;
    let mut admin_id = None;
    if let Some((username, password, roles)) = admin {
        let new = crate::admin::NewAccount {
            username: username.to_owned(),
            display_name: username.to_owned(),
            password: password.to_owned(),
            roles,
            fhir_user: None,
        };
        admin_id = Some(crate::admin::insert_account(store, &settings.password, tenant, new, now).await?.id);
    }
    Ok(Bootstrapped { admin_id, client_id, redirect_uri: CLI_REDIRECT.into() })
}

/// Verifies the audit chain of `tenant`, or of every tenant (and the system chain).
pub async fn verify_audit(
    store: &Store,
    tenant: Option<&TenantId>,
) -> Result<Vec<(TenantId, AuditVerification)>, GatewayError> {
    let tenants = match tenant {
        Some(t) => vec![t.clone()],
        None => {
            let tx = store.system_read().await?;
            let mut all = tx.audit_tenants().await?;
            tx.commit().await?;
            if !all.iter().any(|t| t.as_str() == TenantId::system().as_str()) {
                all.push(TenantId::system());
            }
            all
        }
    };
    let mut out = Vec::new();
    for t in tenants {
        let tx = store.read(&ctx(&t)).await?;
        let report = tx.verify_audit_chain().await?;
        tx.commit().await?;
        out.push((t, report));
    }
    Ok(out)
}
