//! The FHIR terminology operations, relative to the FHIR base:
//!
//! - `GET|POST /CodeSystem/$lookup` — inputs `system`, `code`, `version`, `coding`, `property`
//!   (R4 §4.7.16); answers a `Parameters` with `name`, `display`, `designation` and `property`
//!   parts; an unknown code or system is a 404 OperationOutcome.
//! - `GET|POST /ValueSet/$validate-code` — inputs `url`, `code`, `system`, `display`, `coding`,
//!   `codeableConcept` (R4 §4.9.19); answers `result`, `message`, `display`. `url` is a value set
//!   from [`crate::systems::value_set_urls`]: `<code system canonical>?vs` for every system, or
//!   one of the JP-CLINS value sets that include whole code systems.
//!
//! POST bodies are FHIR `Parameters`. A terminology lookup reveals no patient data, so any caller
//! with a valid token may use these routes; no resource scope is asked for.

use crate::systems::{self, SystemId};
use crate::{Concept, Terminology, TerminologyError, Validation};
use axum::Router;
use axum::extract::{FromRef, RawQuery, State};
use axum::response::Response;
use axum::routing::get;
use ehr_http::{AuthState, Caller, FhirBody, Problem, fhir_json_response, method_not_allowed};
use serde_json::{Value, json};

type Result<T, E = Problem> = std::result::Result<T, E>;

/// State of the terminology routes.
#[derive(Clone)]
pub struct TerminologyState {
    pub terminology: Terminology,
    pub auth: AuthState,
}

impl FromRef<TerminologyState> for AuthState {
    fn from_ref(s: &TerminologyState) -> AuthState {
        s.auth.clone()
    }
}

/// The terminology routes, relative to the FHIR base.
pub fn router(state: TerminologyState) -> Router {
    Router::new()
        .route("/CodeSystem/$lookup", get(lookup_get).post(lookup_post).fallback(method_not_allowed))
        .route("/ValueSet/$validate-code", get(validate_get).post(validate_post).fallback(method_not_allowed))
        .layer(axum::middleware::from_fn(ehr_rest::negotiate))
        .with_state(state)
}

/// `GET /CodeSystem/$lookup?system=…&code=…`.
async fn lookup_get(State(s): State<TerminologyState>, _caller: Caller, RawQuery(q): RawQuery) -> Result<Response> {
    respond(lookup(&s.terminology, &Params::from_query(q.as_deref()))?)
}

/// `POST /CodeSystem/$lookup` with a Parameters body.
async fn lookup_post(State(s): State<TerminologyState>, _caller: Caller, body: FhirBody) -> Result<Response> {
    respond(lookup(&s.terminology, &Params::from_body(&body.value)?)?)
}

/// `GET /ValueSet/$validate-code?url=…&code=…`.
async fn validate_get(State(s): State<TerminologyState>, _caller: Caller, RawQuery(q): RawQuery) -> Result<Response> {
    respond(validate(&s.terminology, &Params::from_query(q.as_deref()))?)
}

/// `POST /ValueSet/$validate-code` with a Parameters body.
async fn validate_post(State(s): State<TerminologyState>, _caller: Caller, body: FhirBody) -> Result<Response> {
    respond(validate(&s.terminology, &Params::from_body(&body.value)?)?)
}

fn respond(parameters: Value) -> Result<Response> {
    Ok(fhir_json_response(200, Vec::new(), parameters.to_string()))
}

/// One input parameter: a primitive (`value[x]` of a primitive type, or a query value) or a
/// complex value (`valueCoding`, `valueCodeableConcept`).
#[derive(Debug)]
enum ParamValue {
    Text(String),
    Complex(Value),
}

/// The operation's input parameters, from the query string or a Parameters resource.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, ParamValue)>);

