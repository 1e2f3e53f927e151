//! Who is calling, and for which tenant.

use crate::TenantId;

/// The authenticated caller, as the verified bearer token describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Token subject (user or client id); an id, never a name.
    pub subject: String,
    /// The tenant the token was issued for.
    pub tenant: TenantId,
}

/// The tenant scope of one request. Every repository method takes one; there is no unscoped query.
///
/// Built by the HTTP extractor from a verified token (or, in tests and tools, explicitly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantContext {
    tenant: TenantId,
    subject: String,
}

impl TenantContext {
    /// A context for `tenant`, acting as `subject`.
    pub fn new(tenant: TenantId, subject: impl Into<String>) -> Self {
        Self { tenant, subject: subject.into() }
    }

    /// The tenant every query of this context is confined to.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// The acting subject (for provenance and audit).
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

impl From<&Principal> for TenantContext {
    fn from(p: &Principal) -> Self {
        Self::new(p.tenant.clone(), p.subject.clone())
    }
}
