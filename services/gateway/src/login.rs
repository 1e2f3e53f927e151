//! Login: OAuth 2.0 authorization code with PKCE (SMART App Launch), password then TOTP in
//! between, and the token endpoint's grants (authorization code, refresh token with rotation,
//! client credentials with `private_key_jwt` for SMART Backend Services).
//!
//! Everything between requests lives in the security state (Redis, or in-process in `ehr serve`)
//! with expiry times computed from the injected clock: the authorization request, the pending
//! login, the one-time code, the refresh-token families, lockout counters and replay guards.

use crate::Gateway;
use crate::audit::{Actor, SecurityKind, security_event, user_system};
use crate::error::GatewayError;
use crate::seal::totp_owner;
use ehr_auth::{
    AccessMatrix, Claims, RecoveryCodes, TotpCode, TotpSecret, hash_recovery_code, narrow_scopes,
    verify_client_assertion, verify_password, verify_pkce_s256,
};
use ehr_core::{TenantContext, TenantId};
use ehr_kv::{Attempt, AttemptPolicy, Family, Rotation};
use ehr_store::UserRecord;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Parameters of `GET /auth/authorize` (RFC 6749 §4.1.1, RFC 7636 §4.3, SMART App Launch).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct AuthorizeParams {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub aud: Option<String>,
}

/// An authorization request accepted by `/auth/authorize`, waiting for the user to log in.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthRequest {
    pub client_id: String,
    pub tenant: String,
    pub redirect_uri: String,
    pub scope: String,
    pub state: Option<String>,
    pub code_challenge: String,
}

/// A login whose password was right, waiting for the second factor.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingLogin {
    request: String,
    tenant: String,
    user_id: String,
    username: String,
    /// The TOTP secret is new and unconfirmed: this login enrols it.
    enrol: bool,
    /// When the password was accepted (unix seconds).
    created_at: i64,
}

/// What an authorization code stands for.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CodeGrant {
    tenant: String,
    user_id: String,
    client_id: String,
    redirect_uri: String,
    scope: String,
    roles: Vec<String>,
    fhir_user: Option<String>,
    code_challenge: String,
    /// When the code was issued (unix seconds).
    created_at: i64,
}

/// The next step after a correct password.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "next", rename_all = "kebab-case")]
pub enum PasswordStep {
    /// Enter the code of the enrolled authenticator (or a recovery code).
    Mfa { login: String },
    /// First login: scan this secret into an authenticator and confirm with its first code.
    /// TOTP is mandatory for every human account; there is no way around this step.
    Enrol { login: String, otpauth_uri: String, secret: String, qr_svg: String },
}

/// The end of a successful login: where to send the browser.
#[derive(Debug, Clone, Serialize)]
pub struct Authorized {
    /// The client's redirect URI with `code` and `state`.
    pub redirect: String,
    /// Recovery codes, shown once, when this login enrolled the authenticator.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_codes: Option<Vec<String>>,
}

/// The token endpoint's form (RFC 6749 §4.1.3, §6; RFC 7523; SMART Backend Services).
#[derive(Debug, Clone, Deserialize, Default)]
pub struct TokenForm {
    pub grant_type: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub client_id: Option<String>,
    pub code_verifier: Option<String>,
    pub refresh_token: Option<String>,
    pub scope: Option<String>,
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<String>,
}

/// A successful token response (RFC 6749 §5.1, with SMART's `tenant`-free fields).
#[derive(Debug, Clone, Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn random_token(bytes: usize) -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf)
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

// Usernames are case-sensitive, and so are their lockout counters.
fn attempt_key(tenant: &TenantId, username: &str) -> String {
    format!("{}:{username}", tenant.as_str())
}

/// Longest username looked up or audited: longer input is not a username of this server, and
/// audit events and lockout keys must stay small whatever an anonymous caller sends.
const MAX_USERNAME_CHARS: usize = 64;

