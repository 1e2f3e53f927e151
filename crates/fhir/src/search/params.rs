//! The R4 search parameters this server indexes, as data.
//!
//! Each definition names the JSON paths its values come from (a simplified FHIRPath: dotted
//! element names, arrays flattened, choice types spelled out as `effectiveDateTime`). Values are
//! extracted at write time into the index table of the parameter's kind, in the same transaction
//! as the resource (see `ehr-store`). Expressions follow the R4 `SearchParameter` resources
//! (`http://hl7.org/fhir/SearchParameter/<Type>-<code>`), restricted to the types served here.

/// The kind of a search parameter, which decides its index table and matching rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamKind {
    Token,
    String,
    Date,
    Reference,
    Quantity,
    Number,
    Uri,
}

impl ParamKind {
    /// The FHIR code of the kind (`token`, `string`, …).
    pub fn code(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::String => "string",
            Self::Date => "date",
            Self::Reference => "reference",
            Self::Quantity => "quantity",
            Self::Number => "number",
            Self::Uri => "uri",
        }
    }
}

/// One search parameter of one resource type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchParamDef {
    /// The parameter code as used in URLs (`birthdate`).
    pub name: &'static str,
    pub kind: ParamKind,
    /// Paths, relative to the resource root, whose values the parameter indexes.
    pub paths: &'static [&'static str],
    /// For reference parameters: the resource types a reference may point to (empty: any).
    pub targets: &'static [&'static str],
}

const fn p(name: &'static str, kind: ParamKind, paths: &'static [&'static str]) -> SearchParamDef {
    SearchParamDef { name, kind, paths, targets: &[] }
}

const fn r(name: &'static str, paths: &'static [&'static str], targets: &'static [&'static str]) -> SearchParamDef {
    SearchParamDef { name, kind: ParamKind::Reference, paths, targets }
}

use ParamKind::{Date, Quantity, String as Str, Token, Uri};

/// Parameters every resource type has (besides `_id` and `_lastUpdated`, which are columns).
const COMMON: &[SearchParamDef] = &[
    p("_profile", Uri, &["meta.profile"]),
    p("_tag", Token, &["meta.tag"]),
    p("_security", Token, &["meta.security"]),
];

const PATIENT: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("name", Str, &["name"]),
    p("family", Str, &["name.family"]),
    p("given", Str, &["name.given"]),
    p("birthdate", Date, &["birthDate"]),
    p("gender", Token, &["gender"]),
    p("active", Token, &["active"]),
    p("address", Str, &["address"]),
    p("address-postalcode", Str, &["address.postalCode"]),
    p("address-city", Str, &["address.city"]),
    p("address-state", Str, &["address.state"]),
    p("telecom", Token, &["telecom"]),
    p("phone", Token, &["telecom[system=phone]"]),
    p("email", Token, &["telecom[system=email]"]),
    p("death-date", Date, &["deceasedDateTime"]),
    p("deceased", Token, &["deceasedBoolean"]),
    r("general-practitioner", &["generalPractitioner"], &["Practitioner", "Organization", "PractitionerRole"]),
    r("organization", &["managingOrganization"], &["Organization"]),
    r("link", &["link.other"], &["Patient", "RelatedPerson"]),
];

const PRACTITIONER: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("name", Str, &["name"]),
    p("family", Str, &["name.family"]),
    p("given", Str, &["name.given"]),
    p("gender", Token, &["gender"]),
    p("active", Token, &["active"]),
    p("telecom", Token, &["telecom"]),
    p("address", Str, &["address"]),
];

const PRACTITIONER_ROLE: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("role", Token, &["code"]),
    p("specialty", Token, &["specialty"]),
    p("active", Token, &["active"]),
    p("date", Date, &["period"]),
    r("practitioner", &["practitioner"], &["Practitioner"]),
    r("organization", &["organization"], &["Organization"]),
];

const ORGANIZATION: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("name", Str, &["name", "alias"]),
    p("active", Token, &["active"]),
    p("type", Token, &["type"]),
    p("address", Str, &["address"]),
    r("partof", &["partOf"], &["Organization"]),
];

