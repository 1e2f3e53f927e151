//! The FHIR R4 XML representation: JSON ⇄ XML (being written; see issue #5).