impl Params {
    /// From a query string; `_format` and other `_` parameters are not operation inputs.
    pub fn from_query(query: Option<&str>) -> Self {
        let pairs = query.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect::<Vec<_>>());
        Self(
            pairs
                .into_iter()
                .flatten()
                .filter(|(k, _)| !k.starts_with('_'))
                .map(|(k, v)| (k, ParamValue::Text(v)))
                .collect(),
        )
    }

    /// From a FHIR `Parameters` resource.
    pub fn from_body(body: &Value) -> Result<Self, TerminologyError> {
        let invalid = |reason: &str| TerminologyError::InvalidParameter { name: "body".into(), reason: reason.into() };
        if body["resourceType"] != "Parameters" {
            return Err(invalid("expected a Parameters resource"));
        }
        let mut params = Vec::new();
        for p in body["parameter"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().ok_or_else(|| invalid("a parameter has no name"))?;
            let value = p.as_object().and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| v));
            let value = match value {
                Some(Value::String(s)) => ParamValue::Text(s.clone()),
                Some(v @ (Value::Bool(_) | Value::Number(_))) => ParamValue::Text(v.to_string()),
                Some(v @ Value::Object(_)) => ParamValue::Complex(v.clone()),
                // `part`/`resource` parameters are not inputs of these operations.
                _ => continue,
            };
            params.push((name.to_owned(), value));
        }
        Ok(Self(params))
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a ParamValue> + 'a {
        self.0.iter().filter(move |(n, _)| n == name).map(|(_, v)| v)
    }

    fn all_owned<'a>(&'a self, name: &str) -> Vec<&'a ParamValue> {
        self.0.iter().filter(|(n, _)| n == name).map(|(_, v)| v).collect()
    }

    fn one(&self, name: &str) -> Result<Option<&ParamValue>, TerminologyError> {
        let values = self.all_owned(name);
        let first = values.first().copied();
        if values.len() > 1 {
            return Err(TerminologyError::InvalidParameter {
                name: name.into(),
                reason: "given more than once".into(),
            });
        }
        Ok(first)
    }

    /// A primitive parameter given at most once; empty strings count as absent.
    fn text(&self, name: &str) -> Result<Option<&str>, TerminologyError> {
        match self.one(name)? {
            None => Ok(None),
            Some(ParamValue::Text(t)) => Ok(Some(t.as_str()).filter(|t| !t.is_empty())),
            Some(ParamValue::Complex(_)) => Err(TerminologyError::InvalidParameter {
                name: name.into(),
                reason: "expected a primitive value".into(),
            }),
        }
    }

    /// A complex parameter given at most once.
    fn complex(&self, name: &str) -> Result<Option<&Value>, TerminologyError> {
        match self.one(name)? {
            None => Ok(None),
            Some(ParamValue::Complex(v)) => Ok(Some(v)),
            Some(ParamValue::Text(_)) => Err(TerminologyError::InvalidParameter {
                name: name.into(),
                reason: "expected a Coding or CodeableConcept".into(),
            }),
        }
    }
}

/// `$lookup`: the output Parameters, or a 404/400 error.
pub fn lookup(t: &Terminology, params: &Params) -> Result<Value, TerminologyError> {
    let coding = params.complex("coding")?;
    let system = match coding {
        Some(c) => c["system"].as_str(),
        None => params.text("system")?,
    };
    let code = match coding {
        Some(c) => c["code"].as_str(),
        None => params.text("code")?,
    };
    let code = code.ok_or(TerminologyError::MissingParameter("code"))?;
    let system = system.ok_or(TerminologyError::MissingParameter("system"))?;
    let id = t.resolve(system).ok_or_else(|| TerminologyError::UnknownSystem(system.to_owned()))?;
    let concept = t
        .lookup(system, code)
        .ok_or_else(|| TerminologyError::UnknownCode { system: id.canonical().to_owned(), code: code.to_owned() })?;
    let wanted: Vec<&str> = params
        .all("property")
        .filter_map(|v| match v {
            ParamValue::Text(t) => Some(t.as_str()),
            ParamValue::Complex(_) => None,
        })
        .collect();
    Ok(lookup_parameters(id, &concept, &wanted))
}