const ENCOUNTER: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("status", Token, &["status"]),
    p("class", Token, &["class"]),
    p("type", Token, &["type"]),
    p("date", Date, &["period"]),
    p("reason-code", Token, &["reasonCode"]),
    p("service-type", Token, &["serviceType"]),
    p("length", Quantity, &["length"]),
    r("patient", &["subject"], &["Patient"]),
    r("subject", &["subject"], &["Patient", "Group"]),
    r("participant", &["participant.individual"], &["Practitioner", "PractitionerRole", "RelatedPerson"]),
    r("practitioner", &["participant.individual"], &["Practitioner"]),
    r("service-provider", &["serviceProvider"], &["Organization"]),
    r("location", &["location.location"], &["Location"]),
    r("part-of", &["partOf"], &["Encounter"]),
    r("diagnosis", &["diagnosis.condition"], &["Condition", "Procedure"]),
];

const CONDITION: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("code", Token, &["code"]),
    p("clinical-status", Token, &["clinicalStatus"]),
    p("verification-status", Token, &["verificationStatus"]),
    p("category", Token, &["category"]),
    p("severity", Token, &["severity"]),
    p("body-site", Token, &["bodySite"]),
    p("onset-date", Date, &["onsetDateTime", "onsetPeriod"]),
    p("abatement-date", Date, &["abatementDateTime", "abatementPeriod"]),
    p("recorded-date", Date, &["recordedDate"]),
    r("patient", &["subject"], &["Patient"]),
    r("subject", &["subject"], &["Patient", "Group"]),
    r("encounter", &["encounter"], &["Encounter"]),
    r("asserter", &["asserter"], &["Practitioner", "PractitionerRole", "Patient", "RelatedPerson"]),
];

const ALLERGY_INTOLERANCE: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("code", Token, &["code", "reaction.substance"]),
    p("clinical-status", Token, &["clinicalStatus"]),
    p("verification-status", Token, &["verificationStatus"]),
    p("type", Token, &["type"]),
    p("category", Token, &["category"]),
    p("criticality", Token, &["criticality"]),
    p("manifestation", Token, &["reaction.manifestation"]),
    p("severity", Token, &["reaction.severity"]),
    p("date", Date, &["recordedDate"]),
    p("onset", Date, &["reaction.onset"]),
    p("last-date", Date, &["lastOccurrence"]),
    r("patient", &["patient"], &["Patient"]),
    r("recorder", &["recorder"], &["Practitioner", "PractitionerRole", "Patient", "RelatedPerson"]),
    r("asserter", &["asserter"], &["Practitioner", "PractitionerRole", "Patient", "RelatedPerson"]),
];

const OBSERVATION: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("code", Token, &["code"]),
    p("category", Token, &["category"]),
    p("status", Token, &["status"]),
    p("date", Date, &["effectiveDateTime", "effectivePeriod", "effectiveInstant"]),
    p("value-quantity", Quantity, &["valueQuantity"]),
    p("value-concept", Token, &["valueCodeableConcept"]),
    p("value-string", Str, &["valueString"]),
    p("value-date", Date, &["valueDateTime", "valuePeriod"]),
    p("component-code", Token, &["component.code"]),
    p("component-value-quantity", Quantity, &["component.valueQuantity"]),
    p("data-absent-reason", Token, &["dataAbsentReason"]),
    p("method", Token, &["method"]),
    r("patient", &["subject"], &["Patient"]),
    r("subject", &["subject"], &["Patient", "Group", "Device", "Location"]),
    r("encounter", &["encounter"], &["Encounter"]),
    r(
        "performer",
        &["performer"],
        &["Practitioner", "PractitionerRole", "Organization", "CareTeam", "Patient", "RelatedPerson"],
    ),
    r("based-on", &["basedOn"], &["ServiceRequest", "CarePlan", "MedicationRequest"]),
    r("specimen", &["specimen"], &["Specimen"]),
    r("derived-from", &["derivedFrom"], &[]),
    r("has-member", &["hasMember"], &["Observation"]),
    r("part-of", &["partOf"], &[]),
];

