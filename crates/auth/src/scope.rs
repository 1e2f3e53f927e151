//! SMART App Launch v2 scopes (`user/Patient.rs`, `system/*.cruds`) and their v1 forms
//! (`user/Patient.read`, `user/*.write`, `user/*.*`).

/// A FHIR interaction, as a SMART v2 permission letter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Interaction {
    /// The SMART v2 permission letter (`c`, `r`, `u`, `d`, `s`).
    pub fn letter(self) -> char {
        match self {
            Self::Create => 'c',
            Self::Read => 'r',
            Self::Update => 'u',
            Self::Delete => 'd',
            Self::Search => 's',
        }
    }

    /// Lowercase name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Read => "read",
            Self::Update => "update",
            Self::Delete => "delete",
            Self::Search => "search",
        }
    }
}

/// One resource-level grant parsed from a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    /// `None` for `*`.
    resource_type: Option<String>,
    letters: String,
}

/// The parsed scopes of a token.
///
/// Only `user/` and `system/` scopes grant access here: `patient/` scopes need a patient
/// compartment and launch context, which this server does not implement yet, so they grant
/// nothing. Fine-grained v2 scopes with a query (`user/Observation.rs?category=…`) also grant
/// nothing rather than more than they say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeSet {
    grants: Vec<Grant>,
}

impl ScopeSet {
    /// Parses a space-separated scope string; scopes that are not resource scopes are ignored.
    pub fn parse(scopes: &str) -> Self {
        let grants = scopes.split_whitespace().filter_map(parse_one).collect();
        Self { grants }
    }

    /// Whether the scopes allow `interaction` on `resource_type`.
    pub fn allows(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.grants.iter().any(|g| {
            g.resource_type.as_deref().is_none_or(|t| t == resource_type) && g.letters.contains(interaction.letter())
        })
    }

    /// As [`ScopeSet::allows`], but only a grant naming `resource_type` counts, never `*`: the
    /// admin API's pseudo types (accounts, tenants, signing keys) are reached by explicit grants
    /// only, so that a `system/*.cruds` client of a lab system can never administer the server.
    pub fn allows_explicitly(&self, resource_type: &str, interaction: Interaction) -> bool {
        self.grants
            .iter()
            .any(|g| g.resource_type.as_deref() == Some(resource_type) && g.letters.contains(interaction.letter()))
    }
}

fn parse_one(scope: &str) -> Option<Grant> {
    let parsed = parse_resource_scope(scope)?;
    if parsed.context == "patient" || parsed.query.is_some() {
        return None;
    }
    let resource_type = (parsed.resource_type != "*").then(|| parsed.resource_type.to_owned());
    Some(Grant { resource_type, letters: parsed.letters })
}

/// A resource scope taken apart: `user/Observation.rs?category=laboratory`.
struct ResourceScope<'a> {
    /// `user`, `system` or `patient`.
    context: &'a str,
    /// A resource type or `*`.
    resource_type: &'a str,
    /// v2 letters in `cruds` order (v1 `read`, `write` and `*` translated).
    letters: String,
    /// The fine-grained filter after `?`, if any.
    query: Option<&'a str>,
}

fn parse_resource_scope(scope: &str) -> Option<ResourceScope<'_>> {
    let (context, rest) = scope.split_once('/')?;
    if !matches!(context, "user" | "system" | "patient") {
        return None;
    }
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    let (resource_type, perms) = rest.split_once('.')?;
    let letters = match perms {
        "read" => "rs",
        "write" => "cud",
        "*" => "cruds",
        p if !p.is_empty() && is_ordered_subset(p, "cruds") => p,
        _ => return None,
    };
    Some(ResourceScope { context, resource_type, letters: letters.to_owned(), query })
}

/// The parts of a resource scope (`system/Observation.rs`): context, resource type (`*` for all)
/// and SMART v2 letters (v1 forms translated); `None` for other scopes and for filtered ones
/// (`…?category=…`), which grant nothing here.
pub fn resource_scope(scope: &str) -> Option<(&str, &str, String)> {
    parse_resource_scope(scope).filter(|s| s.query.is_none()).map(|s| (s.context, s.resource_type, s.letters))
}

/// Scopes that are not about resources and pass through narrowing when the client asks for them.
const PASS_THROUGH: [&str; 5] = ["openid", "fhirUser", "offline_access", "online_access", "launch"];

