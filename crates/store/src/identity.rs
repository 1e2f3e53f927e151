//! Identity state of the gateway: tenants, users and their second factors, OAuth clients and
//! token-signing keys.
//!
//! Users and recovery codes are tenant data: they are read and written through the tenant's
//! [`Tx`], like resources, and row-level security confines them on PostgreSQL. Tenants, clients
//! and signing keys are system data, needed before a tenant is known (a client id arrives before
//! any token) or across tenants; they are reached through a [`SysTx`] only.
//!
//! Times are unix seconds chosen by the caller; nothing here reads the clock.

use crate::error::StoreError;
use crate::repo::{Store, Tx};
use ehr_core::TenantId;
use sea_orm::{ConnectionTrait, DatabaseTransaction, DbBackend, QueryResult, Statement, Value};
use serde_json::Value as Json;
use std::fmt;

/// A tenant (one hospital or hospital group) known to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRecord {
    pub id: TenantId,
    pub name: String,
    pub active: bool,
    /// Unix seconds.
    pub created_at: i64,
}

/// A user to create in the transaction's tenant.
#[derive(Clone, PartialEq, Eq)]
pub struct NewUser {
    pub id: String,
    pub username: String,
    pub display_name: String,
    /// A PHC string (argon2); never the password.
    pub password_hash: String,
    pub roles: Vec<String>,
    /// The user's FHIR resource (`Practitioner/123`, SMART `fhirUser`), when linked.
    pub fhir_user: Option<String>,
    /// Unix seconds; becomes `created_at` and `updated_at`.
    pub now: i64,
}

/// A user of one tenant.
#[derive(Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    pub display_name: String,
    pub password_hash: String,
    pub roles: Vec<String>,
    pub active: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_login_at: Option<i64>,
    /// The TOTP shared secret (base32), once enrolment started.
    pub mfa_secret: Option<String>,
    /// Whether the user proved possession of the secret with a first code.
    pub mfa_confirmed: bool,
    /// The last TOTP time step accepted; a code of this step or an earlier one is refused.
    pub mfa_last_step: Option<i64>,
    /// The user's FHIR resource (`Practitioner/123`), when linked.
    pub fhir_user: Option<String>,
}

/// An OAuth client registered for one tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientRecord {
    pub client_id: String,
    pub tenant: TenantId,
    pub name: String,
    /// `public` (browser/PKCE) or `backend` (private_key_jwt).
    pub kind: String,
    pub redirect_uris: Vec<String>,
    /// The client's public JWK Set, for `backend` clients.
    pub jwks: Option<Json>,
    /// The scopes the client may request, space-separated.
    pub scope: String,
    pub active: bool,
    pub created_at: i64,
}

/// A token-signing key pair.
#[derive(Clone, PartialEq)]
pub struct KeyRecord {
    pub kid: String,
    /// PKCS#8 PEM of the private key.
    pub private_pem: String,
    /// The public key as a JWK, published in the JWKS.
    pub public_jwk: Json,
    pub created_at: i64,
    /// From then on the key no longer signs; it stays published for verification.
    pub retire_at: i64,
    /// From then on the key is no longer published.
    pub expires_at: i64,
}

// Secrets never reach logs through `{:?}`: the derived Debug would print them.
const REDACTED: &str = "<redacted>";