const DIAGNOSTIC_REPORT: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("code", Token, &["code"]),
    p("category", Token, &["category"]),
    p("status", Token, &["status"]),
    p("date", Date, &["effectiveDateTime", "effectivePeriod"]),
    p("issued", Date, &["issued"]),
    p("conclusion", Token, &["conclusionCode"]),
    r("patient", &["subject"], &["Patient"]),
    r("subject", &["subject"], &["Patient", "Group", "Device", "Location"]),
    r("encounter", &["encounter"], &["Encounter"]),
    r("result", &["result"], &["Observation"]),
    r("based-on", &["basedOn"], &["ServiceRequest", "CarePlan", "MedicationRequest"]),
    r("performer", &["performer"], &["Practitioner", "PractitionerRole", "Organization", "CareTeam"]),
    r(
        "results-interpreter",
        &["resultsInterpreter"],
        &["Practitioner", "PractitionerRole", "Organization", "CareTeam"],
    ),
    r("specimen", &["specimen"], &["Specimen"]),
];

const PROCEDURE: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("code", Token, &["code"]),
    p("status", Token, &["status"]),
    p("category", Token, &["category"]),
    p("reason-code", Token, &["reasonCode"]),
    p("date", Date, &["performedDateTime", "performedPeriod"]),
    r("patient", &["subject"], &["Patient"]),
    r("subject", &["subject"], &["Patient", "Group"]),
    r("encounter", &["encounter"], &["Encounter"]),
    r(
        "performer",
        &["performer.actor"],
        &["Practitioner", "PractitionerRole", "Organization", "Patient", "RelatedPerson", "Device"],
    ),
    r("based-on", &["basedOn"], &["ServiceRequest", "CarePlan"]),
    r(
        "reason-reference",
        &["reasonReference"],
        &["Condition", "Observation", "Procedure", "DiagnosticReport", "DocumentReference"],
    ),
];

const IMMUNIZATION: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("vaccine-code", Token, &["vaccineCode"]),
    p("status", Token, &["status"]),
    p("date", Date, &["occurrenceDateTime"]),
    p("lot-number", Str, &["lotNumber"]),
    r("patient", &["patient"], &["Patient"]),
    r("performer", &["performer.actor"], &["Practitioner", "PractitionerRole", "Organization"]),
];

const DOCUMENT_REFERENCE: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier", "masterIdentifier"]),
    p("status", Token, &["status"]),
    p("type", Token, &["type"]),
    p("category", Token, &["category"]),
    p("date", Date, &["date"]),
    p("period", Date, &["context.period"]),
    p("contenttype", Token, &["content.attachment.contentType"]),
    p("format", Token, &["content.format"]),
    p("description", Str, &["description"]),
    r("patient", &["subject"], &["Patient"]),
    r("subject", &["subject"], &["Patient", "Practitioner", "Group", "Device"]),
    r(
        "author",
        &["author"],
        &["Practitioner", "PractitionerRole", "Organization", "Device", "Patient", "RelatedPerson"],
    ),
    r("custodian", &["custodian"], &["Organization"]),
    r("encounter", &["context.encounter"], &["Encounter", "EpisodeOfCare"]),
    r("related", &["context.related"], &[]),
    r("relatesto", &["relatesTo.target"], &["DocumentReference"]),
];

const COMPOSITION: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("status", Token, &["status"]),
    p("type", Token, &["type"]),
    p("category", Token, &["category"]),
    p("date", Date, &["date"]),
    p("title", Str, &["title"]),
    p("section", Token, &["section.code"]),
    p("confidentiality", Token, &["confidentiality"]),
    r("patient", &["subject"], &["Patient"]),
    r("subject", &["subject"], &[]),
    r(
        "author",
        &["author"],
        &["Practitioner", "PractitionerRole", "Organization", "Device", "Patient", "RelatedPerson"],
    ),
    r("encounter", &["encounter"], &["Encounter"]),
    r(
        "attester",
        &["attester.party"],
        &["Practitioner", "PractitionerRole", "Organization", "Patient", "RelatedPerson"],
    ),
    r("entry", &["section.entry"], &[]),
];

