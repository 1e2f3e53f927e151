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
    fn letter(self) -> char {
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
}

fn parse_one(scope: &str) -> Option<Grant> {
    let (context, rest) = scope.split_once('/')?;
    if !matches!(context, "user" | "system") || rest.contains('?') {
        return None;
    }
    let (ty, perms) = rest.split_once('.')?;
    let resource_type = (ty != "*").then(|| ty.to_owned());
    let letters = match perms {
        "read" => "rs".to_owned(),
        "write" => "cud".to_owned(),
        "*" => "cruds".to_owned(),
        p if !p.is_empty() && is_ordered_subset(p, "cruds") => p.to_owned(),
        _ => return None,
    };
    Some(Grant { resource_type, letters })
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
    fn malformed_patient_and_filtered_scopes_grant_nothing() {
        for s in ["user/Patient.sr", "user/Patient.x", "patient/*.cruds", "user/Observation.rs?category=x", "Patient.r"]
        {
            assert_eq!(ScopeSet::parse(s), ScopeSet::default(), "{s}");
        }
    }
}
