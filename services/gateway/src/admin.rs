//! Account lifecycle (the admin API): create accounts, assign roles, deactivate leavers at once,
//! reset MFA, report unused accounts; tenants, OAuth clients and signing keys for system admins.
//!
//! Authorisation uses the same access matrix as FHIR, through the pseudo resource types
//! `Account`, `Client`, `Tenant` and `SigningKey` (docs/security/access-matrix.md). Every change
//! is audited.

use crate::audit::{Actor, SecurityKind};
use crate::error::GatewayError;
use crate::http::{AdminJson, Authed, GwState};
use crate::login::ctx;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use ehr_auth::{AccessMatrix, Interaction};
use ehr_core::TenantId;
use ehr_store::{ClientRecord, NewUser, StoreError, UserRecord};
use serde::Deserialize;
use serde_json::{Value, json};

type Result<T> = std::result::Result<T, GatewayError>;

fn view(u: &UserRecord) -> Value {
    json!({
        "id": u.id,
        "username": u.username,
        "display_name": u.display_name,
        "roles": u.roles,
        "active": u.active,
        "mfa_enrolled": u.mfa_confirmed,
        "fhir_user": u.fhir_user,
        "created_at": u.created_at,
        "last_login_at": u.last_login_at,
    })
}

/// A new account.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    pub username: String,
    #[serde(default)]
    pub display_name: String,
    pub password: String,
    pub roles: Vec<String>,
    /// The user's FHIR resource (`Practitioner/123`), for SMART `fhirUser` and the audit trail.
    #[serde(default)]
    pub fhir_user: Option<String>,
}

fn check_roles(roles: &[String], caller: &Authed) -> Result<()> {
    let matrix = AccessMatrix::get();
    if roles.is_empty() {
        return Err(GatewayError::Invalid("an account needs at least one role".into()));
    }
    for r in roles {
        if !matrix.is_role(r) {
            return Err(GatewayError::Invalid(format!("unknown role `{r}`; known: {}", matrix.roles().join(", "))));
        }
        // Nobody grants more than they hold: only a system admin makes system admins.
        if r == "system-admin" && !caller.roles().iter().any(|c| c == "system-admin") {
            return Err(GatewayError::Forbidden("only a system admin may grant the system-admin role".into()));
        }
    }
    Ok(())
}

fn check_fhir_user(r: &Option<String>) -> Result<()> {
    match r {
        Some(r) if !matches!(r.split_once('/'), Some(("Practitioner" | "PractitionerRole", id)) if !id.is_empty() && !id.contains('/')) => {
            Err(GatewayError::Invalid(
                "fhir_user must be a Practitioner/<id> or PractitionerRole/<id> reference".into(),
            ))
        }
        _ => Ok(()),
    }
}

/// A username: 1–64 characters (not bytes: Japanese names are welcome), no spaces or controls.
pub fn check_username(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(GatewayError::Invalid("username must be 1–64 characters without spaces".into()));
    }
    Ok(name.to_owned())
}

/// Checks and stores a new account (the API's and the CLI bootstrap's one way to make one).
pub(crate) async fn insert_account(
    store: &ehr_store::Store,
    policy: &ehr_auth::PasswordPolicy,
    tenant: &TenantId,
    new: NewAccount,
    now: i64,
) -> Result<UserRecord> {
    let username = check_username(&new.username)?;
    check_fhir_user(&new.fhir_user)?;
    policy.check(&new.password)?;
    let hash = policy.hash(&new.password)?;
    let tx = store.write(&ctx(tenant)).await?;
    let user = tx
        .create_user(&NewUser {
            id: uuid::Uuid::new_v4().to_string(),
            username: username.clone(),
            display_name: new.display_name,
            password_hash: hash,
            roles: new.roles,
            fhir_user: new.fhir_user,
            now,
        })
        .await
        .map_err(|e| match e {
            StoreError::AlreadyExists => GatewayError::Conflict(format!("username `{username}` is taken")),
            e => e.into(),
        })?;
    tx.commit().await?;
    Ok(user)
}

impl crate::Gateway {
    /// Ends every session of a user at once: the refresh families die, and access tokens issued
    /// up to this second are refused (`iat` has one-second resolution, hence `now + 1`). Returns
    /// how many sessions ended.
    pub async fn end_sessions(&self, tenant: &TenantId, user_id: &str, now: i64) -> Result<u32> {
        let ended = self.kv.revoke_subject(tenant.as_str(), user_id).await?;
        self.kv.revoke_tokens_before(tenant.as_str(), user_id, now + 1, self.settings.revocation_keep(now)).await?;
        Ok(ended)
    }