const COVERAGE: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("status", Token, &["status"]),
    p("type", Token, &["type"]),
    p("dependent", Str, &["dependent"]),
    r("patient", &["beneficiary"], &["Patient"]),
    r("beneficiary", &["beneficiary"], &["Patient"]),
    r("subscriber", &["subscriber"], &["Patient", "RelatedPerson"]),
    r("policy-holder", &["policyHolder"], &["Patient", "RelatedPerson", "Organization"]),
    r("payor", &["payor"], &["Organization", "Patient", "RelatedPerson"]),
];

/// Lab and imaging orders (R4 `ServiceRequest`, request pattern).
const SERVICE_REQUEST: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("status", Token, &["status"]),
    p("intent", Token, &["intent"]),
    p("priority", Token, &["priority"]),
    p("category", Token, &["category"]),
    p("code", Token, &["code"]),
    p("body-site", Token, &["bodySite"]),
    p("performer-type", Token, &["performerType"]),
    p("requisition", Token, &["requisition"]),
    p("instantiates-uri", Uri, &["instantiatesUri"]),
    p("authored", Date, &["authoredOn"]),
    // R4 `ServiceRequest.occurrence`: dateTime, Period or Timing. A Timing contributes its
    // events and its bounding period, so the parameter repeats (see `is_single_valued_date`).
    p(
        "occurrence",
        Date,
        &["occurrenceDateTime", "occurrencePeriod", "occurrenceTiming.event", "occurrenceTiming.repeat.boundsPeriod"],
    ),
    r("patient", &["subject"], &["Patient"]),
    r("subject", &["subject"], &["Patient", "Group", "Location", "Device"]),
    r("encounter", &["encounter"], &["Encounter"]),
    r(
        "requester",
        &["requester"],
        &["Practitioner", "PractitionerRole", "Organization", "Patient", "RelatedPerson", "Device"],
    ),
    r(
        "performer",
        &["performer"],
        &[
            "Practitioner",
            "PractitionerRole",
            "Organization",
            "CareTeam",
            "HealthcareService",
            "Patient",
            "Device",
            "RelatedPerson",
        ],
    ),
    r("based-on", &["basedOn"], &["CarePlan", "ServiceRequest", "MedicationRequest"]),
    r("replaces", &["replaces"], &["ServiceRequest"]),
    r("specimen", &["specimen"], &["Specimen"]),
    // A canonical, not a Reference: indexed by URL (see `extract`).
    r("instantiates-canonical", &["instantiatesCanonical"], &["PlanDefinition", "ActivityDefinition"]),
];

/// Prescriptions and medication orders (R4 `MedicationRequest`).
const MEDICATION_REQUEST: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("status", Token, &["status"]),
    p("intent", Token, &["intent"]),
    p("priority", Token, &["priority"]),
    p("category", Token, &["category"]),
    p("code", Token, &["medicationCodeableConcept"]),
    p("intended-performertype", Token, &["performerType"]),
    p("authoredon", Date, &["authoredOn"]),
    // One value per timing event of every dosage instruction: a repeating parameter.
    p("date", Date, &["dosageInstruction.timing.event"]),
    r("patient", &["subject"], &["Patient"]),
    r("subject", &["subject"], &["Patient", "Group"]),
    r("encounter", &["encounter"], &["Encounter"]),
    r("medication", &["medicationReference"], &["Medication"]),
    r(
        "requester",
        &["requester"],
        &["Practitioner", "PractitionerRole", "Organization", "Patient", "RelatedPerson", "Device"],
    ),
    r(
        "intended-performer",
        &["performer"],
        &["Practitioner", "PractitionerRole", "Organization", "Patient", "Device", "RelatedPerson", "CareTeam"],
    ),
    r("intended-dispenser", &["dispenseRequest.performer"], &["Organization"]),
];