impl Gateway {
    /// `GET /auth/authorize`: checks the request and keeps it while the user logs in. Errors
    /// here are shown to the user, never redirected: the redirect URI is not trusted until it
    /// matched the client's registration exactly (RFC 6749 §4.1.2.1).
    pub async fn authorize(
        &self,
        p: AuthorizeParams,
        fhir_base: Option<&str>,
    ) -> Result<(String, AuthRequest), GatewayError> {
        let bad = GatewayError::BadAuthorizationRequest;
        if p.response_type.as_deref() != Some("code") {
            return Err(bad("response_type must be code"));
        }
        let client_id = p.client_id.ok_or(bad("client_id is required"))?;
        let client = self.client(&client_id).await?.ok_or(bad("unknown client_id"))?;
        if !client.active || self.tenant_active(&client.tenant).await? != Some(true) {
            return Err(bad("the client or its tenant is deactivated"));
        }
        let redirect_uri = p.redirect_uri.ok_or(bad("redirect_uri is required"))?;
        if !client.redirect_uris.contains(&redirect_uri) {
            return Err(bad("redirect_uri is not registered for this client"));
        }
        // PKCE is mandatory (OAuth 2.0 Security BCP, SMART App Launch 2.0), and only S256.
        if p.code_challenge_method.as_deref() != Some("S256") {
            return Err(bad("code_challenge_method must be S256"));
        }
        let code_challenge =
            p.code_challenge.filter(|c| c.len() == 43).ok_or(bad("a S256 code_challenge is required"))?;
        if p.state.as_ref().is_some_and(|s| s.len() > 512) || p.scope.as_ref().is_some_and(|s| s.len() > 4096) {
            return Err(bad("state or scope is too long"));
        }
        // SMART: `aud` names the FHIR server the app wants a token for; a token meant for another
        // server must not be issued here.
        if let (Some(aud), Some(base)) = (&p.aud, fhir_base)
            && aud.trim_end_matches('/') != base.trim_end_matches('/')
        {
            return Err(bad("aud is not this server's FHIR base URL"));
        }
        let request = AuthRequest {
            client_id,
            tenant: client.tenant.as_str().to_owned(),
            redirect_uri,
            // The client's registered scope bounds what any of its users can get, including
            // whether it may hold refresh tokens at all.
            scope: narrow_scopes(&client.scope, &p.scope.unwrap_or_default())
                .split_whitespace()
                .filter(|s| {
                    !matches!(*s, "offline_access" | "online_access")
                        || client.scope.split_whitespace().any(|c| c == *s)
                })
                .collect::<Vec<_>>()
                .join(" "),
            state: p.state,
            code_challenge,
        };
        let id = random_token(18);
        let now = self.now();
        let value = serde_json::to_string(&request).map_err(|_| GatewayError::Upstream)?;
        self.kv.put(&format!("authreq:{id}"), &value, now + self.settings.login_secs, now).await?;
        Ok((id, request))
    }

    async fn auth_request(&self, id: &str) -> Result<AuthRequest, GatewayError> {
        let raw = self.kv.get(&format!("authreq:{id}"), self.now()).await?.ok_or(GatewayError::LoginExpired)?;
        serde_json::from_str(&raw).map_err(|_| GatewayError::LoginExpired)
    }

