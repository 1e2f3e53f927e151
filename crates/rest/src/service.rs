//! FHIR interaction semantics on top of the store: validation, conditional logic, versions.
//!
//! Every operation takes an open [`Tx`], so the same code serves a single request (one
//! transaction) and each entry of a transaction Bundle (one shared transaction).

use crate::error::RestError;
use ehr_auth::Interaction;
use ehr_core::{Clock, Issue, ResourceId, Severity};
use ehr_fhir::search::{Filter, SearchQuery, parse_search};
use ehr_fhir::validate::Validator;
use ehr_http::{Caller, Problem};
use ehr_store::{Store, StoreError, Stored, Tx};
use serde_json::Value;
use std::sync::Arc;

/// The resource-owning part of a service: which types it serves and the machinery to serve them.
pub struct FhirService {
    pub store: Store,
    pub validator: Arc<Validator>,
    pub clock: Arc<dyn Clock>,
    /// The resource types this service owns, sorted.
    pub types: Vec<&'static str>,
    /// The service's own business rules (workflows, reservations, events), if it has any.
    pub rules: Option<Arc<dyn WriteRules>>,
}

/// One write, as a service's [`WriteRules`] see it.
#[derive(Debug)]
pub struct Change<'a> {
    pub resource_type: &'static str,
    pub id: &'a str,
    /// The version before the write; `None` for a creation (or a re-creation after a delete).
    pub previous: Option<&'a Value>,
    /// The version written (with its id and `meta`); `None` for a delete.
    pub next: Option<&'a Value>,
}

/// Business rules a service adds to the generic interactions: checked on every create, update,
/// patch and delete of its types — including each entry of a transaction Bundle — inside the
/// write's own transaction, after the store wrote the new version.
///
/// An error rolls the whole transaction back, so a rule may also write other resources (a slot
/// booked with its appointment) or emit events (the outbox): they commit with the change or not
/// at all.
#[async_trait::async_trait]
pub trait WriteRules: Send + Sync {
    async fn on_write(&self, tx: &Tx, change: &Change<'_>) -> Result<(), Problem>;
}

fn parse_stored(stored: &Stored) -> Result<Value, Problem> {
    serde_json::from_str(&stored.content).map_err(|_| StoreError::Internal("stored json".into()).into())
}

/// The result of a write.
#[derive(Debug)]
pub struct WriteOutcome {
    pub stored: Stored,
    /// 201 for a creation, 200 otherwise.
    pub status: u16,
    /// Validation warnings (such as an unknown profile) that did not prevent the write.
    pub warnings: Vec<Issue>,
}

impl FhirService {
    /// Resolves a type name from a URL to one this service serves.
    pub fn resource_type(&self, name: &str) -> Result<&'static str, RestError> {
        self.types
            .iter()
            .copied()
            .find(|t| *t == name)
            .ok_or_else(|| RestError::UnknownType(name.chars().take(64).collect()))
    }