/// Dispensings (R4 `MedicationDispense`; the e-prescription service's 調剤結果 land here).
const MEDICATION_DISPENSE: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("status", Token, &["status"]),
    p("code", Token, &["medicationCodeableConcept"]),
    p("type", Token, &["type"]),
    p("whenhandedover", Date, &["whenHandedOver"]),
    p("whenprepared", Date, &["whenPrepared"]),
    r("patient", &["subject"], &["Patient"]),
    r("subject", &["subject"], &["Patient", "Group"]),
    r("context", &["context"], &["Encounter", "EpisodeOfCare"]),
    r("medication", &["medicationReference"], &["Medication"]),
    r("prescription", &["authorizingPrescription"], &["MedicationRequest"]),
    r(
        "performer",
        &["performer.actor"],
        &["Practitioner", "PractitionerRole", "Organization", "Patient", "Device", "RelatedPerson"],
    ),
    r("receiver", &["receiver"], &["Patient", "Practitioner"]),
    r("destination", &["destination"], &["Location"]),
    r("responsibleparty", &["substitution.responsibleParty"], &["Practitioner", "PractitionerRole"]),
];

const SPECIMEN: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("accession", Token, &["accessionIdentifier"]),
    p("status", Token, &["status"]),
    p("type", Token, &["type"]),
    p("bodysite", Token, &["collection.bodySite"]),
    p("container", Token, &["container.type"]),
    p("container-id", Token, &["container.identifier"]),
    p("collected", Date, &["collection.collectedDateTime", "collection.collectedPeriod"]),
    r("patient", &["subject"], &["Patient"]),
    r("subject", &["subject"], &["Patient", "Group", "Device", "Substance", "Location"]),
    r("collector", &["collection.collector"], &["Practitioner", "PractitionerRole"]),
    r("parent", &["parent"], &["Specimen"]),
];

const TASK: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("group-identifier", Token, &["groupIdentifier"]),
    p("status", Token, &["status"]),
    p("business-status", Token, &["businessStatus"]),
    p("intent", Token, &["intent"]),
    p("priority", Token, &["priority"]),
    p("code", Token, &["code"]),
    // R4 `Task-performer` is a token on `performerType`, not a reference.
    p("performer", Token, &["performerType"]),
    p("authored-on", Date, &["authoredOn"]),
    p("modified", Date, &["lastModified"]),
    p("period", Date, &["executionPeriod"]),
    r("patient", &["for"], &["Patient"]),
    r("subject", &["for"], &[]),
    r("focus", &["focus"], &[]),
    r("based-on", &["basedOn"], &[]),
    r("part-of", &["partOf"], &["Task"]),
    r("encounter", &["encounter"], &["Encounter"]),
    r(
        "owner",
        &["owner"],
        &[
            "Practitioner",
            "PractitionerRole",
            "Organization",
            "CareTeam",
            "HealthcareService",
            "Patient",
            "Device",
            "RelatedPerson",
        ],
    ),
    r(
        "requester",
        &["requester"],
        &["Practitioner", "PractitionerRole", "Organization", "Patient", "RelatedPerson", "Device"],
    ),
];

const SCHEDULE: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("active", Token, &["active"]),
    p("service-category", Token, &["serviceCategory"]),
    p("service-type", Token, &["serviceType"]),
    p("specialty", Token, &["specialty"]),
    p("date", Date, &["planningHorizon"]),
    r(
        "actor",
        &["actor"],
        &["Patient", "Practitioner", "PractitionerRole", "RelatedPerson", "Device", "HealthcareService", "Location"],
    ),
];

const SLOT: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("status", Token, &["status"]),
    p("service-category", Token, &["serviceCategory"]),
    p("service-type", Token, &["serviceType"]),
    p("specialty", Token, &["specialty"]),
    p("appointment-type", Token, &["appointmentType"]),
    p("start", Date, &["start"]),
    r("schedule", &["schedule"], &["Schedule"]),
];