impl fmt::Debug for NewUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewUser")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("display_name", &self.display_name)
            .field("password_hash", &REDACTED)
            .field("roles", &self.roles)
            .field("now", &self.now)
            .finish()
    }
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("display_name", &self.display_name)
            .field("password_hash", &REDACTED)
            .field("roles", &self.roles)
            .field("active", &self.active)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("last_login_at", &self.last_login_at)
            .field("mfa_secret", &self.mfa_secret.as_ref().map(|_| REDACTED))
            .field("mfa_confirmed", &self.mfa_confirmed)
            .field("mfa_last_step", &self.mfa_last_step)
            .field("fhir_user", &self.fhir_user)
            .finish()
    }
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("private_pem", &REDACTED)
            .field("public_jwk", &self.public_jwk)
            .field("created_at", &self.created_at)
            .field("retire_at", &self.retire_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A unit of work on the system tables (tenants, OAuth clients, signing keys). Dropping it
/// without [`SysTx::commit`] rolls back.
///
/// On PostgreSQL its tenant setting is the empty string, which no tenant row carries: a system
/// transaction that strays into a tenant table sees nothing instead of some tenant's rows.
pub struct SysTx {
    txn: DatabaseTransaction,
    backend: DbBackend,
}

impl Store {
    /// Starts a read-write transaction on the system tables.
    pub async fn system_write(&self) -> Result<SysTx, StoreError> {
        Ok(SysTx { txn: self.begin_raw(true, "").await?, backend: self.backend() })
    }

    /// Starts a read-only unit of work on the system tables.
    pub async fn system_read(&self) -> Result<SysTx, StoreError> {
        Ok(SysTx { txn: self.begin_raw(false, "").await?, backend: self.backend() })
    }
}

const TENANT_COLUMNS: &str = "id, name, active, created_at";
const CLIENT_COLUMNS: &str = "client_id, tenant_id, name, kind, redirect_uris, jwks, scope, active, created_at";
const KEY_COLUMNS: &str = "kid, private_pem, public_jwk, created_at, retire_at, expires_at";
const USER_COLUMNS: &str = "id, username, display_name, password_hash, roles, active, created_at, updated_at, \
                            last_login_at, mfa_secret, mfa_confirmed, mfa_last_step, fhir_user";

impl SysTx {
    /// Commits the unit of work.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.txn.commit().await?;
        Ok(())
    }

    pub(crate) async fn query(&self, sql: &str, values: Vec<Value>) -> Result<Vec<QueryResult>, StoreError> {
        Ok(self.txn.query_all_raw(Statement::from_sql_and_values(self.backend, sql, values)).await?)
    }

    pub(crate) async fn exec(&self, sql: &str, values: Vec<Value>) -> Result<u64, StoreError> {
        Ok(self.txn.execute_raw(Statement::from_sql_and_values(self.backend, sql, values)).await?.rows_affected())
    }

    /// Registers a tenant; an existing id is [`StoreError::AlreadyExists`].
    pub async fn create_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        // ON CONFLICT DO NOTHING: a duplicate shows in the row count instead of aborting the
        // whole PostgreSQL transaction.
        let inserted = self
            .exec(
                "INSERT INTO tenants (id, name, active, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                vec![
                    tenant.id.as_str().into(),
                    tenant.name.as_str().into(),
                    i32::from(tenant.active).into(),
                    tenant.created_at.into(),
                ],
            )
            .await?;
        if inserted == 0 { Err(StoreError::AlreadyExists) } else { Ok(()) }
    }

    /// One tenant.
    pub async fn tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        let rows = self
            .query(&format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"), vec![id.as_str().into()])
            .await?;
        rows.first().map(row_to_tenant).transpose()
    }

    /// Every tenant, by id.
    pub async fn tenants(&self) -> Result<Vec<TenantRecord>, StoreError> {
        let rows = self.query(&format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY id"), Vec::new()).await?;
        rows.iter().map(row_to_tenant).collect()
    }

    /// Activates or deactivates a tenant; false when there is no such tenant.
    pub async fn set_tenant_active(&self, id: &TenantId, active: bool) -> Result<bool, StoreError> {
        let changed = self
            .exec("UPDATE tenants SET active = $2 WHERE id = $1", vec![id.as_str().into(), i32::from(active).into()])
            .await?;
        Ok(changed == 1)
    }

    /// Registers an OAuth client; an existing client id is [`StoreError::AlreadyExists`].
    pub async fn create_client(&self, client: &ClientRecord) -> Result<(), StoreError> {
        let redirect_uris = to_json_text(&client.redirect_uris)?;
        let jwks = client.jwks.as_ref().map(to_json_text).transpose()?;
        let inserted = self
            .exec(
                &format!(
                    "INSERT INTO oauth_clients ({CLIENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT DO NOTHING"
                ),
                vec![
                    client.client_id.as_str().into(),
                    client.tenant.as_str().into(),
                    client.name.as_str().into(),
                    client.kind.as_str().into(),
                    redirect_uris.into(),
                    jwks.into(),
                    client.scope.as_str().into(),
                    i32::from(client.active).into(),
                    client.created_at.into(),
                ],
            )
            .await?;
        if inserted == 0 { Err(StoreError::AlreadyExists) } else { Ok(()) }
    }

    /// One OAuth client, whatever its tenant (the client id is how the tenant is found).
    pub async fn client(&self, client_id: &str) -> Result<Option<ClientRecord>, StoreError> {
        let rows = self
            .query(&format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE client_id = $1"), vec![client_id.into()])
            .await?;
        rows.first().map(row_to_client).transpose()
    }

    /// The OAuth clients of one tenant, by client id.
    pub async fn clients_of(&self, tenant: &TenantId) -> Result<Vec<ClientRecord>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE tenant_id = $1 ORDER BY client_id"),
                vec![tenant.as_str().into()],
            )
            .await?;
        rows.iter().map(row_to_client).collect()
    }

    /// Activates or deactivates a client; false when there is no such client.
    pub async fn set_client_active(&self, client_id: &str, active: bool) -> Result<bool, StoreError> {
        let changed = self
            .exec(
                "UPDATE oauth_clients SET active = $2 WHERE client_id = $1",
                vec![client_id.into(), i32::from(active).into()],
            )
            .await?;
        Ok(changed == 1)
    }

    /// Stores a new signing key; an existing kid is [`StoreError::AlreadyExists`].
    pub async fn insert_signing_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let inserted = self
            .exec(
                &format!(
                    "INSERT INTO signing_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING"
                ),
                vec![
                    key.kid.as_str().into(),
                    key.private_pem.as_str().into(),
                    to_json_text(&key.public_jwk)?.into(),
                    key.created_at.into(),
                    key.retire_at.into(),
                    key.expires_at.into(),
                ],
            )
            .await?;
        if inserted == 0 { Err(StoreError::AlreadyExists) } else { Ok(()) }
    }

    /// Every signing key, oldest first.
    pub async fn signing_keys(&self) -> Result<Vec<KeyRecord>, StoreError> {
        let rows =
            self.query(&format!("SELECT {KEY_COLUMNS} FROM signing_keys ORDER BY created_at, kid"), Vec::new()).await?;
        rows.iter().map(row_to_key).collect()
    }

    /// Sets when a key stops signing and stops being published; false when there is no such key.
    pub async fn retire_signing_key(&self, kid: &str, retire_at: i64, expires_at: i64) -> Result<bool, StoreError> {
        let changed = self
            .exec(
                "UPDATE signing_keys SET retire_at = $2, expires_at = $3 WHERE kid = $1",
                vec![kid.into(), retire_at.into(), expires_at.into()],
            )
            .await?;
        Ok(changed == 1)
    }
}

