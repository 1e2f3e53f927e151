//! The authenticated caller, extracted from the bearer token on every request.

use crate::error::Problem;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::{header, request::Parts};
use ehr_auth::{AuthError, Interaction, ScopeSet, Verifier};
use ehr_core::{Clock, Principal, TenantContext};
use std::sync::Arc;

/// What the extractor needs: the token verifier and the clock.
#[derive(Clone)]
pub struct AuthState {
    pub verifier: Verifier,
    pub clock: Arc<dyn Clock>,
}

/// A caller whose token verified. The tenant comes from the token and nowhere else.
#[derive(Debug, Clone)]
pub struct Caller {
    pub principal: Principal,
    pub scopes: ScopeSet,
    pub ctx: TenantContext,
}

impl Caller {
    /// Fails with 403 unless the token's scopes allow `interaction` on `resource_type`.
    pub fn require(&self, resource_type: &str, interaction: Interaction) -> Result<(), Problem> {
        check(self.scopes.allows(resource_type, interaction), resource_type, interaction)
    }

    /// Fails with 403 unless a scope naming `pseudo_type` itself allows `interaction`: the pseudo
    /// types of the services' own APIs (`Connection`, `LabMessage`, `NationalSubmission`,
    /// `EPrescription`) are never reached by a wildcard.
    pub fn require_explicitly(&self, pseudo_type: &str, interaction: Interaction) -> Result<(), Problem> {
        check(self.scopes.allows_explicitly(pseudo_type, interaction), pseudo_type, interaction)
    }
}

fn check(allowed: bool, resource_type: &str, interaction: Interaction) -> Result<(), Problem> {
    if allowed {
        Ok(())
    } else {
        Err(AuthError::InsufficientScope { interaction: interaction.name(), resource_type: resource_type.to_owned() }
            .into())
    }
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    AuthState: FromRef<S>,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        let auth = AuthState::from_ref(state);
        let value =
            parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or(AuthError::MissingToken)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(AuthError::InvalidToken("expected a Bearer token"))?;
        let (principal, scopes) = auth.verifier.verify(token.trim(), auth.clock.now().timestamp()).await?;
        let ctx = TenantContext::from(&principal);
        tracing::Span::current().record("tenant", principal.tenant.as_str());
        Ok(Self { principal, scopes, ctx })
    }
}