    /// The first factor. A wrong password, an unknown user and an inactive account look the
    /// same from outside; all three count towards the lockout of that username.
    pub async fn password(
        &self,
        request_id: &str,
        username: &str,
        password: &str,
        actor: &Actor,
    ) -> Result<PasswordStep, GatewayError> {
        let req = self.auth_request(request_id).await?;
        let tenant = TenantId::parse(&req.tenant).map_err(|_| GatewayError::LoginExpired)?;
        if username.chars().count() > MAX_USERNAME_CHARS || password.len() > ehr_auth::MAX_PASSWORD_BYTES {
            return Err(GatewayError::InvalidCredentials);
        }
        let mut actor = actor.clone();
        actor.name = Some(username.to_owned());
        actor.client_id = Some(req.client_id.clone());
        let count = self.begin_attempt(&tenant, username, &actor).await?;
        let user = self.user_by_username(&tenant, username).await?;
        let ok = match &user {
            Some(u) => verify_password(&u.password_hash, password) && u.active,
            None => {
                // Spend the time of a real verification: response time must not reveal whether
                // the username exists.
                self.settings.password.dummy_verify(password);
                false
            }
        };
        let user = match (ok, user) {
            (true, Some(u)) => u,
            (_, u) => {
                actor.subject = u.map(|u| u.id);
                self.failed(&tenant, username, &actor, "invalid username or password", count).await?;
                return Err(GatewayError::InvalidCredentials);
            }
        };
        let now = self.now();
        // A correct password lifts the lock this attempt may have set for itself (beyond the
        // threshold), but keeps the count: guesses of the code still add to it, and the
        // completed login clears it.
        self.kv.clear_lock(&attempt_key(&tenant, username)).await?;
        if self.settings.password.needs_rehash(&user.password_hash) {
            // The policy was raised since this password was set: upgrade the hash now, while
            // the password is at hand (it is never stored).
            let hash = self.settings.password.hash(password)?;
            let tx = self.store.write(&ctx(&tenant)).await?;
            tx.set_password_hash(&user.id, &hash, now).await?;
            tx.commit().await?;
        }
        let login = random_token(18);
        let enrol = !user.mfa_confirmed;
        let pending = PendingLogin {
            request: request_id.to_owned(),
            tenant: tenant.as_str().to_owned(),
            user_id: user.id.clone(),
            username: user.username.clone(),
            enrol,
            created_at: now,
        };
        let step = if enrol {
            // A new secret on every attempt until one is confirmed: an abandoned enrolment
            // leaves nothing usable behind.
            let secret = TotpSecret::generate();
            let tx = self.store.write(&ctx(&tenant)).await?;
            let sealed = self.sealer.seal(&secret.to_base32(), &totp_owner(&tenant, &user.id))?;
            tx.set_mfa_secret(&user.id, Some(&sealed), now).await?;
            tx.commit().await?;
            let issuer = format!("EHR {}", tenant.as_str());
            PasswordStep::Enrol {
                login: login.clone(),
                otpauth_uri: secret.otpauth_uri(&issuer, &user.username),
                qr_svg: secret.qr_svg(&issuer, &user.username)?,
                secret: secret.to_base32(),
            }
        } else {
            PasswordStep::Mfa { login: login.clone() }
        };
        let value = serde_json::to_string(&pending).map_err(|_| GatewayError::Upstream)?;
        self.kv.put(&format!("login:{login}"), &value, now + self.settings.login_secs, now).await?;
        Ok(step)
    }