    /// Creates an account in `tenant` (the password is checked against the policy).
    pub async fn create_account(&self, tenant: &TenantId, new: NewAccount, actor: &Actor) -> Result<UserRecord> {
        let user = insert_account(&self.store, &self.settings.password, tenant, new, self.now()).await?;
        self.audit_security(
            tenant,
            actor,
            SecurityKind::AccountCreated,
            true,
            Some(&format!("roles: {}", user.roles.join(" "))),
            Some(&user.id),
        )
        .await;
        Ok(user)
    }

    /// Deactivates an account with immediate effect: its refresh tokens die and its access
    /// tokens are refused from this second on.
    pub async fn deactivate(&self, tenant: &TenantId, id: &str, actor: &Actor) -> Result<UserRecord> {
        let now = self.now();
        let tx = self.store.write(&ctx(tenant)).await?;
        if !tx.set_user_active(id, false, now).await? {
            return Err(GatewayError::NotFound("account"));
        }
        tx.commit().await?;
        self.end_sessions(tenant, id, now).await?;
        self.audit_security(tenant, actor, SecurityKind::AccountDeactivated, true, None, Some(id)).await;
        self.user(tenant, id).await?.ok_or(GatewayError::NotFound("account"))
    }
}

/// `POST /admin/tenants` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub id: String,
    pub name: String,
    /// The tenant's first administrator (role tenant-admin), who enrols MFA at first login.
    pub admin: Option<NewAccount>,
}

pub async fn create_tenant(
    State(st): State<GwState>,
    caller: Authed,
    AdminJson(body): AdminJson<NewTenant>,
) -> Result<impl IntoResponse> {
    caller.require("Tenant", Interaction::Create)?;
    let id = TenantId::parse(&body.id)
        .map_err(|_| GatewayError::Invalid("tenant id: letters, digits and '-' only".into()))?;
    // Everything that can be refused is checked before anything is written.
    if let Some(a) = &body.admin {
        check_username(&a.username)?;
        check_fhir_user(&a.fhir_user)?;
        st.gw.settings.password.check(&a.password)?;
    }
    st.gw.create_tenant(&id, &body.name).await?;
    // The tenant's own public client, so that its administrator can log in at once.
    let boot = crate::ops::bootstrap_tenant(&st.gw.store, &st.gw.settings, st.gw.now(), &id, &body.name, None).await?;
    st.gw
        .audit_security(caller.tenant(), caller.actor(), SecurityKind::TenantCreated, true, Some(id.as_str()), None)
        .await;
    st.gw.audit_server_wide(caller.tenant(), caller.actor(), SecurityKind::TenantCreated, id.as_str()).await;
    let admin = match body.admin {
        Some(mut a) => {
            a.roles = vec!["tenant-admin".into()];
            Some(view(&st.gw.create_account(&id, a, caller.actor()).await?))
        }
        None => None,
    };
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id.as_str(), "name": body.name, "admin": admin,
                    "client_id": boot.client_id, "redirect_uri": boot.redirect_uri})),
    ))
}

pub async fn list_tenants(State(st): State<GwState>, caller: Authed) -> Result<Json<Value>> {
    caller.require("Tenant", Interaction::Search)?;
    let tx = st.gw.store.system_read().await?;
    let tenants = tx.tenants().await?;
    tx.commit().await?;
    let list: Vec<Value> = tenants
        .iter()
        .map(|t| json!({"id": t.id.as_str(), "name": t.name, "active": t.active, "created_at": t.created_at}))
        .collect();
    Ok(Json(json!({"tenants": list})))
}

pub async fn create_user(
    State(st): State<GwState>,
    caller: Authed,
    AdminJson(body): AdminJson<NewAccount>,
) -> Result<impl IntoResponse> {
    caller.require("Account", Interaction::Create)?;
    check_roles(&body.roles, &caller)?;
    let user = st.gw.create_account(caller.tenant(), body, caller.actor()).await?;
    Ok((StatusCode::CREATED, Json(view(&user))))
}

pub async fn list_users(State(st): State<GwState>, caller: Authed) -> Result<Json<Value>> {
    caller.require("Account", Interaction::Search)?;
    let tx = st.gw.store.read(&ctx(caller.tenant())).await?;
    let users = tx.users().await?;
    tx.commit().await?;
    Ok(Json(json!({"users": users.iter().map(view).collect::<Vec<_>>()})))
}