impl Tx {
    /// Creates a user in the transaction's tenant; a taken id or username (in this tenant) is
    /// [`StoreError::AlreadyExists`].
    pub async fn create_user(&self, user: &NewUser) -> Result<UserRecord, StoreError> {
        let roles = join_roles(&user.roles)?;
        // Both unique keys (id, username) are covered by the conflict clause.
        let inserted = self
            .exec(
                "INSERT INTO users (tenant_id, id, username, display_name, password_hash, roles, active, \
                 created_at, updated_at, mfa_confirmed, fhir_user) VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $7, 0, $8) \
                 ON CONFLICT DO NOTHING",
                vec![
                    self.tenant.as_str().into(),
                    user.id.as_str().into(),
                    user.username.as_str().into(),
                    user.display_name.as_str().into(),
                    user.password_hash.as_str().into(),
                    roles.into(),
                    user.now.into(),
                    user.fhir_user.clone().into(),
                ],
            )
            .await?;
        if inserted == 0 {
            return Err(StoreError::AlreadyExists);
        }
        Ok(UserRecord {
            id: user.id.clone(),
            username: user.username.clone(),
            display_name: user.display_name.clone(),
            password_hash: user.password_hash.clone(),
            roles: user.roles.clone(),
            active: true,
            created_at: user.now,
            updated_at: user.now,
            last_login_at: None,
            mfa_secret: None,
            mfa_confirmed: false,
            mfa_last_step: None,
            fhir_user: user.fhir_user.clone(),
        })
    }