/// The scopes a client asked for (`requested`), narrowed to what the user was granted.
///
/// Per resource type the letters are intersected; a wildcard request (`user/*.rs`) expands to
/// every granted type; a request beyond the grant is narrowed, not refused (SMART lets the server
/// grant fewer scopes than asked). A `patient/` request is covered by a `user/` grant, being
/// narrower; a `system/` request only by a `system/` grant. `openid`, `fhirUser`,
/// `offline_access`, `online_access`, `launch` and `launch/…` pass through; anything else is
/// dropped. The result
/// uses v2 letters and keeps the order of the request.
pub fn narrow_scopes(granted: &str, requested: &str) -> String {
    // The grant united per (context, type), in first-seen order; filtered grants are ignored.
    let mut grants: Vec<(&str, &str, String)> = Vec::new();
    for g in granted.split_whitespace().filter_map(parse_resource_scope).filter(|g| g.query.is_none()) {
        match grants.iter_mut().find(|(c, t, _)| *c == g.context && *t == g.resource_type) {
            Some((_, _, letters)) => *letters = letters_where(|c| letters.contains(c) || g.letters.contains(c)),
            None => grants.push((g.context, g.resource_type, g.letters)),
        }
    }
    let mut narrowed: Vec<String> = Vec::new();
    let mut push = |scope: String| {
        if !narrowed.contains(&scope) {
            narrowed.push(scope);
        }
    };
    for scope in requested.split_whitespace() {
        if PASS_THROUGH.contains(&scope) || scope.starts_with("launch/") {
            push(scope.to_owned());
            continue;
        }
        let Some(req) = parse_resource_scope(scope) else { continue };
        let covering =
            grants.iter().filter(|(c, _, _)| *c == req.context || (req.context == "patient" && *c == "user"));
        let render = |resource_type: &str, letters: String| match req.query {
            Some(query) => format!("{}/{resource_type}.{letters}?{query}", req.context),
            None => format!("{}/{resource_type}.{letters}", req.context),
        };
        if req.resource_type == "*" {
            for (_, resource_type, letters) in covering {
                let both = letters_where(|c| letters.contains(c) && req.letters.contains(c));
                if !both.is_empty() {
                    push(render(resource_type, both));
                }
            }
        } else {
            let allowed: Vec<&String> =
                covering.filter(|(_, t, _)| *t == req.resource_type || *t == "*").map(|(_, _, l)| l).collect();
            let both = letters_where(|c| req.letters.contains(c) && allowed.iter().any(|l| l.contains(c)));
            if !both.is_empty() {
                push(render(req.resource_type, both));
            }
        }
    }
    narrowed.join(" ")
}

/// The letters of `cruds` satisfying `keep`, in that order.
fn letters_where(keep: impl Fn(char) -> bool) -> String {
    "cruds".chars().filter(|&c| keep(c)).collect()
}

/// SMART v2 requires the letters in `cruds` order, each at most once.
fn is_ordered_subset(p: &str, all: &str) -> bool {
    let mut rest = all.chars();
    p.chars().all(|c| rest.by_ref().any(|a| a == c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_and_v1_scopes() {
        let s = ScopeSet::parse("openid user/Patient.rs system/Observation.cu user/Condition.read");
        assert!(s.allows("Patient", Interaction::Read));
        assert!(s.allows("Patient", Interaction::Search));
        assert!(!s.allows("Patient", Interaction::Create));
        assert!(s.allows("Observation", Interaction::Update));
        assert!(!s.allows("Observation", Interaction::Read));
        assert!(s.allows("Condition", Interaction::Search));
        assert!(ScopeSet::parse("user/*.cruds").allows("Encounter", Interaction::Delete));
    }

    #[test]
    fn wildcards_do_not_count_where_an_explicit_grant_is_required() {
        let s = ScopeSet::parse("system/*.cruds user/Account.rs");
        assert!(s.allows("Tenant", Interaction::Create));
        assert!(!s.allows_explicitly("Tenant", Interaction::Create));
        assert!(s.allows_explicitly("Account", Interaction::Read));
        assert!(!s.allows_explicitly("Account", Interaction::Update));
    }

    #[test]
    fn malformed_patient_and_filtered_scopes_grant_nothing() {
        for s in ["user/Patient.sr", "user/Patient.x", "patient/*.cruds", "user/Observation.rs?category=x", "Patient.r"]
        {
            assert_eq!(ScopeSet::parse(s), ScopeSet::default(), "{s}");
        }
    }

    #[test]
    fn narrowing_intersects_per_type() {
        let granted = "user/Patient.rs user/Observation.crus user/Condition.rs";
        assert_eq!(
            narrow_scopes(granted, "user/Observation.rs user/Patient.cruds"),
            "user/Observation.rs user/Patient.rs"
        );
        assert_eq!(narrow_scopes(granted, "user/*.rs"), "user/Patient.rs user/Observation.rs user/Condition.rs");
        assert_eq!(narrow_scopes(granted, "user/*.c"), "user/Observation.c");
        assert_eq!(narrow_scopes(granted, "user/Condition.write user/Encounter.rs system/Patient.rs"), "");
        // v1 forms come out as v2 letters; duplicates collapse.
        assert_eq!(narrow_scopes(granted, "user/Patient.read user/Patient.rs"), "user/Patient.rs");
    }

    #[test]
    fn narrowing_passes_identity_scopes_and_handles_contexts() {
        let granted = "user/Patient.rs user/Observation.crus system/*.rs";
        assert_eq!(
            narrow_scopes(granted, "openid fhirUser offline_access launch launch/patient profile email"),
            "openid fhirUser offline_access launch launch/patient"
        );
        assert_eq!(narrow_scopes(granted, "patient/Observation.cruds"), "patient/Observation.crus");
        assert_eq!(narrow_scopes(granted, "patient/*.r"), "patient/Patient.r patient/Observation.r");
        assert_eq!(narrow_scopes(granted, "system/Encounter.cruds system/*.s"), "system/Encounter.rs system/*.s");
        assert_eq!(
            narrow_scopes(granted, "user/Observation.rs?category=laboratory"),
            "user/Observation.rs?category=laboratory"
        );
        assert_eq!(narrow_scopes("user/Observation.r user/Observation.s", "user/*.cruds"), "user/Observation.rs");
        assert_eq!(narrow_scopes("user/Observation.rs?category=x", "user/Observation.rs"), "");
        assert_eq!(narrow_scopes("", "user/*.cruds openid"), "openid");
    }
}