pub async fn get_user(State(st): State<GwState>, caller: Authed, Path(id): Path<String>) -> Result<Json<Value>> {
    caller.require("Account", Interaction::Read)?;
    let user = st.gw.user(caller.tenant(), &id).await?.ok_or(GatewayError::NotFound("account"))?;
    Ok(Json(view(&user)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    pub roles: Vec<String>,
}

pub async fn set_roles(
    State(st): State<GwState>,
    caller: Authed,
    Path(id): Path<String>,
    AdminJson(body): AdminJson<Roles>,
) -> Result<Json<Value>> {
    caller.require("Account", Interaction::Update)?;
    // Nobody changes her own roles: an administrator would otherwise grant herself clinical
    // access; another administrator must do it (and it is audited).
    not_self(&caller, &id, "change the roles of")?;
    check_roles(&body.roles, &caller)?;
    let tenant = caller.tenant();
    let tx = st.gw.store.write(&ctx(tenant)).await?;
    if !tx.set_user_roles(&id, &body.roles, st.gw.now()).await? {
        return Err(GatewayError::NotFound("account"));
    }
    tx.commit().await?;
    let desc = format!("roles: {}", body.roles.join(" "));
    st.gw.audit_security(tenant, caller.actor(), SecurityKind::RolesChanged, true, Some(&desc), Some(&id)).await;
    let user = st.gw.user(tenant, &id).await?.ok_or(GatewayError::NotFound("account"))?;
    Ok(Json(view(&user)))
}

fn not_self(caller: &Authed, id: &str, what: &str) -> Result<()> {
    if caller.subject() == id {
        return Err(GatewayError::Forbidden(format!("an administrator cannot {what} her own account")));
    }
    Ok(())
}

pub async fn deactivate(State(st): State<GwState>, caller: Authed, Path(id): Path<String>) -> Result<Json<Value>> {
    caller.require("Account", Interaction::Update)?;
    not_self(&caller, &id, "deactivate")?;
    let user = st.gw.deactivate(caller.tenant(), &id, caller.actor()).await?;
    Ok(Json(view(&user)))
}

pub async fn activate(State(st): State<GwState>, caller: Authed, Path(id): Path<String>) -> Result<Json<Value>> {
    caller.require("Account", Interaction::Update)?;
    let tenant = caller.tenant();
    let tx = st.gw.store.write(&ctx(tenant)).await?;
    if !tx.set_user_active(&id, true, st.gw.now()).await? {
        return Err(GatewayError::NotFound("account"));
    }
    tx.commit().await?;
    st.gw.audit_security(tenant, caller.actor(), SecurityKind::AccountActivated, true, None, Some(&id)).await;
    let user = st.gw.user(tenant, &id).await?.ok_or(GatewayError::NotFound("account"))?;
    Ok(Json(view(&user)))
}

/// MFA reset: the secret and recovery codes are removed, so the next login enrols a new
/// authenticator. MFA itself can never be switched off, and nobody resets their own.
pub async fn reset_mfa(State(st): State<GwState>, caller: Authed, Path(id): Path<String>) -> Result<Json<Value>> {
    caller.require("Account", Interaction::Update)?;
    not_self(&caller, &id, "reset the MFA of")?;
    let tenant = caller.tenant();
    let now = st.gw.now();
    let tx = st.gw.store.write(&ctx(tenant)).await?;
    if !tx.set_mfa_secret(&id, None, now).await? {
        return Err(GatewayError::NotFound("account"));
    }
    tx.commit().await?;
    // Sessions opened with the old authenticator end too.
    st.gw.end_sessions(tenant, &id, now).await?;
    st.gw.audit_security(tenant, caller.actor(), SecurityKind::MfaReset, true, None, Some(&id)).await;
    let user = st.gw.user(tenant, &id).await?.ok_or(GatewayError::NotFound("account"))?;
    Ok(Json(view(&user)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    pub password: String,
}

pub async fn set_password(
    State(st): State<GwState>,
    caller: Authed,
    Path(id): Path<String>,
    AdminJson(body): AdminJson<NewPassword>,
) -> Result<Json<Value>> {
    caller.require("Account", Interaction::Update)?;
    st.gw.settings.password.check(&body.password)?;
    let hash = st.gw.settings.password.hash(&body.password)?;
    let tenant = caller.tenant();
    let tx = st.gw.store.write(&ctx(tenant)).await?;
    let now = st.gw.now();
    if !tx.set_password_hash(&id, &hash, now).await? {
        return Err(GatewayError::NotFound("account"));
    }
    tx.commit().await?;
    // A password reset ends the sessions opened with the old password.
    st.gw.end_sessions(tenant, &id, now).await?;
    st.gw.audit_security(tenant, caller.actor(), SecurityKind::PasswordReset, true, None, Some(&id)).await;
    let user = st.gw.user(tenant, &id).await?.ok_or(GatewayError::NotFound("account"))?;
    Ok(Json(view(&user)))
}

pub async fn unlock(State(st): State<GwState>, caller: Authed, Path(id): Path<String>) -> Result<Json<Value>> {
    caller.require("Account", Interaction::Update)?;
    let tenant = caller.tenant();
    let user = st.gw.user(tenant, &id).await?.ok_or(GatewayError::NotFound("account"))?;
    st.gw.unlock(tenant, &user.username).await?;
    st.gw
        .audit_security(tenant, caller.actor(), SecurityKind::AccountActivated, true, Some("unlocked"), Some(&id))
        .await;
    Ok(Json(view(&user)))
}

#[derive(Debug, Deserialize)]
pub struct UnusedQuery {
    pub days: Option<i64>,
}

/// Accounts without a login for `days` days (default 90): the checklist's periodic review of
/// unused accounts.
pub async fn unused_accounts(
    State(st): State<GwState>,
    caller: Authed,
    query: std::result::Result<Query<UnusedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>> {
    caller.require("Account", Interaction::Search)?;
    let Query(q) = query.map_err(|_| GatewayError::Invalid("days must be a whole number of days".into()))?;
    let days = q.days.unwrap_or(90);
    if !(0..=3650).contains(&days) {
        return Err(GatewayError::Invalid("days must be between 0 and 3650".into()));
    }
    let cutoff = st.gw.now() - days * 86_400;
    let tx = st.gw.store.read(&ctx(caller.tenant())).await?;
    let users = tx.unused_users(cutoff).await?;
    tx.commit().await?;
    Ok(Json(json!({"days": days, "cutoff": cutoff, "users": users.iter().map(view).collect::<Vec<_>>()})))
}

/// `POST /admin/clients` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    pub client_id: Option<String>,
    pub name: String,
    /// `public` (a user-facing app: authorization code + PKCE) or `backend` (SMART Backend
    /// Services: client credentials with `private_key_jwt`).
    pub kind: String,
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    pub jwks: Option<Value>,
    /// Scopes the client may obtain: for `public`, an upper bound on the user's scopes; for
    /// `backend`, what it gets (`system/Observation.cruds`).
    pub scope: String,
}

fn client_view(c: &ClientRecord) -> Value {
    json!({"client_id": c.client_id, "tenant": c.tenant.as_str(), "name": c.name, "kind": c.kind,
           "redirect_uris": c.redirect_uris, "scope": c.scope, "active": c.active, "created_at": c.created_at})
}

pub async fn create_client(
    State(st): State<GwState>,
    caller: Authed,
    AdminJson(body): AdminJson<NewClient>,
) -> Result<impl IntoResponse> {
    caller.require("Client", Interaction::Create)?;
    match body.kind.as_str() {
        "public" if body.redirect_uris.is_empty() => {
            return Err(GatewayError::Invalid("a public client needs redirect_uris".into()));
        }
        "backend"
            if body.jwks.as_ref().and_then(|j| j.get("keys")).and_then(Value::as_array).is_none_or(Vec::is_empty) =>
        {
            return Err(GatewayError::Invalid("a backend client needs a jwks with its public keys".into()));
        }
        "public" | "backend" => {}
        _ => return Err(GatewayError::Invalid("kind must be public or backend".into())),
    }
    if body.kind == "backend" {
        // A system client acts on clinical data only: `system/` scopes, never the admin API's
        // pseudo types (which wildcards do not reach either, see `ScopeSet::allows_explicitly`).
        for scope in body.scope.split_whitespace() {
            // Letters a subset of `crus` in order: nobody deletes clinical records, not a system
            // either (docs/security/access-matrix.md); corrections are new versions.
            let valid = ehr_auth::resource_scope(scope).is_some_and(|(context, t, letters)| {
                context == "system"
                    && !crate::ADMIN_TYPES.contains(&t)
                    && (t == "*" || ehr_core::ResourceType::parse(t).is_ok())
                    && !letters.contains('d')
            });
            if !valid {
                return Err(GatewayError::Invalid(format!(
                    "backend client scope `{scope}`: only system/<resource type>.<letters from crus> scopes on FHIR resources"
                )));
            }
        }
    }
    for uri in &body.redirect_uris {
        // Exact-match redirect URIs over HTTPS; plain HTTP only to the loopback host itself, for
        // native apps (RFC 8252 §7.3) — parsed, so `http://localhost.evil.example` is not one.
        let ok = reqwest::Url::parse(uri).is_ok_and(|u| match u.scheme() {
            "https" => u.host_str().is_some(),
            "http" => matches!(u.host_str(), Some("127.0.0.1" | "[::1]" | "localhost")),
            _ => false,
        });
        if !ok || uri.contains('#') {
            return Err(GatewayError::Invalid(format!(
                "redirect URI `{uri}` must be https (or loopback) without a fragment"
            )));
        }
    }
    // Client ids are global (a client is found before its tenant is known): each tenant's start
    // with its id, so that no tenant can take a name another one will need (`<tenant>-cli`).
    let prefix = format!("{}-", caller.tenant().as_str());
    let client_id = match body.client_id {
        // `<tenant>-cli` is the bootstrap's: reserved, so that no tenant (`hospital`) can take
        // another's (`hospital-a-cli`), tenant ids being allowed to contain `-`.
        Some(id) if id.starts_with(&prefix) && id.len() > prefix.len() && id.len() <= 128 && !id.ends_with("-cli") => {
            id
        }
        Some(_) => return Err(GatewayError::Invalid(format!("client_id must start with `{prefix}`"))),
        None => format!("{prefix}{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
    };
    let record = ClientRecord {
        client_id: client_id.clone(),
        tenant: caller.tenant().clone(),
        name: body.name,
        kind: body.kind,
        redirect_uris: body.redirect_uris,
        jwks: body.jwks,
        scope: body.scope,
        active: true,
        created_at: st.gw.now(),
    };
    let tx = st.gw.store.system_write().await?;
    tx.create_client(&record).await.map_err(|e| match e {
        StoreError::AlreadyExists => GatewayError::Conflict(format!("client id `{client_id}` is taken")),
        e => e.into(),
    })?;
    tx.commit().await?;
    st.gw
        .audit_security(caller.tenant(), caller.actor(), SecurityKind::ClientRegistered, true, Some(&client_id), None)
        .await;
    Ok((StatusCode::CREATED, Json(client_view(&record))))
}

pub async fn list_clients(State(st): State<GwState>, caller: Authed) -> Result<Json<Value>> {
    caller.require("Client", Interaction::Search)?;
    let tx = st.gw.store.system_read().await?;
    let clients = tx.clients_of(caller.tenant()).await?;
    tx.commit().await?;
    Ok(Json(json!({"clients": clients.iter().map(client_view).collect::<Vec<_>>()})))
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// Seconds before the new key starts signing (it is published at once); default 60.
    pub publish_secs: Option<i64>,
}

pub async fn rotate_keys(
    State(st): State<GwState>,
    caller: Authed,
    body: Option<AdminJson<Rotate>>,
) -> Result<impl IntoResponse> {
    caller.require("SigningKey", Interaction::Create)?;
    let publish = body.and_then(|b| b.0.publish_secs).unwrap_or(60);
    if !(0..=86_400).contains(&publish) {
        return Err(GatewayError::Invalid("publish_secs must be between 0 and 86400".into()));
    }
    let kid = st.gw.keys.rotate(st.gw.now(), publish).await?;
    st.gw.audit_security(caller.tenant(), caller.actor(), SecurityKind::KeyRotated, true, Some(&kid), None).await;
    st.gw.audit_server_wide(caller.tenant(), caller.actor(), SecurityKind::KeyRotated, &kid).await;
    Ok((StatusCode::CREATED, Json(json!({"kid": kid, "signs_from": st.gw.now() + publish.max(0)}))))
}

pub async fn list_keys(State(st): State<GwState>, caller: Authed) -> Result<Json<Value>> {
    caller.require("SigningKey", Interaction::Read)?;
    let keys = st.gw.keys.reload().await?;
    let list: Vec<Value> = keys
        .iter()
        .map(
            |k| json!({"kid": k.kid, "created_at": k.created_at, "retire_at": k.retire_at, "expires_at": k.expires_at}),
        )
        .collect();
    Ok(Json(json!({"keys": list})))
}

pub async fn get_client(State(st): State<GwState>, caller: Authed, Path(id): Path<String>) -> Result<Json<Value>> {
    caller.require("Client", Interaction::Read)?;
    let client =
        st.gw.client(&id).await?.filter(|c| &c.tenant == caller.tenant()).ok_or(GatewayError::NotFound("client"))?;
    Ok(Json(client_view(&client)))
}

pub async fn deactivate_client(
    State(st): State<GwState>,
    caller: Authed,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    caller.require("Client", Interaction::Update)?;
    // Another tenant's client answers 404, like any resource of another tenant.
    st.gw.client(&id).await?.filter(|c| &c.tenant == caller.tenant()).ok_or(GatewayError::NotFound("client"))?;
    let tx = st.gw.store.system_write().await?;
    tx.set_client_active(&id, false).await?;
    tx.commit().await?;
    st.gw.audit_security(caller.tenant(), caller.actor(), SecurityKind::ClientDeactivated, true, Some(&id), None).await;
    let client = st.gw.client(&id).await?.ok_or(GatewayError::NotFound("client"))?;
    Ok(Json(client_view(&client)))
}

pub async fn get_tenant(State(st): State<GwState>, caller: Authed, Path(id): Path<String>) -> Result<Json<Value>> {
    caller.require("Tenant", Interaction::Read)?;
    let id = TenantId::parse(&id).map_err(|_| GatewayError::NotFound("tenant"))?;
    let tx = st.gw.store.system_read().await?;
    let t = tx.tenant(&id).await?.ok_or(GatewayError::NotFound("tenant"))?;
    tx.commit().await?;
    Ok(Json(json!({"id": t.id.as_str(), "name": t.name, "active": t.active, "created_at": t.created_at})))
}

/// Deactivates a tenant: its users can no longer log in and its tokens are refused.
pub async fn deactivate_tenant(
    State(st): State<GwState>,
    caller: Authed,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    caller.require("Tenant", Interaction::Update)?;
    let id = TenantId::parse(&id).map_err(|_| GatewayError::NotFound("tenant"))?;
    if &id == caller.tenant() || id == TenantId::system() {
        return Err(GatewayError::Forbidden(
            "neither the caller's own tenant nor the system tenant can be deactivated".into(),
        ));
    }
    let tx = st.gw.store.system_write().await?;
    if !tx.set_tenant_active(&id, false).await? {
        return Err(GatewayError::NotFound("tenant"));
    }
    tx.commit().await?;
    st.gw.forget_tenant(&id);
    st.gw
        .audit_security(caller.tenant(), caller.actor(), SecurityKind::TenantDeactivated, true, Some(id.as_str()), None)
        .await;
    st.gw.audit_server_wide(caller.tenant(), caller.actor(), SecurityKind::TenantDeactivated, id.as_str()).await;
    // The deactivated tenant's own trail says so too.
    st.gw.audit_security(&id, caller.actor(), SecurityKind::TenantDeactivated, true, Some(id.as_str()), None).await;
    Ok(Json(json!({"id": id.as_str(), "active": false})))
}

/// The account's live sessions (refresh-token families): when they began and expire, from which
/// client, with which scope. Never the tokens.
pub async fn sessions(State(st): State<GwState>, caller: Authed, Path(id): Path<String>) -> Result<Json<Value>> {
    caller.require("Account", Interaction::Read)?;
    let tenant = caller.tenant();
    st.gw.user(tenant, &id).await?.ok_or(GatewayError::NotFound("account"))?;
    let families = st.gw.kv.families_of(tenant.as_str(), &id, st.gw.now()).await?;
    let list: Vec<Value> = families
        .iter()
        .map(|f| json!({"session": f.id, "client_id": f.client_id, "scope": f.scope, "created_at": f.created_at, "expires_at": f.expires_at}))
        .collect();
    Ok(Json(json!({"sessions": list})))
}

/// Ends every session of the account (refresh families and access tokens) without deactivating it.
pub async fn end_sessions(State(st): State<GwState>, caller: Authed, Path(id): Path<String>) -> Result<Json<Value>> {
    caller.require("Account", Interaction::Update)?;
    let tenant = caller.tenant();
    st.gw.user(tenant, &id).await?.ok_or(GatewayError::NotFound("account"))?;
    let now = st.gw.now();
    let ended = st.gw.end_sessions(tenant, &id, now).await?;
    st.gw
        .audit_security(
            tenant,
            caller.actor(),
            SecurityKind::Logout,
            true,
            Some("sessions ended by an administrator"),
            Some(&id),
        )
        .await;
    Ok(Json(json!({"ended": ended})))
}