    /// One user of the tenant, by id.
    pub async fn user(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND id = $2"),
                vec![self.tenant.as_str().into(), id.into()],
            )
            .await?;
        rows.first().map(row_to_user).transpose()
    }

    /// One user of the tenant, by username.
    pub async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND username = $2"),
                vec![self.tenant.as_str().into(), username.into()],
            )
            .await?;
        rows.first().map(row_to_user).transpose()
    }

    /// Every user of the tenant, by username.
    pub async fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 ORDER BY username"),
                vec![self.tenant.as_str().into()],
            )
            .await?;
        rows.iter().map(row_to_user).collect()
    }

    /// Replaces a user's roles; false when there is no such user.
    pub async fn set_user_roles(&self, id: &str, roles: &[String], now: i64) -> Result<bool, StoreError> {
        let roles = join_roles(roles)?;
        self.update_user(id, "roles = $3, updated_at = $4", vec![roles.into(), now.into()]).await
    }

    /// Activates or deactivates a user; false when there is no such user.
    pub async fn set_user_active(&self, id: &str, active: bool, now: i64) -> Result<bool, StoreError> {
        self.update_user(id, "active = $3, updated_at = $4", vec![i32::from(active).into(), now.into()]).await
    }

    /// Replaces a user's password hash; false when there is no such user.
    pub async fn set_password_hash(&self, id: &str, hash: &str, now: i64) -> Result<bool, StoreError> {
        self.update_user(id, "password_hash = $3, updated_at = $4", vec![hash.into(), now.into()]).await
    }

    /// Starts TOTP enrolment with `secret` (unconfirmed, no step used yet), or with `None`
    /// resets MFA: the secret and every recovery code are removed. False when there is no such
    /// user.
    pub async fn set_mfa_secret(&self, id: &str, secret: Option<&str>, now: i64) -> Result<bool, StoreError> {
        let found = self
            .update_user(
                id,
                "mfa_secret = $3, mfa_confirmed = 0, mfa_last_step = NULL, updated_at = $4",
                vec![secret.map(str::to_owned).into(), now.into()],
            )
            .await?;
        if found && secret.is_none() {
            // Codes issued for the old factor must not outlive it.
            self.exec(
                "DELETE FROM recovery_codes WHERE tenant_id = $1 AND user_id = $2",
                vec![self.tenant.as_str().into(), id.into()],
            )
            .await?;
        }
        Ok(found)
    }

    /// Completes TOTP enrolment with the step of the code the user proved possession with.
    ///
    /// The step is consumed as by [`Tx::consume_totp_step`]: false when there is no such user,
    /// no secret, or the step is not newer than the last one accepted.
    pub async fn confirm_mfa(&self, id: &str, step: i64, now: i64) -> Result<bool, StoreError> {
        let changed = self
            .exec(
                "UPDATE users SET mfa_confirmed = 1, mfa_last_step = $3, updated_at = $4 \
                 WHERE tenant_id = $1 AND id = $2 AND mfa_secret IS NOT NULL \
                 AND (mfa_last_step IS NULL OR mfa_last_step < $3)",
                vec![self.tenant.as_str().into(), id.into(), step.into(), now.into()],
            )
            .await?;
        Ok(changed == 1)
    }

    /// Accepts TOTP time step `step` for the user at most once: true iff it is newer than every
    /// step accepted before.
    ///
    /// A single compare-and-set statement, so two requests (on two gateway replicas) presenting
    /// the same code cannot both succeed: the second finds the step already recorded.
    pub async fn consume_totp_step(&self, id: &str, step: i64) -> Result<bool, StoreError> {
        let changed = self
            .exec(
                "UPDATE users SET mfa_last_step = $3 \
                 WHERE tenant_id = $1 AND id = $2 AND (mfa_last_step IS NULL OR mfa_last_step < $3)",
                vec![self.tenant.as_str().into(), id.into(), step.into()],
            )
            .await?;
        Ok(changed == 1)
    }

    /// Records a successful login; false when there is no such user.
    pub async fn record_login(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let changed = self
            .exec(
                "UPDATE users SET last_login_at = $3 WHERE tenant_id = $1 AND id = $2",
                vec![self.tenant.as_str().into(), id.into(), now.into()],
            )
            .await?;
        Ok(changed == 1)
    }

    /// Active users who have not logged in since `cutoff` (or never, and were created before
    /// it), by username: the periodic account review the MHLW guideline asks for.
    pub async fn unused_users(&self, cutoff: i64) -> Result<Vec<UserRecord>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE tenant_id = $1 AND active = 1 \
                     AND ((last_login_at IS NOT NULL AND last_login_at < $2) \
                     OR (last_login_at IS NULL AND created_at < $2)) ORDER BY username"
                ),
                vec![self.tenant.as_str().into(), cutoff.into()],
            )
            .await?;
        rows.iter().map(row_to_user).collect()
    }

    /// Replaces a user's recovery codes with `hashes` (all unused); false, and nothing stored,
    /// when there is no such user.
    pub async fn replace_recovery_codes(&self, user_id: &str, hashes: &[String]) -> Result<bool, StoreError> {
        let exists = self
            .query(
                "SELECT 1 AS one FROM users WHERE tenant_id = $1 AND id = $2",
                vec![self.tenant.as_str().into(), user_id.into()],
            )
            .await?;
        if exists.is_empty() {
            return Ok(false);
        }
        self.exec(
            "DELETE FROM recovery_codes WHERE tenant_id = $1 AND user_id = $2",
            vec![self.tenant.as_str().into(), user_id.into()],
        )
        .await?;
        // A handful of codes in practice; chunks keep any count within the bind-parameter limits.
        for chunk in hashes.chunks(500) {
            let mut values: Vec<Value> = vec![self.tenant.as_str().into(), user_id.into()];
            let mut rows = Vec::with_capacity(chunk.len());
            for hash in chunk {
                values.push(hash.as_str().into());
                rows.push(format!("($1, $2, ${})", values.len()));
            }
            // A duplicate hash in the input is one code, not an error.
            self.exec(
                &format!(
                    "INSERT INTO recovery_codes (tenant_id, user_id, code_hash) VALUES {} ON CONFLICT DO NOTHING",
                    rows.join(", ")
                ),
                values,
            )
            .await?;
        }
        Ok(true)
    }

    /// Marks an unused recovery code used: true iff it existed and was unused. A single
    /// conditional UPDATE, so a code cannot be spent twice by concurrent requests.
    pub async fn consume_recovery_code(&self, user_id: &str, hash: &str, now: i64) -> Result<bool, StoreError> {
        let changed = self
            .exec(
                "UPDATE recovery_codes SET used_at = $4 \
                 WHERE tenant_id = $1 AND user_id = $2 AND code_hash = $3 AND used_at IS NULL",
                vec![self.tenant.as_str().into(), user_id.into(), hash.into(), now.into()],
            )
            .await?;
        Ok(changed == 1)
    }

    /// The number of unused recovery codes of a user.
    pub async fn remaining_recovery_codes(&self, user_id: &str) -> Result<i64, StoreError> {
        let rows = self
            .query(
                "SELECT COUNT(*) AS n FROM recovery_codes WHERE tenant_id = $1 AND user_id = $2 AND used_at IS NULL",
                vec![self.tenant.as_str().into(), user_id.into()],
            )
            .await?;
        Ok(rows.first().map(|r| r.try_get::<i64>("", "n")).transpose()?.unwrap_or(0))
    }

    /// `UPDATE users SET {set}` for one user; `$1` is the tenant, `$2` the id, `values` follow.
    async fn update_user(&self, id: &str, set: &str, values: Vec<Value>) -> Result<bool, StoreError> {
        let mut all: Vec<Value> = vec![self.tenant.as_str().into(), id.into()];
        all.extend(values);
        let changed = self.exec(&format!("UPDATE users SET {set} WHERE tenant_id = $1 AND id = $2"), all).await?;
        Ok(changed == 1)
    }
}