const APPOINTMENT: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("status", Token, &["status"]),
    p("service-category", Token, &["serviceCategory"]),
    p("service-type", Token, &["serviceType"]),
    p("specialty", Token, &["specialty"]),
    p("appointment-type", Token, &["appointmentType"]),
    p("reason-code", Token, &["reasonCode"]),
    p("part-status", Token, &["participant.status"]),
    p("date", Date, &["start"]),
    r(
        "actor",
        &["participant.actor"],
        &["Patient", "Practitioner", "PractitionerRole", "RelatedPerson", "Device", "HealthcareService", "Location"],
    ),
    // R4: `participant.actor.where(resolve() is Patient)` and likewise for the next two; only
    // references to that type are indexed under them (see `extract`).
    r("patient", &["participant.actor"], &["Patient"]),
    r("practitioner", &["participant.actor"], &["Practitioner"]),
    r("location", &["participant.actor"], &["Location"]),
    r("slot", &["slot"], &["Slot"]),
    r("based-on", &["basedOn"], &["ServiceRequest"]),
    r(
        "reason-reference",
        &["reasonReference"],
        &["Condition", "Procedure", "Observation", "ImmunizationRecommendation"],
    ),
    r("supporting-info", &["supportingInformation"], &[]),
];

/// R4 `Group` (a list of patients and other members, e.g. the cohort of a `Group/[id]/$export`).
/// `characteristic-value` is a composite parameter, which the index does not support.
const GROUP: &[SearchParamDef] = &[
    p("identifier", Token, &["identifier"]),
    p("type", Token, &["type"]),
    p("code", Token, &["code"]),
    p("actual", Token, &["actual"]),
    p("characteristic", Token, &["characteristic.code"]),
    // R4 `Group.characteristic.value`, restricted to the choices a token can index.
    p("value", Token, &["characteristic.valueCodeableConcept", "characteristic.valueBoolean"]),
    p("exclude", Token, &["characteristic.exclude"]),
    r(
        "member",
        &["member.entity"],
        &["Patient", "Practitioner", "PractitionerRole", "Device", "Medication", "Substance", "Group"],
    ),
    r("managing-entity", &["managingEntity"], &["Organization", "RelatedPerson", "Practitioner", "PractitionerRole"]),
];

/// The AuditEvent parameters an audit review needs (who, what, which patient, when, from where,
/// outcome). The trail grows by one event per request, and every indexed value is an index row
/// written with it: the R4 parameters on entity and agent roles and types, names and policies
/// are left out on purpose (docs/security/audit.md).
const AUDIT_EVENT: &[SearchParamDef] = &[
    p("date", Date, &["recorded"]),
    p("type", Token, &["type"]),
    p("subtype", Token, &["subtype"]),
    p("action", Token, &["action"]),
    p("outcome", Token, &["outcome"]),
    p("altid", Token, &["agent.altId"]),
    p("address", Str, &["agent.network.address"]),
    r("agent", &["agent.who"], &[]),
    r("entity", &["entity.what"], &[]),
    r("source", &["source.observer"], &[]),
    // R4: `agent.who.where(resolve() is Patient) | entity.what.where(resolve() is Patient)`;
    // only references to a Patient are indexed under it (see `extract`).
    r("patient", &["agent.who", "entity.what"], &["Patient"]),
];

/// The search parameters of `resource_type` (type-specific ones, then the common ones), or an
/// empty list for a type this server does not index.
pub fn params_for(resource_type: &str) -> impl Iterator<Item = &'static SearchParamDef> {
    let specific: &'static [SearchParamDef] = match resource_type {
        "Patient" => PATIENT,
        "Practitioner" => PRACTITIONER,
        "PractitionerRole" => PRACTITIONER_ROLE,
        "Organization" => ORGANIZATION,
        "Encounter" => ENCOUNTER,
        "Condition" => CONDITION,
        "AllergyIntolerance" => ALLERGY_INTOLERANCE,
        "Observation" => OBSERVATION,
        "DiagnosticReport" => DIAGNOSTIC_REPORT,
        "Procedure" => PROCEDURE,
        "Immunization" => IMMUNIZATION,
        "DocumentReference" => DOCUMENT_REFERENCE,
        "Composition" => COMPOSITION,
        "Coverage" => COVERAGE,
        "AuditEvent" => AUDIT_EVENT,
        "ServiceRequest" => SERVICE_REQUEST,
        "MedicationRequest" => MEDICATION_REQUEST,
        "MedicationDispense" => MEDICATION_DISPENSE,
        "Specimen" => SPECIMEN,
        "Task" => TASK,
        "Schedule" => SCHEDULE,
        "Slot" => SLOT,
        "Appointment" => APPOINTMENT,
        "Group" => GROUP,
        _ => &[],
    };
    specific.iter().chain(COMMON.iter())
}