/// Renders a concept as the `$lookup` output (R4: name, display, designation, property).
fn lookup_parameters(id: SystemId, c: &Concept, wanted: &[&str]) -> Value {
    let mut out = vec![
        json!({"name": "name", "valueString": id.info().name}),
        json!({"name": "display", "valueString": c.display}),
    ];
    for d in &c.designations {
        let mut part = Vec::new();
        if let Some(lang) = &d.language {
            part.push(json!({"name": "language", "valueCode": lang}));
        }
        part.push(json!({"name": "value", "valueString": d.value}));
        out.push(json!({"name": "designation", "part": part}));
    }
    for p in c.properties.iter().filter(|p| wanted.is_empty() || wanted.contains(&p.code.as_str())) {
        let (key, value) = p.value_json();
        let mut value_part = json!({"name": "value"});
        value_part[key] = value;
        out.push(json!({"name": "property", "part": [{"name": "code", "valueCode": p.code}, value_part]}));
    }
    json!({"resourceType": "Parameters", "parameter": out})
}

/// `$validate-code`: the output Parameters, or a 404/400 error.
pub fn validate(t: &Terminology, params: &Params) -> Result<Value, TerminologyError> {
    let url = params.text("url")?;
    let scope = match url {
        None => None,
        Some(u) => {
            // `url|version`: the value sets here have no versions to choose between.
            let canonical = u.split('|').next().unwrap_or(u);
            Some(systems::value_set_systems(canonical).ok_or_else(|| TerminologyError::UnknownValueSet(u.to_owned()))?)
        }
    };
    let implied_system = match scope.as_deref() {
        Some([only]) => Some(only.canonical()),
        _ => None,
    };

    // The codings to try, as (system, code, display).
    let mut candidates: Vec<(Option<&str>, &str, Option<&str>)> = Vec::new();
    if let Some(cc) = params.complex("codeableConcept")? {
        for coding in cc["coding"].as_array().into_iter().flatten() {
            if let Some(code) = coding["code"].as_str() {
                candidates.push((coding["system"].as_str(), code, coding["display"].as_str()));
            }
        }
        if candidates.is_empty() {
            return Err(TerminologyError::InvalidParameter {
                name: "codeableConcept".into(),
                reason: "no coding with a code".into(),
            });
        }
    } else if let Some(coding) = params.complex("coding")? {
        let code = coding["code"].as_str().ok_or(TerminologyError::MissingParameter("coding.code"))?;
        candidates.push((coding["system"].as_str(), code, coding["display"].as_str()));
    } else {
        let code = params.text("code")?.ok_or(TerminologyError::MissingParameter("code"))?;
        candidates.push((params.text("system")?, code, params.text("display")?));
    }

    let mut failures: Vec<String> = Vec::new();
    // A known code with a wrong display still tells the right display.
    let mut known_display = None;
    for (system, code, display) in candidates {
        let Some(system) = system.or(implied_system) else {
            if url.is_none() {
                return Err(TerminologyError::MissingParameter("system"));
            }
            failures.push(format!("code `{code}` has no system and the value set spans several code systems"));
            continue;
        };
        let v = match (&scope, t.resolve(system)) {
            (Some(scope), id) if !id.is_some_and(|id| scope.contains(&id)) => Validation {
                result: false,
                message: Some(format!("code system `{system}` is not in value set `{}`", url.unwrap_or_default())),
                display: None,
            },
            _ => t.validate_code(system, code, display),
        };
        if v.result {
            return Ok(validation_parameters(&v));
        }
        failures.extend(v.message);
        known_display = known_display.or(v.display);
    }
    Ok(validation_parameters(&Validation { result: false, message: Some(failures.join("; ")), display: known_display }))
}

fn validation_parameters(v: &Validation) -> Value {
    let mut out = vec![json!({"name": "result", "valueBoolean": v.result})];
    if let Some(m) = &v.message {
        out.push(json!({"name": "message", "valueString": m}));
    }
    if let Some(d) = &v.display {
        out.push(json!({"name": "display", "valueString": d}));
    }
    json!({"resourceType": "Parameters", "parameter": out})
}