/// Roles are stored space-separated, so a role name must be a non-empty run of non-space text.
fn join_roles(roles: &[String]) -> Result<String, StoreError> {
    if roles.iter().any(|r| r.is_empty() || r.chars().any(char::is_whitespace)) {
        return Err(StoreError::InvalidValue("a role name must be non-empty and contain no whitespace"));
    }
    Ok(roles.join(" "))
}

fn to_json_text<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|_| StoreError::InvalidValue("value is not serialisable as JSON"))
}

fn flag(row: &QueryResult, column: &str) -> Result<bool, StoreError> {
    Ok(row.try_get::<i32>("", column)? != 0)
}

pub(crate) fn parse_tenant(text: &str) -> Result<TenantId, StoreError> {
    TenantId::parse(text).map_err(|_| StoreError::corrupt("tenant_id"))
}

fn row_to_tenant(row: &QueryResult) -> Result<TenantRecord, StoreError> {
    Ok(TenantRecord {
        id: parse_tenant(&row.try_get::<String>("", "id")?)?,
        name: row.try_get("", "name")?,
        active: flag(row, "active")?,
        created_at: row.try_get("", "created_at")?,
    })
}

fn row_to_client(row: &QueryResult) -> Result<ClientRecord, StoreError> {
    let redirect_uris: String = row.try_get("", "redirect_uris")?;
    let jwks: Option<String> = row.try_get("", "jwks")?;
    Ok(ClientRecord {
        client_id: row.try_get("", "client_id")?,
        tenant: parse_tenant(&row.try_get::<String>("", "tenant_id")?)?,
        name: row.try_get("", "name")?,
        kind: row.try_get("", "kind")?,
        redirect_uris: serde_json::from_str(&redirect_uris).map_err(|_| StoreError::corrupt("redirect_uris"))?,
        jwks: jwks.map(|j| serde_json::from_str(&j)).transpose().map_err(|_| StoreError::corrupt("jwks"))?,
        scope: row.try_get("", "scope")?,
        active: flag(row, "active")?,
        created_at: row.try_get("", "created_at")?,
    })
}