/// Whether every resource has at most one value for the date parameter `name` of
/// `resource_type`. For those, `birthdate=ge1980&birthdate=lt1981` may be matched as one range
/// on one value, which is what the criteria mean and lets one index range scan answer them.
pub fn is_single_valued_date(resource_type: &str, def: &SearchParamDef) -> bool {
    def.kind == ParamKind::Date && !REPEATING_DATES.contains(&(resource_type, def.name))
}

/// The date parameters a resource may hold several values of: `AllergyIntolerance.onset` (one
/// per reaction), `MedicationRequest.date` (one per timing event of every dosage instruction)
/// and `ServiceRequest.occurrence` (a Timing's events and bounds).
const REPEATING_DATES: &[(&str, &str)] =
    &[("AllergyIntolerance", "onset"), ("MedicationRequest", "date"), ("ServiceRequest", "occurrence")];

/// Looks up one parameter of a type by its code.
pub fn find_param(resource_type: &str, name: &str) -> Option<&'static SearchParamDef> {
    params_for(resource_type).find(|d| d.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every type `params_for` knows.
    const TYPES: &[&str] = &[
        "Patient",
        "Practitioner",
        "PractitionerRole",
        "Organization",
        "Encounter",
        "Condition",
        "AllergyIntolerance",
        "Observation",
        "DiagnosticReport",
        "Procedure",
        "Immunization",
        "DocumentReference",
        "Composition",
        "Coverage",
        "AuditEvent",
        "ServiceRequest",
        "MedicationRequest",
        "MedicationDispense",
        "Specimen",
        "Task",
        "Schedule",
        "Slot",
        "Appointment",
        "Group",
    ];

    #[test]
    fn parameter_codes_are_unique_per_type() {
        for t in TYPES {
            let names: Vec<_> = params_for(t).map(|d| d.name).collect();
            let mut dedup = names.clone();
            dedup.sort_unstable();
            dedup.dedup();
            assert_eq!(names.len(), dedup.len(), "{t}");
        }
    }

    #[test]
    fn definitions_are_well_formed() {
        for t in TYPES {
            assert!(params_for(t).count() > COMMON.len(), "{t} is not registered in params_for");
            for d in params_for(t) {
                assert!(!d.paths.is_empty() && d.paths.iter().all(|p| !p.is_empty()), "{t}.{}", d.name);
                assert!(
                    d.kind == ParamKind::Reference || d.targets.is_empty(),
                    "{t}.{}: targets on a non-reference",
                    d.name
                );
            }
        }
    }

    #[test]
    fn orders_types_have_their_r4_parameters() {
        // The R4 lists (http://hl7.org/fhir/R4/<type>.html#search), space-separated.
        let expected = [
            (
                "ServiceRequest",
                "identifier patient subject encounter status intent priority category code authored occurrence \
                 requester performer based-on replaces requisition specimen instantiates-canonical \
                 instantiates-uri body-site performer-type",
            ),
            (
                "MedicationRequest",
                "identifier patient subject encounter status intent priority category code medication authoredon \
                 requester intended-performer date intended-performertype intended-dispenser",
            ),
            (
                "Specimen",
                "identifier patient subject accession type status collected collector parent bodysite \
                 container-id container",
            ),
            (
                "Task",
                "identifier patient subject focus based-on status business-status intent priority code owner \
                 requester authored-on modified period part-of group-identifier performer encounter",
            ),
            ("Schedule", "identifier actor active date service-type service-category specialty"),
            ("Slot", "identifier schedule status start service-type service-category specialty appointment-type"),
            (
                "Appointment",
                "identifier patient actor practitioner location status date slot based-on service-type \
                 service-category specialty appointment-type reason-code reason-reference part-status \
                 supporting-info",
            ),
        ];
        for (t, names) in expected {
            let names: Vec<&str> = names.split_whitespace().collect();
            for name in &names {
                assert!(find_param(t, name).is_some(), "{t}.{name}");
            }
            // Nothing beyond the R4 list (and the common parameters).
            assert_eq!(params_for(t).count(), names.len() + COMMON.len(), "{t}");
        }
    }

    #[test]
    fn patient_parameters_only_index_patients() {
        for t in ["ServiceRequest", "MedicationRequest", "Specimen", "Task", "Appointment", "AuditEvent"] {
            let d = find_param(t, "patient").map(|d| (d.kind, d.targets));
            assert_eq!(d, Some((ParamKind::Reference, &["Patient"][..])), "{t}");
        }
        assert_eq!(find_param("Appointment", "patient").map(|d| d.paths), Some(&["participant.actor"][..]));
    }

    #[test]
    fn group_has_its_r4_parameters() {
        // http://hl7.org/fhir/R4/group.html#search, without the composite `characteristic-value`.
        let names = "identifier type code actual characteristic value exclude member managing-entity";
        for name in names.split_whitespace() {
            assert!(find_param("Group", name).is_some(), "Group.{name}");
        }
        assert_eq!(params_for("Group").count(), names.split_whitespace().count() + COMMON.len());
        let member = find_param("Group", "member").map(|d| (d.kind, d.paths));
        assert_eq!(member, Some((ParamKind::Reference, &["member.entity"][..])));

        let group = serde_json::json!({
            "resourceType": "Group", "type": "person", "actual": true,
            "code": {"coding": [{"system": "urn:example:cohort", "code": "ward-3"}]},
            "characteristic": [{"code": {"text": "in-patient"}, "valueBoolean": true, "exclude": false}],
            "managingEntity": {"reference": "Organization/o1"},
            "member": [
                {"entity": {"reference": "Patient/p1"}},
                {"entity": {"reference": "Patient/p2"}, "inactive": true},
                {"entity": {"reference": "Location/l1"}}
            ]
        });
        let entries = crate::search::extract("Group", &group);
        let refs = |param: &str| -> Vec<String> {
            entries
                .iter()
                .filter(|e| e.param == param)
                .filter_map(|e| match &e.value {
                    crate::search::IndexValue::Reference { target_type: Some(t), target_id: Some(i), .. } => {
                        Some(format!("{t}/{i}"))
                    }
                    _ => None,
                })
                .collect()
        };
        // A Location is not a possible member: not indexed under `member`.
        assert_eq!(refs("member"), ["Patient/p1", "Patient/p2"]);
        assert_eq!(refs("managing-entity"), ["Organization/o1"]);
        let tokens = |param: &str| entries.iter().filter(|e| e.param == param).count();
        assert_eq!(
            (tokens("type"), tokens("actual"), tokens("code"), tokens("value"), tokens("exclude")),
            (1, 1, 1, 1, 1)
        );
    }

    #[test]
    fn single_valued_dates() {
        let single = |t: &str, n: &str| find_param(t, n).is_some_and(|d| is_single_valued_date(t, d));
        assert!(single("Appointment", "date"));
        assert!(single("Slot", "start"));
        assert!(single("Schedule", "date"));
        assert!(single("Task", "period"));
        assert!(single("Specimen", "collected"));
        assert!(single("MedicationRequest", "authoredon"));
        assert!(!single("MedicationRequest", "date"));
        assert!(!single("ServiceRequest", "occurrence"));
        assert!(!single("AllergyIntolerance", "onset"));
        // Not a date parameter at all.
        assert!(!single("Appointment", "status"));
        for (t, n) in REPEATING_DATES {
            assert_eq!(find_param(t, n).map(|d| d.kind), Some(ParamKind::Date), "{t}.{n}");
        }
    }
}