    /// The second factor: a TOTP code (or, once enrolled, a single-use recovery code). On
    /// success the browser is sent back to the client with an authorization code.
    pub async fn second_factor(
        &self,
        login_id: &str,
        code: Option<&str>,
        recovery_code: Option<&str>,
        actor: &Actor,
    ) -> Result<Authorized, GatewayError> {
        let key = format!("login:{login_id}");
        let raw = self.kv.get(&key, self.now()).await?.ok_or(GatewayError::LoginExpired)?;
        let pending: PendingLogin = serde_json::from_str(&raw).map_err(|_| GatewayError::LoginExpired)?;
        let tenant = TenantId::parse(&pending.tenant).map_err(|_| GatewayError::LoginExpired)?;
        let req = self.auth_request(&pending.request).await?;
        let mut actor = actor.clone();
        actor.subject = Some(pending.user_id.clone());
        actor.name = Some(pending.username.clone());
        actor.client_id = Some(req.client_id.clone());
        let count = self.begin_attempt(&tenant, &pending.username, &actor).await?;
        let user =
            self.user(&tenant, &pending.user_id).await?.filter(|u| u.active).ok_or(GatewayError::LoginExpired)?;
        let now = self.now();
        // A login begun before the user's sessions were ended (deactivation, password or MFA
        // reset, "end sessions") cannot be finished: it was authorised by what was revoked.
        self.check_not_revoked(&tenant, &user.id, pending.created_at).await?;
        if !self.client(&req.client_id).await?.is_some_and(|c| c.active)
            || self.tenant_active(&tenant).await? != Some(true)
        {
            return Err(GatewayError::LoginExpired);
        }
        let tx = self.store.write(&ctx(&tenant)).await?;
        let mut recovery_codes = None;
        let verdict = match (code, recovery_code) {
            (_, Some(rc)) if !pending.enrol => {
                if tx.consume_recovery_code(&user.id, &hash_recovery_code(rc), now).await? {
                    Ok(())
                } else {
                    Err(GatewayError::MfaInvalid)
                }
            }
            (Some(code), _) => {
                let sealed = user.mfa_secret.as_deref().ok_or(GatewayError::LoginExpired)?;
                let secret = TotpSecret::from_base32(&self.sealer.open(sealed, &totp_owner(&tenant, &user.id))?)?;
                match TotpCode::parse(code).and_then(|c| secret.verify(&c, now, user.mfa_last_step)) {
                    // The compare-and-set in the database makes the code single-use even when
                    // two gateway replicas see it at the same moment.
                    Ok(step) if pending.enrol => {
                        // Single-use like every code: a concurrent confirmation with the same
                        // code loses the compare-and-set.
                        if tx.confirm_mfa(&user.id, step, now).await? {
                            let (codes, hashes) = RecoveryCodes::generate(10);
                            tx.replace_recovery_codes(&user.id, &hashes).await?;
                            recovery_codes = Some(codes);
                            Ok(())
                        } else {
                            Err(GatewayError::MfaReplayed)
                        }
                    }
                    Ok(step) if tx.consume_totp_step(&user.id, step).await? => Ok(()),
                    Ok(_) | Err(ehr_auth::AuthError::TotpReplayed) => Err(GatewayError::MfaReplayed),
                    Err(_) => Err(GatewayError::MfaInvalid),
                }
            }
            _ => Err(GatewayError::Invalid("a one-time code or a recovery code is required".into())),
        };
        if let Err(e) = verdict {
            drop(tx);
            let why =
                if matches!(e, GatewayError::MfaReplayed) { "replayed one-time code" } else { "invalid one-time code" };
            self.failed(&tenant, &pending.username, &actor, why, count).await?;
            return Err(e);
        }
        tx.record_login(&user.id, now).await?;
        tx.commit().await?;
        self.kv.delete(&key).await?;
        self.kv.delete(&format!("authreq:{}", pending.request)).await?;
        self.unlock(&tenant, &pending.username).await?;
        if recovery_codes.is_some() {
            self.audit_security(&tenant, &actor, SecurityKind::MfaEnrolled, true, None, Some(&user.id)).await;
        }
        self.audit_security(&tenant, &actor, SecurityKind::Login, true, None, Some(&user.id)).await;

        let granted = AccessMatrix::get().scopes_for(&user.roles);
        let scope = narrow_scopes(&granted, &req.scope);
        let code = random_token(32);
        let grant = CodeGrant {
            tenant: tenant.as_str().to_owned(),
            user_id: user.id.clone(),
            client_id: req.client_id.clone(),
            redirect_uri: req.redirect_uri.clone(),
            scope,
            roles: user.roles.clone(),
            fhir_user: user.fhir_user.clone(),
            code_challenge: req.code_challenge.clone(),
            created_at: now,
        };
        let value = serde_json::to_string(&grant).map_err(|_| GatewayError::Upstream)?;
        self.kv.put(&format!("code:{}", sha256_hex(&code)), &value, now + self.settings.code_secs, now).await?;
        let mut redirect = req.redirect_uri.clone();
        redirect.push(if redirect.contains('?') { '&' } else { '?' });
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("code", &code);
        if let Some(state) = &req.state {
            query.append_pair("state", state);
        }
        redirect.push_str(&query.finish());
        Ok(Authorized { redirect, recovery_codes })
    }

    /// Counts this attempt (a password or a code) before it is checked, atomically with the
    /// lock check: concurrent guesses cannot race past the threshold (`begin_attempt`).
    async fn begin_attempt(&self, tenant: &TenantId, username: &str, actor: &Actor) -> Result<u32, GatewayError> {
        let now = self.now();
        let p = &self.settings.lockout;
        let policy = AttemptPolicy {
            window_secs: p.window_secs,
            threshold: p.threshold,
            base_secs: p.base_secs,
            max_secs: p.max_secs,
        };
        match self.kv.begin_attempt(&attempt_key(tenant, username), &policy, now).await? {
            Attempt::Counted { count } => Ok(count),
            Attempt::Locked { until } => {
                self.audit_security(tenant, actor, SecurityKind::Login, false, Some("account locked"), None).await;
                Err(GatewayError::Locked { retry_after: until - now })
            }
        }
    }