    /// Resolves a type name for search-related purposes (`_include` targets, chains): any type
    /// with search parameters may be named, even if another service owns it.
    pub fn known_type(&self, name: &str) -> Option<&'static str> {
        ehr_core::ResourceType::parse(name).ok().map(ehr_core::ResourceType::as_str)
    }

    /// Parses the search parameters of `caller`'s search on `resource_type`.
    ///
    /// A chained criterion (`subject:Patient.name=…`) searches the chained type too, so it needs
    /// the caller's search scope on that type: otherwise it would reveal facts about resources
    /// the caller may not search. Every search, condition and conditional reference is parsed
    /// here, so the rule holds everywhere.
    pub fn parse_query(
        &self,
        caller: &Caller,
        resource_type: &'static str,
        pairs: &[(String, String)],
        strict: bool,
    ) -> Result<SearchQuery, Problem> {
        let query = parse_search(resource_type, pairs, strict, |t| self.known_type(t))?;
        for filter in &query.filters {
            if let Filter::Chain { target_type, .. } = filter {
                caller.require(target_type, Interaction::Search)?;
            }
        }
        Ok(query)
    }

    /// Parses the condition (`identifier=x&…`) of a conditional operation or reference, which
    /// is a search: it needs the search scope. Unknown parameters are always errors here,
    /// because ignoring one would widen the match.
    pub fn parse_condition(
        &self,
        caller: &Caller,
        resource_type: &'static str,
        condition: &str,
    ) -> Result<SearchQuery, Problem> {
        caller.require(resource_type, Interaction::Search)?;
        let pairs: Vec<(String, String)> = form_urlencoded::parse(condition.as_bytes()).into_owned().collect();
        let query = self.parse_query(caller, resource_type, &pairs, true)?;
        // Result parameters (`_count`, `_format`, …) and empty values select nothing: a
        // condition without a criterion would match every resource of the type.
        if query.filters.is_empty() {
            return Err(RestError::EmptyCondition.into());
        }
        Ok(query)
    }

    /// Validates a resource body for `resource_type`: shape, then the validator.
    pub fn validate(&self, resource_type: &str, resource: &Value) -> Result<Vec<Issue>, Problem> {
        let found = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
        if found != resource_type {
            return Err(RestError::TypeMismatch {
                expected: resource_type.to_owned(),
                found: found.chars().take(64).collect(),
            }
            .into());
        }
        let issues = self.validator.validate(resource);
        let (errors, warnings): (Vec<Issue>, Vec<Issue>) =
            issues.into_iter().partition(|i| matches!(i.severity, Severity::Error | Severity::Fatal));
        if errors.is_empty() {
            return Ok(warnings);
        }
        // R4 3.1.0.4: 400 when the content fails basic FHIR rules, 422 when it violates a profile
        // or business rule.
        let status = if errors.iter().any(ehr_fhir::validate::is_base_rule) { 400 } else { 422 };
        Err(Problem::new(status, errors))
    }

    /// `create`, optionally conditional (`If-None-Exist`). The server assigns the id; a Bundle
    /// passes the one it reserved for the entry's `urn:uuid:` full URL as `assigned_id`.
    pub async fn create(
        &self,
        tx: &Tx,
        resource_type: &'static str,
        mut resource: Value,
        if_none_exist: Option<&SearchQuery>,
        assigned_id: Option<&ResourceId>,
    ) -> Result<WriteOutcome, Problem> {
        if let Some(query) = if_none_exist {
            tx.lock_type(resource_type).await?;
            let ids = tx.matching_ids(query, 2).await?;
            match ids.as_slice() {
                [] => {}
                [id] => {
                    let stored = tx.read(resource_type, id).await?.ok_or(StoreError::NotFound)?;
                    return Ok(WriteOutcome { stored, status: 200, warnings: Vec::new() });
                }
                _ => return Err(RestError::MultipleMatches(ids.len()).into()),
            }
        }
        // R4: the server assigns the id of a created resource; a client id is ignored.
        if let Value::Object(map) = &mut resource {
            map.remove("id");
        }
        let warnings = self.validate(resource_type, &resource)?;
        let stored = tx.create(resource_type, assigned_id, resource, self.clock.now()).await?;
        self.apply_rules(tx, resource_type, None, &stored).await?;
        Ok(WriteOutcome { stored, status: 201, warnings })
    }

    /// `update` of `resource_type/id`, honouring `If-Match`; creates the resource if absent.
    pub async fn update(
        &self,
        tx: &Tx,
        resource_type: &'static str,
        id: &str,
        resource: Value,
        if_match: Option<i64>,
    ) -> Result<WriteOutcome, Problem> {
        let id = ResourceId::parse(id).map_err(|_| RestError::InvalidId)?;
        match resource.get("id").and_then(Value::as_str) {
            None => return Err(RestError::MissingId.into()),
            Some(body_id) if body_id != id.as_str() => return Err(RestError::IdMismatch.into()),
            Some(_) => {}
        }
        let warnings = self.validate(resource_type, &resource)?;
        let previous = match &self.rules {
            Some(_) => tx.read_for_update(resource_type, id.as_str()).await?.filter(|s| !s.deleted),
            None => None,
        };
        let (stored, created) = tx.update(resource_type, &id, resource, if_match, "PUT", self.clock.now()).await?;
        self.apply_rules(tx, resource_type, previous.as_ref(), &stored).await?;
        Ok(WriteOutcome { stored, status: if created { 201 } else { 200 }, warnings })
    }

    /// Conditional update: `PUT [type]?criteria`.
    pub async fn conditional_update(
        &self,
        tx: &Tx,
        resource_type: &'static str,
        condition: &SearchQuery,
        mut resource: Value,
        if_match: Option<i64>,
    ) -> Result<WriteOutcome, Problem> {
        tx.lock_type(resource_type).await?;
        let ids = tx.matching_ids(condition, 2).await?;
        match ids.as_slice() {
            [] => {
                // No match: create, with the body's id if it has one (update-as-create) — but
                // never on top of an existing resource the criteria did not select (R5 3.2.0.10
                // makes that a 409; R4 leaves it open).
                match resource.get("id").and_then(Value::as_str).map(str::to_owned) {
                    Some(id) => {
                        if tx.read(resource_type, &id).await?.is_some_and(|s| !s.deleted) {
                            return Err(RestError::ConditionalIdConflict.into());
                        }
                        self.update(tx, resource_type, &id, resource, if_match).await
                    }
                    None => self.create(tx, resource_type, resource, None, None).await,
                }
            }
            [id] => {
                match resource.get("id").and_then(Value::as_str) {
                    Some(body_id) if body_id != id => return Err(RestError::IdMismatch.into()),
                    Some(_) => {}
                    None => {
                        if let Value::Object(map) = &mut resource {
                            map.insert("id".into(), Value::String(id.clone()));
                        }
                    }
                }
                self.update(tx, resource_type, &id.clone(), resource, if_match).await
            }
            _ => Err(RestError::MultipleMatches(ids.len()).into()),
        }
    }

    /// `patch` with a JSON Patch document (RFC 6902).
    pub async fn patch(
        &self,
        tx: &Tx,
        resource_type: &'static str,
        id: &str,
        patch: Value,
        if_match: Option<i64>,
    ) -> Result<WriteOutcome, Problem> {
        // Locked, so that a concurrent write waits instead of turning this patch (sent without
        // If-Match) into a version conflict.
        let current = tx.read_for_update(resource_type, id).await?.ok_or(StoreError::NotFound)?;
        if current.deleted {
            return Err(StoreError::Gone { version: current.version, last_updated: current.last_updated }.into());
        }
        let mut resource: Value =
            serde_json::from_str(&current.content).map_err(|_| StoreError::Internal("stored json".into()))?;
        let patch: json_patch::Patch =
            serde_json::from_value(patch).map_err(|e| RestError::InvalidPatch(e.to_string()))?;
        json_patch::patch(&mut resource, &patch).map_err(|e| RestError::InvalidPatch(e.to_string()))?;
        if resource.get("resourceType").and_then(Value::as_str) != Some(resource_type)
            || resource.get("id").and_then(Value::as_str) != Some(id)
        {
            return Err(RestError::PatchChangesIdentity.into());
        }
        if let Some(Value::Object(map)) = Some(&mut resource) {
            // Server-managed; the new values are stamped by the store. An emptied meta must go:
            // FHIR forbids empty objects.
            if let Some(Value::Object(meta)) = map.get_mut("meta") {
                meta.remove("versionId");
                meta.remove("lastUpdated");
                if meta.is_empty() {
                    map.remove("meta");
                }
            }
        }
        let warnings = self.validate(resource_type, &resource)?;
        let id = ResourceId::parse(id).map_err(|_| RestError::InvalidId)?;
        let expected = if_match.or(Some(current.version));
        let (stored, _) = tx.update(resource_type, &id, resource, expected, "PATCH", self.clock.now()).await?;
        self.apply_rules(tx, resource_type, Some(&current), &stored).await?;
        Ok(WriteOutcome { stored, status: 200, warnings })
    }

    /// `read` on its own (the REST `GET [type]/[id]`), in the store's cheapest form.
    pub async fn read_one(
        &self,
        ctx: &ehr_core::TenantContext,
        resource_type: &'static str,
        id: &str,
    ) -> Result<Stored, Problem> {
        ResourceId::parse(id).map_err(|_| StoreError::NotFound)?;
        let stored = self.store.read_one(ctx, resource_type, id).await?.ok_or(StoreError::NotFound)?;
        if stored.deleted {
            return Err(StoreError::Gone { version: stored.version, last_updated: stored.last_updated }.into());
        }
        Ok(stored)
    }

    /// `read`: the current version; 404 if never existed, 410 if deleted.
    pub async fn read(&self, tx: &Tx, resource_type: &'static str, id: &str) -> Result<Stored, Problem> {
        ResourceId::parse(id).map_err(|_| StoreError::NotFound)?;
        let stored = tx.read(resource_type, id).await?.ok_or(StoreError::NotFound)?;
        if stored.deleted {
            return Err(StoreError::Gone { version: stored.version, last_updated: stored.last_updated }.into());
        }
        Ok(stored)
    }

    /// `vread`: one version from history.
    pub async fn vread(
        &self,
        tx: &Tx,
        resource_type: &'static str,
        id: &str,
        version: &str,
    ) -> Result<Stored, Problem> {
        let version: i64 = version.parse().map_err(|_| RestError::InvalidVersion)?;
        let stored = tx.vread(resource_type, id, version).await?.ok_or(StoreError::NotFound)?;
        if stored.deleted {
            return Err(StoreError::Gone { version: stored.version, last_updated: stored.last_updated }.into());
        }
        Ok(stored)
    }

    /// `delete`; deleting what does not exist (or is already deleted) succeeds.
    pub async fn delete(&self, tx: &Tx, resource_type: &'static str, id: &str) -> Result<Option<Stored>, Problem> {
        ResourceId::parse(id).map_err(|_| RestError::InvalidId)?;
        let Some(rules) = &self.rules else {
            return Ok(tx.delete(resource_type, id, self.clock.now()).await?);
        };
        let previous = tx.read_for_update(resource_type, id).await?.filter(|s| !s.deleted);
        let deleted = tx.delete(resource_type, id, self.clock.now()).await?;
        if let Some(previous) = &previous {
            let previous = parse_stored(previous)?;
            rules.on_write(tx, &Change { resource_type, id, previous: Some(&previous), next: None }).await?;
        }
        Ok(deleted)
    }

    /// Runs the service's rules on a write the store just made.
    async fn apply_rules(
        &self,
        tx: &Tx,
        resource_type: &'static str,
        previous: Option<&Stored>,
        stored: &Stored,
    ) -> Result<(), Problem> {
        let Some(rules) = &self.rules else { return Ok(()) };
        let previous = previous.map(parse_stored).transpose()?;
        let next = parse_stored(stored)?;
        let change = Change { resource_type, id: &stored.id, previous: previous.as_ref(), next: Some(&next) };
        rules.on_write(tx, &change).await
    }

    /// Conditional delete (single-match mode).
    pub async fn conditional_delete(
        &self,
        tx: &Tx,
        resource_type: &'static str,
        condition: &SearchQuery,
    ) -> Result<Option<Stored>, Problem> {
        tx.lock_type(resource_type).await?;
        let ids = tx.matching_ids(condition, 2).await?;
        match ids.as_slice() {
            [] => Ok(None),
            [id] => self.delete(tx, resource_type, &id.clone()).await,
            _ => Err(RestError::MultipleMatches(ids.len()).into()),
        }
    }
}