fn row_to_key(row: &QueryResult) -> Result<KeyRecord, StoreError> {
    let public_jwk: String = row.try_get("", "public_jwk")?;
    Ok(KeyRecord {
        kid: row.try_get("", "kid")?,
        private_pem: row.try_get("", "private_pem")?,
        public_jwk: serde_json::from_str(&public_jwk).map_err(|_| StoreError::corrupt("public_jwk"))?,
        created_at: row.try_get("", "created_at")?,
        retire_at: row.try_get("", "retire_at")?,
        expires_at: row.try_get("", "expires_at")?,
    })
}

fn row_to_user(row: &QueryResult) -> Result<UserRecord, StoreError> {
    let roles: String = row.try_get("", "roles")?;
    Ok(UserRecord {
        id: row.try_get("", "id")?,
        username: row.try_get("", "username")?,
        display_name: row.try_get("", "display_name")?,
        password_hash: row.try_get("", "password_hash")?,
        roles: roles.split_whitespace().map(str::to_owned).collect(),
        active: flag(row, "active")?,
        created_at: row.try_get("", "created_at")?,
        updated_at: row.try_get("", "updated_at")?,
        last_login_at: row.try_get("", "last_login_at")?,
        mfa_secret: row.try_get("", "mfa_secret")?,
        mfa_confirmed: flag(row, "mfa_confirmed")?,
        mfa_last_step: row.try_get("", "mfa_last_step")?,
        fhir_user: row.try_get("", "fhir_user")?,
    })
}