    /// Audits a failed attempt; the attempt at the threshold locks the username (attempts beyond
    /// it locked themselves, with a longer back-off, when they were counted).
    async fn failed(
        &self,
        tenant: &TenantId,
        username: &str,
        actor: &Actor,
        why: &str,
        count: u32,
    ) -> Result<(), GatewayError> {
        let now = self.now();
        let policy = &self.settings.lockout;
        let target = actor.subject.clone();
        self.audit_security(tenant, actor, SecurityKind::Login, false, Some(why), target.as_deref()).await;
        if let Some(secs) = policy.lock_secs(count) {
            if count == policy.threshold {
                self.kv.set_lock(&attempt_key(tenant, username), now + secs).await?;
            }
            let desc = format!("locked for {secs} s after {count} failures");
            self.audit_security(tenant, actor, SecurityKind::Lockout, true, Some(&desc), target.as_deref()).await;
        }
        Ok(())
    }

    /// Lifts a lockout and forgets the failures (a successful login, or an administrator).
    pub async fn unlock(&self, tenant: &TenantId, username: &str) -> Result<(), GatewayError> {
        let key = attempt_key(tenant, username);
        self.kv.clear_lock(&key).await?;
        self.kv.clear_failures(&key).await?;
        Ok(())
    }

    /// Fails when the user's tokens were revoked after `since` (sessions ended, deactivation,
    /// password or MFA reset).
    async fn check_not_revoked(&self, tenant: &TenantId, user_id: &str, since: i64) -> Result<(), GatewayError> {
        if let Some(before) = self.kv.tokens_revoked_before(tenant.as_str(), user_id, self.now()).await?
            && since < before
        {
            return Err(GatewayError::LoginExpired);
        }
        Ok(())
    }

    /// `POST /auth/token`.
    pub async fn token(
        &self,
        form: TokenForm,
        token_endpoint: &str,
        actor: &Actor,
    ) -> Result<TokenResponse, GatewayError> {
        match form.grant_type.as_deref() {
            Some("authorization_code") => self.redeem_code(form, actor).await,
            Some("refresh_token") => self.refresh(form, actor).await,
            Some("client_credentials") => self.client_credentials(form, token_endpoint, actor).await,
            Some(_) => Err(GatewayError::oauth(
                "unsupported_grant_type",
                "supported: authorization_code, refresh_token, client_credentials",
            )),
            None => Err(GatewayError::oauth("invalid_request", "grant_type is required")),
        }
    }

    async fn redeem_code(&self, form: TokenForm, actor: &Actor) -> Result<TokenResponse, GatewayError> {
        let invalid = |d: &str| GatewayError::oauth("invalid_grant", d);
        let code = form.code.ok_or_else(|| GatewayError::oauth("invalid_request", "code is required"))?;
        let now = self.now();
        // Taken, not read: a code is redeemable once, even by two concurrent requests.
        let raw = self
            .kv
            .take(&format!("code:{}", sha256_hex(&code)), now)
            .await?
            .ok_or_else(|| invalid("unknown, used or expired code"))?;
        let grant: CodeGrant = serde_json::from_str(&raw).map_err(|_| invalid("unknown code"))?;
        if form.client_id.as_deref() != Some(grant.client_id.as_str()) {
            return Err(invalid("the code was issued to another client"));
        }
        if form.redirect_uri.as_deref() != Some(grant.redirect_uri.as_str()) {
            return Err(invalid("redirect_uri differs from the authorization request"));
        }
        let verifier =
            form.code_verifier.ok_or_else(|| GatewayError::oauth("invalid_request", "code_verifier is required"))?;
        if !verify_pkce_s256(&verifier, &grant.code_challenge) {
            return Err(invalid("code_verifier does not match the code_challenge"));
        }
        let tenant = TenantId::parse(&grant.tenant).map_err(|_| invalid("unknown code"))?;
        // Everything the code stands for must still hold: user, client and tenant active, and no
        // revocation of the user's sessions since the code was issued.
        let user_ok = self.user(&tenant, &grant.user_id).await?.is_some_and(|u| u.active);
        let client_ok = self.client(&grant.client_id).await?.is_some_and(|c| c.active);
        if !user_ok || !client_ok || self.tenant_active(&tenant).await? != Some(true) {
            return Err(invalid("the account, client or tenant is no longer active"));
        }
        self.check_not_revoked(&tenant, &grant.user_id, grant.created_at)
            .await
            .map_err(|_| invalid("the session was ended"))?;
        let access_only = !grant.scope.split_whitespace().any(|s| s == "offline_access" || s == "online_access");
        let family = Family {
            id: random_token(16),
            tenant: grant.tenant.clone(),
            subject: grant.user_id.clone(),
            client_id: grant.client_id.clone(),
            scope: grant.scope.clone(),
            roles: grant.roles.clone(),
            created_at: now,
            expires_at: now + self.settings.refresh_token_secs,
        };
        // SMART: a refresh token for `offline_access` or `online_access` only. Without one the
        // family still exists (its id is the session of the access token, for logout).
        let refresh = format!("{}.{}", family.id, random_token(32));
        self.kv.create_family(&family, &sha256_hex(&refresh), now).await?;
        let access = self
            .access_token(
                &tenant,
                &grant.user_id,
                &grant.scope,
                &grant.roles,
                &grant.client_id,
                Some(&family.id),
                grant.fhir_user.clone(),
            )
            .await?;
        let mut actor = actor.clone();
        actor.subject = Some(grant.user_id.clone());
        actor.client_id = Some(grant.client_id.clone());
        self.audit_security(
            &tenant,
            &actor,
            SecurityKind::TokenIssued,
            true,
            Some("authorization_code"),
            Some(&grant.user_id),
        )
        .await;
        Ok(TokenResponse {
            access_token: access,
            token_type: "Bearer",
            expires_in: self.settings.access_secs(),
            scope: grant.scope,
            refresh_token: (!access_only).then_some(refresh),
        })
    }

    async fn refresh(&self, form: TokenForm, actor: &Actor) -> Result<TokenResponse, GatewayError> {
        let invalid = || GatewayError::oauth("invalid_grant", "invalid refresh token");
        let token =
            form.refresh_token.ok_or_else(|| GatewayError::oauth("invalid_request", "refresh_token is required"))?;
        let (family_id, _) = token.split_once('.').ok_or_else(invalid)?;
        let now = self.now();
        let next = format!("{family_id}.{}", random_token(32));
        match self.kv.rotate(family_id, &sha256_hex(&token), &sha256_hex(&next), now).await? {
            Rotation::Rotated(family) => {
                if form.client_id.as_deref().is_some_and(|c| c != family.client_id) {
                    return Err(invalid());
                }
                let tenant = TenantId::parse(&family.tenant).map_err(|_| invalid())?;
                // Deactivation and role changes take effect at the next refresh at the latest
                // (and at once for deactivation, which also revokes the family); so does the
                // deactivation of the client or the tenant.
                let client_ok = self.client(&family.client_id).await?.is_some_and(|c| c.active);
                let tenant_ok = self.tenant_active(&tenant).await? == Some(true);
                let user = self.user(&tenant, &family.subject).await?.filter(|u| u.active && client_ok && tenant_ok);
                let Some(user) = user else {
                    self.kv.revoke_family(&family.id).await?;
                    return Err(invalid());
                };
                let granted = AccessMatrix::get().scopes_for(&user.roles);
                let scope = narrow_scopes(&granted, &family.scope);
                let access = self
                    .access_token(
                        &tenant,
                        &user.id,
                        &scope,
                        &user.roles,
                        &family.client_id,
                        Some(&family.id),
                        user.fhir_user.clone(),
                    )
                    .await?;
                Ok(TokenResponse {
                    access_token: access,
                    token_type: "Bearer",
                    expires_in: self.settings.access_secs(),
                    scope,
                    refresh_token: Some(next),
                })
            }
            Rotation::Reused(family) => {
                // OAuth 2.0 Security BCP §4.14.2: a refresh token used twice means one copy is in
                // the wrong hands; the whole family dies, and so do its access tokens.
                self.kv
                    .revoke_jti(&ehr_kv::session_revocation_key(&family.id), now + self.settings.access_secs() + 60)
                    .await?;
                if let Ok(tenant) = TenantId::parse(&family.tenant) {
                    let mut actor = actor.clone();
                    actor.subject = Some(family.subject.clone());
                    actor.client_id = Some(family.client_id.clone());
                    self.audit_security(
                        &tenant,
                        &actor,
                        SecurityKind::RefreshTokenReuse,
                        false,
                        Some("refresh token reused: session revoked"),
                        Some(&family.subject),
                    )
                    .await;
                }
                Err(invalid())
            }
            Rotation::Invalid => Err(invalid()),
        }
    }

    async fn client_credentials(
        &self,
        form: TokenForm,
        token_endpoint: &str,
        actor: &Actor,
    ) -> Result<TokenResponse, GatewayError> {
        let invalid_client = |d: &str| GatewayError::oauth("invalid_client", d);
        if form.client_assertion_type.as_deref() != Some(JWT_BEARER) {
            return Err(invalid_client(
                "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ));
        }
        let assertion = form.client_assertion.ok_or_else(|| invalid_client("client_assertion is required"))?;
        let client_id = unverified_issuer(&assertion).ok_or_else(|| invalid_client("malformed client_assertion"))?;
        let client = self
            .client(&client_id)
            .await?
            .filter(|c| c.active && c.kind == "backend")
            .ok_or_else(|| invalid_client("unknown client"))?;
        let jwks = client.jwks.clone().ok_or_else(|| invalid_client("the client has no registered keys"))?;
        let now = self.now();
        let claims = verify_client_assertion(&assertion, &client.client_id, &jwks, token_endpoint, now)
            .map_err(|_| invalid_client("client_assertion failed verification"))?;
        // RFC 7523 §3: a jti must not be replayed while the assertion is valid.
        if !self
            .kv
            .insert_unique(&format!("assertion:{}:{}", client.client_id, claims.jti), claims.exp + 60, now)
            .await?
        {
            return Err(invalid_client("client_assertion replayed (jti already used)"));
        }
        let requested = form.scope.unwrap_or_default();
        // A system client never gets the admin API's pseudo types, even when its registered
        // wildcard (`system/*.rs`) would narrow to them.
        let scope = narrow_scopes(&client.scope, &requested)
            .split_whitespace()
            .filter(|s| !ehr_auth::resource_scope(s).is_some_and(|(_, t, _)| crate::ADMIN_TYPES.contains(&t)))
            .collect::<Vec<_>>()
            .join(" ");
        if scope.is_empty() {
            return Err(GatewayError::oauth("invalid_scope", "none of the requested scopes is granted to this client"));
        }
        let access =
            self.access_token(&client.tenant, &client.client_id, &scope, &[], &client.client_id, None, None).await?;
        let mut actor = actor.clone();
        actor.client_id = Some(client.client_id.clone());
        self.audit_security(&client.tenant, &actor, SecurityKind::TokenIssued, true, Some("client_credentials"), None)
            .await;
        Ok(TokenResponse {
            access_token: access,
            token_type: "Bearer",
            expires_in: self.settings.access_secs(),
            scope,
            refresh_token: None,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn access_token(
        &self,
        tenant: &TenantId,
        subject: &str,
        scope: &str,
        roles: &[String],
        client_id: &str,
        sid: Option<&str>,
        fhir_user: Option<String>,
    ) -> Result<String, GatewayError> {
        let now = self.now();
        let claims = Claims {
            iss: self.keys.issuer().to_owned(),
            sub: subject.to_owned(),
            exp: now + self.settings.access_secs(),
            iat: now,
            tenant: tenant.as_str().to_owned(),
            scope: scope.to_owned(),
            jti: Some(uuid::Uuid::new_v4().to_string()),
            nbf: None,
            roles: roles.to_vec(),
            client_id: Some(client_id.to_owned()),
            sid: sid.map(str::to_owned),
            aud: None,
            fhir_user,
        };
        match self.keys.sign(&claims, now) {
            // Every key is past its signing period (a gateway that was down for longer than a
            // key's lifetime): make the successor now rather than refuse logins.
            Err(GatewayError::Auth(ehr_auth::AuthError::NoSigningKey)) => {
                self.keys.rotate_if_due(now).await?;
                self.keys.sign(&claims, now)
            }
            other => other,
        }
    }

    /// `POST /auth/revoke` (RFC 7009): a refresh token ends its session; an access token is
    /// void until it expires. Unknown tokens are not an error (§2.2).
    pub async fn revoke(&self, token: &str, actor: &Actor) -> Result<(), GatewayError> {
        let now = self.now();
        if let Some((family, _)) = token.split_once('.').filter(|_| token.matches('.').count() == 1) {
            // Only the holder of a token of the family may end it: the family id alone is in
            // every access token (`sid`). A rotation proves possession (and a used token is
            // reuse, which revokes the family anyway); the new token is thrown away.
            let discard = sha256_hex(&random_token(32));
            let (family_record, kind, success, why) =
                match self.kv.rotate(family, &sha256_hex(token), &discard, now).await? {
                    Rotation::Rotated(f) => {
                        self.kv.revoke_family(family).await?;
                        (f, SecurityKind::Logout, true, "refresh token revoked (RFC 7009)")
                    }
                    // A used token: the rotation already revoked the family as a reuse.
                    Rotation::Reused(f) => (
                        f,
                        SecurityKind::RefreshTokenReuse,
                        false,
                        "used refresh token presented for revocation: session revoked",
                    ),
                    Rotation::Invalid => return Ok(()),
                };
            if let Ok(tenant) = TenantId::parse(&family_record.tenant) {
                let actor = Actor {
                    subject: Some(family_record.subject.clone()),
                    client_id: Some(family_record.client_id.clone()),
                    ..actor.clone()
                };
                self.audit_security(&tenant, &actor, kind, success, Some(why), Some(&family_record.subject)).await;
            }
            self.kv.revoke_jti(&ehr_kv::session_revocation_key(family), now + self.settings.access_secs() + 60).await?;
            return Ok(());
        }
        if let Ok(v) = self.verifier.verify_token(token, now).await
            && let Some(jti) = &v.claims.jti
        {
            self.kv.revoke_jti(jti, v.claims.exp + 60).await?;
        }
        Ok(())
    }

    /// `POST /auth/logout`: ends the caller's session (its refresh family and access tokens).
    pub async fn logout(&self, claims: &Claims, actor: &Actor) -> Result<(), GatewayError> {
        let now = self.now();
        let until = now + self.settings.access_secs() + 60;
        if let Some(sid) = &claims.sid {
            self.kv.revoke_family(sid).await?;
            self.kv.revoke_jti(&ehr_kv::session_revocation_key(sid), until).await?;
        }
        if let Some(jti) = &claims.jti {
            self.kv.revoke_jti(jti, until).await?;
        }
        if let Ok(tenant) = TenantId::parse(&claims.tenant) {
            self.audit_security(&tenant, actor, SecurityKind::Logout, true, None, Some(&claims.sub)).await;
        }
        Ok(())
    }

    pub(crate) async fn user(&self, tenant: &TenantId, id: &str) -> Result<Option<UserRecord>, GatewayError> {
        let tx = self.store.read(&ctx(tenant)).await?;
        let user = tx.user(id).await?;
        tx.commit().await?;
        Ok(user)
    }

    async fn user_by_username(&self, tenant: &TenantId, username: &str) -> Result<Option<UserRecord>, GatewayError> {
        let tx = self.store.read(&ctx(tenant)).await?;
        let user = tx.user_by_username(username).await?;
        tx.commit().await?;
        Ok(user)
    }

    /// Records an event that concerns the whole server (a tenant created or deactivated, a key
    /// rotation) in the system tenant's chain too, whoever's chain records it first.
    pub(crate) async fn audit_server_wide(
        &self,
        caller_tenant: &TenantId,
        actor: &Actor,
        kind: SecurityKind,
        what: &str,
    ) {
        let system = TenantId::system();
        if caller_tenant != &system {
            self.audit_security(&system, actor, kind, true, Some(what), None).await;
        }
    }

    pub(crate) async fn audit_security(
        &self,
        tenant: &TenantId,
        actor: &Actor,
        kind: SecurityKind,
        success: bool,
        description: Option<&str>,
        target_user: Option<&str>,
    ) {
        let system = user_system(tenant);
        let event = security_event(
            &self.now_instant(),
            tenant,
            actor,
            kind,
            success,
            description,
            target_user.map(|u| (system.as_str(), u)),
        );
        self.audit.record(tenant, event).await;
    }
}

/// The `iss` of a JWT, read without verification — only to find which client's keys verify it.
fn unverified_issuer(jwt: &str) -> Option<String> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(str::to_owned)
}

/// The tenant context the gateway acts in for `tenant`.
pub(crate) fn ctx(tenant: &TenantId) -> TenantContext {
    TenantContext::new(tenant.clone(), "gateway")
}
