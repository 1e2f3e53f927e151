//! Unit tests of the XML codec: the R4 XML rules one by one, rejections, and a generated
//! round-trip property over every element of every resource type with a definition.

use serde_json::{Map, Value, json};

use super::{Shape, from_xml, from_xml_bytes, is_extension, shape, to_xml};
use crate::FhirError;
use crate::validate::definitions;
use crate::validate::model::{TypeDef, is_primitive};

const DECL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>";

fn xml_err(xml: &str) -> String {
    match from_xml(xml) {
        Err(FhirError::Xml(m)) => m,
        other => panic!("expected an XML error, got {other:?}"),
    }
}

fn round_trip(v: &Value) -> String {
    let xml = to_xml(v).unwrap();
    let back = from_xml(&xml).unwrap_or_else(|e| panic!("{e}\n{xml}"));
    assert_eq!(&back, v, "\n{xml}");
    xml
}

#[test]
fn primitives_with_ids_and_extensions_merge_into_one_element() {
    let p = json!({
        "resourceType": "Patient",
        "id": "p1",
        "active": true,
        "name": [{"family": "山田", "given": ["花子", null, "B"],
                  "_given": [null, {"extension": [{"url": "http://example.org/kana", "valueString": "ハナコ"}]}, {"id": "g3"}]}],
        "birthDate": "1980-04-01",
        "_birthDate": {"id": "b1", "extension": [{"url": "http://example.org/time", "valueTime": "10:00:00"}]},
    });
    let xml = round_trip(&p);
    assert_eq!(
        xml,
        format!(
            "{DECL}<Patient xmlns=\"http://hl7.org/fhir\"><id value=\"p1\"/><active value=\"true\"/><name>\
             <family value=\"山田\"/><given value=\"花子\"/><given><extension url=\"http://example.org/kana\">\
             <valueString value=\"ハナコ\"/></extension></given><given id=\"g3\" value=\"B\"/></name>\
             <birthDate id=\"b1\" value=\"1980-04-01\"><extension url=\"http://example.org/time\">\
             <valueTime value=\"10:00:00\"/></extension></birthDate></Patient>"
        )
    );
}

#[test]
fn inherited_elements_come_first_in_definition_order() {
    let obs = json!({
        "resourceType": "Observation",
        "status": "final",
        "modifierExtension": [{"url": "http://example.org/m", "valueBoolean": true}],
        "code": {"text": "x"},
        "extension": [{"url": "http://example.org/e", "valueInteger": 1}],
        "contained": [{"resourceType": "Patient", "id": "c1"}],
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
        "language": "ja",
        "implicitRules": "http://example.org/rules",
        "meta": {"versionId": "1"},
        "id": "o1",
    });
    let xml = round_trip(&obs);
    let order = [
        "<id ",
        "<meta>",
        "<implicitRules ",
        "<language ",
        "<text>",
        "<contained>",
        "<extension url=\"http://example.org/e\"",
        "<modifierExtension ",
        "<status value=\"final\"",
        "<code>",
    ];
    let positions: Vec<usize> = order.iter().map(|s| xml.find(s).unwrap_or_else(|| panic!("{s} in {xml}"))).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{xml}");
}

#[test]
fn backbone_elements_of_hand_tables_put_extensions_first() {
    let dr = json!({
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"text": "x"},
        "media": [{"link": {"reference": "Media/1"}, "comment": "c",
                   "modifierExtension": [{"url": "http://example.org/m", "valueString": "m"}],
                   "extension": [{"url": "http://example.org/e", "valueString": "e"}], "id": "m1"}],
    });
    let xml = round_trip(&dr);
    assert!(
        xml.contains(
            "<media id=\"m1\"><extension url=\"http://example.org/e\"><valueString value=\"e\"/></extension>\
             <modifierExtension url=\"http://example.org/m\"><valueString value=\"m\"/></modifierExtension>\
             <comment value=\"c\"/><link><reference value=\"Media/1\"/></link></media>"
        ),
        "{xml}"
    );
    // Data types: Element's extension before the type's own elements.
    let t = json!({"resourceType": "Task", "status": "draft", "intent": "order",
        "restriction": {"period": {"end": "2024-01-01", "start": "2023-01-01", "extension": [{"url": "http://example.org/p", "valueCode": "x"}]}}});
    let xml = round_trip(&t);
    assert!(
        xml.contains("<period><extension url=\"http://example.org/p\"><valueCode value=\"x\"/></extension><start value=\"2023-01-01\"/><end value=\"2024-01-01\"/></period>"),
        "{xml}"
    );
}

#[test]
fn choice_elements_keep_their_json_names_and_types() {
    let obs = json!({
        "resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "effectiveDateTime": "2024-01-01T10:00:00+09:00",
        "valueQuantity": {"value": 1.5, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"},
        "component": [
            {"code": {"text": "a"}, "valueInteger": 7},
            {"code": {"text": "b"}, "valueBoolean": false},
            {"code": {"text": "c"}, "valueRange": {"low": {"value": 0}, "high": {"value": 10.25}}},
        ],
    });
    let xml = round_trip(&obs);
    assert!(xml.contains("<valueQuantity><value value=\"1.5\"/>"), "{xml}");
    assert!(xml.contains("<valueInteger value=\"7\"/>"), "{xml}");
    let back = from_xml(&xml).unwrap();
    assert!(back["component"][0]["valueInteger"].is_i64());
    assert!(back["component"][1]["valueBoolean"].is_boolean());
    assert!(back["valueQuantity"]["value"].is_f64());
}

#[test]
fn element_ids_and_extension_urls_are_attributes_but_resource_ids_are_elements() {
    let p = json!({"resourceType": "Patient", "id": "p1",
        "identifier": [{"id": "i1", "system": "urn:x", "value": "1"}],
        "extension": [{"id": "e1", "url": "http://example.org/a", "extension": [{"url": "inner", "valueCode": "c"}]}]});
    let xml = round_trip(&p);
    assert!(xml.contains("<id value=\"p1\"/>"), "{xml}");
    assert!(xml.contains("<identifier id=\"i1\">"), "{xml}");
    assert!(xml.contains("<extension id=\"e1\" url=\"http://example.org/a\"><extension url=\"inner\">"), "{xml}");
    // The XML forms are required when reading.
    let bad_url = format!(
        "{DECL}<Patient xmlns=\"http://hl7.org/fhir\"><extension><url value=\"http://x\"/><valueString value=\"a\"/></extension></Patient>"
    );
    assert!(xml_err(&bad_url).contains("url must be an XML attribute"));
    let bad_id = format!(
        "{DECL}<Patient xmlns=\"http://hl7.org/fhir\"><identifier><id value=\"1\"/><value value=\"a\"/></identifier></Patient>"
    );
    assert!(xml_err(&bad_id).contains("id must be an XML attribute"));
    let resource_id_attr = format!("{DECL}<Patient xmlns=\"http://hl7.org/fhir\" id=\"p1\"/>");
    assert!(xml_err(&resource_id_attr).contains("attribute id is not allowed"));
}

#[test]
fn narrative_div_is_written_and_captured_raw() {
    let div = "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p class=\"x\">山田 &amp; <b>花子</b><br/>&lt;1&gt; &#169;</p><!-- c --></div>";
    let p = json!({"resourceType": "Patient", "text": {"status": "generated", "div": div}});
    let xml = round_trip(&p);
    assert!(xml.contains(div), "{xml}");
    // A div whose namespace is declared with a prefix on an ancestor gets the declaration.
    let prefixed = format!(
        "{DECL}<Patient xmlns=\"http://hl7.org/fhir\" xmlns:h=\"http://www.w3.org/1999/xhtml\"><text><status value=\"generated\"/>\
         <h:div><h:p>a</h:p></h:div></text></Patient>"
    );
    let v = from_xml(&prefixed).unwrap();
    assert_eq!(v["text"]["div"], "<h:div xmlns:h=\"http://www.w3.org/1999/xhtml\"><h:p>a</h:p></h:div>");
    // Whitespace and comments before the div are not part of it.
    let spaced = format!(
        "{DECL}<Patient xmlns=\"http://hl7.org/fhir\">\n <text>\n  <status value=\"generated\"/>\n  <!-- c -->\n  \
         <div xmlns=\"http://www.w3.org/1999/xhtml\">\n   <p>a</p>\n  </div>\n </text>\n</Patient>"
    );
    assert_eq!(
        from_xml(&spaced).unwrap()["text"]["div"],
        "<div xmlns=\"http://www.w3.org/1999/xhtml\">\n   <p>a</p>\n  </div>"
    );
    let empty_div = format!(
        "{DECL}<Patient xmlns=\"http://hl7.org/fhir\"><text><status value=\"empty\"/> <div xmlns=\"http://www.w3.org/1999/xhtml\"/></text></Patient>"
    );
    assert_eq!(from_xml(&empty_div).unwrap()["text"]["div"], "<div xmlns=\"http://www.w3.org/1999/xhtml\"/>");
    // CRLF line ends are normalised as XML parsers do.
    let crlf = format!(
        "{DECL}<Patient xmlns=\"http://hl7.org/fhir\"><text><status value=\"generated\"/><div xmlns=\"http://www.w3.org/1999/xhtml\">a\r\nb</div></text></Patient>"
    );
    assert_eq!(from_xml(&crlf).unwrap()["text"]["div"], "<div xmlns=\"http://www.w3.org/1999/xhtml\">a\nb</div>");
    // A JSON div without the namespace gets it in XML (otherwise it would be a FHIR element).
    let bare = json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<div>a</div>"}});
    let xml = to_xml(&bare).unwrap();
    assert!(xml.contains("<div xmlns=\"http://www.w3.org/1999/xhtml\">a</div>"), "{xml}");
    // A div that XML cannot carry as it is is refused.
    for div in [
        "<div xmlns=\"http://www.w3.org/1999/xhtml\">a &nbsp; b</div>",
        "<div>a</div><p/>",
        "<div><p>a</div>",
        "<p>a</p>",
    ] {
        let v = json!({"resourceType": "Patient", "text": {"status": "generated", "div": div}});
        let e = to_xml(&v).unwrap_err().to_string();
        assert!(e.contains("Patient.text.div"), "{div}: {e}");
    }
    // The div must be XHTML, not FHIR.
    let fhir_div = format!(
        "{DECL}<Patient xmlns=\"http://hl7.org/fhir\"><text><status value=\"generated\"/><div>a</div></text></Patient>"
    );
    assert!(xml_err(&fhir_div).contains("XHTML namespace"));
}

#[test]
fn contained_and_nested_resources() {
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction-response",
        "entry": [
            {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "id": "1",
                "contained": [{"resourceType": "Organization", "id": "o", "name": "病院"}],
                "managingOrganization": {"reference": "#o"}},
             "response": {"status": "201 Created", "etag": "W/\"1\"",
                "outcome": {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational", "diagnostics": "ok"}]}}},
        ],
    });
    let xml = round_trip(&bundle);
    assert!(xml.contains("<resource><Patient><id value=\"1\"/><contained><Organization><id value=\"o\"/>"), "{xml}");
    assert!(xml.contains("<outcome><OperationOutcome><issue><severity value=\"information\"/>"), "{xml}");
    let params = json!({
        "resourceType": "Parameters",
        "parameter": [
            {"name": "code", "valueCode": "1"},
            {"name": "coding", "valueCoding": {"system": "urn:x", "code": "y"}},
            {"name": "match", "part": [{"name": "concept", "valueString": "z"}, {"name": "deep", "part": [{"name": "x", "valueBoolean": true}]}]},
            {"name": "return", "resource": {"resourceType": "Patient", "active": false}},
        ],
    });
    round_trip(&params);
    let group = json!({"resourceType": "Group", "type": "person", "actual": true, "quantity": 2,
        "characteristic": [{"code": {"text": "x"}, "valueBoolean": true, "exclude": false}],
        "member": [{"entity": {"reference": "Patient/1"}}, {"entity": {"reference": "Patient/2"}, "inactive": true}]});
    round_trip(&group);
}

#[test]
fn xml_lists_become_json_arrays_and_primitives_get_json_types() {
    let xml = format!(
        "{DECL}<!-- a comment --><Patient xmlns=\"http://hl7.org/fhir\">\n  <active value=\"false\"/>\n  \
         <name><given value=\"A\"/></name><!-- inside -->\n  <multipleBirthInteger value=\"2\"/></Patient>\n"
    );
    let v = from_xml(&xml).unwrap();
    assert_eq!(
        v,
        json!({"resourceType": "Patient", "active": false, "name": [{"given": ["A"]}], "multipleBirthInteger": 2})
    );
    let t = format!(
        "{DECL}<Timing xmlns=\"http://hl7.org/fhir\"/>" // not a resource
    );
    assert!(xml_err(&t).contains("not a FHIR resource type"));
    let numbers = format!(
        "{DECL}<Appointment xmlns=\"http://hl7.org/fhir\"><status value=\"booked\"/><priority value=\"0\"/>\
         <minutesDuration value=\"15\"/><participant><status value=\"accepted\"/></participant></Appointment>"
    );
    let v = from_xml(&numbers).unwrap();
    assert_eq!(v["priority"], json!(0));
    assert_eq!(v["minutesDuration"], json!(15));
    let dec = format!(
        "{DECL}<Observation xmlns=\"http://hl7.org/fhir\"><status value=\"final\"/><code><text value=\"x\"/></code>\
         <valueQuantity><value value=\"-0.50e2\"/></valueQuantity></Observation>"
    );
    assert_eq!(from_xml(&dec).unwrap()["valueQuantity"]["value"], json!(-50.0));
    for (ty_elem, bad) in [
        ("<active value=\"yes\"/>", "not a valid boolean"),
        ("<multipleBirthInteger value=\"01\"/>", "not a valid integer"),
        ("<multipleBirthInteger value=\"1.0\"/>", "not a valid integer"),
        ("<multipleBirthInteger value=\"99999999999999999999\"/>", "out of range"),
        ("<active value=\"\"/>", "must not be empty"),
        ("<active/>", "neither a value nor extensions"),
    ] {
        let xml = format!("{DECL}<Patient xmlns=\"http://hl7.org/fhir\">{ty_elem}</Patient>");
        let e = xml_err(&xml);
        assert!(e.contains(bad), "{ty_elem}: {e}");
    }
}

#[test]
fn attribute_values_are_escaped_and_normalised() {
    let s = "a & b < c > d \" e ' f\ng\th\ri ※";
    let p = json!({"resourceType": "Patient", "name": [{"text": s}]});
    let xml = round_trip(&p);
    assert!(xml.contains("value=\"a &amp; b &lt; c &gt; d &quot; e ' f&#10;g&#9;h&#13;i ※\""), "{xml}");
    // Literal whitespace in an attribute is a space (XML attribute-value normalisation).
    let lit =
        format!("{DECL}<Patient xmlns=\"http://hl7.org/fhir\"><name><text value=\"a\r\nb\tc\"/></name></Patient>");
    assert_eq!(from_xml(&lit).unwrap()["name"][0]["text"], "a b c");
    // Characters XML cannot carry are refused, naming the element only.
    let p = json!({"resourceType": "Patient", "name": [{"text": "secret\u{1}name"}]});
    let e = to_xml(&p).unwrap_err().to_string();
    assert!(e.contains("Patient.name.text") && !e.contains("secret"), "{e}");
    let bad_ref =
        format!("{DECL}<Patient xmlns=\"http://hl7.org/fhir\"><name><text value=\"a&#1;\"/></name></Patient>");
    assert!(xml_err(&bad_ref).contains("character"));
}

#[test]
fn hostile_and_foreign_documents_are_rejected() {
    let cases: &[(&str, &str)] = &[
        ("<Patient><active value=\"true\"/></Patient>", "FHIR namespace"),
        ("<Patient xmlns=\"http://hl7.org/fhir/other\"/>", "FHIR namespace"),
        ("<f:Patient xmlns:f=\"urn:other\"/>", "FHIR namespace"),
        (
            "<Patient xmlns=\"http://hl7.org/fhir\"><active xmlns=\"urn:x\" value=\"true\"/></Patient>",
            "not in the FHIR namespace",
        ),
        (
            "<!DOCTYPE Patient [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><Patient xmlns=\"http://hl7.org/fhir\"><name><text value=\"&x;\"/></name></Patient>",
            "DTD",
        ),
        (
            "<!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;\">]><Patient xmlns=\"http://hl7.org/fhir\"/>",
            "DTD",
        ),
        (
            "<Patient xmlns=\"http://hl7.org/fhir\"><name><text value=\"&undefined;\"/></name></Patient>",
            "undefined entity",
        ),
        ("<?xml-stylesheet href=\"x.xsl\"?><Patient xmlns=\"http://hl7.org/fhir\"/>", "processing instructions"),
        ("<Patient xmlns=\"http://hl7.org/fhir\"><?php x?></Patient>", "processing instructions"),
        ("<Patient xmlns=\"http://hl7.org/fhir\"><foo value=\"1\"/></Patient>", "unknown element foo"),
        (
            "<Patient xmlns=\"http://hl7.org/fhir\"><name><family value=\"a\"/><nickname value=\"b\"/></name></Patient>",
            "unknown element nickname",
        ),
        ("<Patient xmlns=\"http://hl7.org/fhir\">山田花子</Patient>", "text content"),
        ("<Patient xmlns=\"http://hl7.org/fhir\"><gender>female</gender></Patient>", "text content"),
        ("<Patient xmlns=\"http://hl7.org/fhir\"><gender value=\"female\" foo=\"1\"/></Patient>", "attribute foo"),
        (
            "<Patient xmlns=\"http://hl7.org/fhir\"><gender value=\"female\"/><gender value=\"male\"/></Patient>",
            "more than once",
        ),
        (
            "<Patient xmlns=\"http://hl7.org/fhir\"><deceasedBoolean value=\"true\"/><deceasedDateTime value=\"2020\"/></Patient>",
            "more than once",
        ),
        ("<Pateint xmlns=\"http://hl7.org/fhir\"/>", "not a FHIR resource type"),
        ("<CapabilityStatement xmlns=\"http://hl7.org/fhir\"/>", "not supported in XML"),
        ("<Patient xmlns=\"http://hl7.org/fhir\"><name></Patient>", "malformed XML"),
        ("<Patient xmlns=\"http://hl7.org/fhir\">", "unexpected end"),
        ("", "no root element"),
        ("<Patient xmlns=\"http://hl7.org/fhir\"/><Patient xmlns=\"http://hl7.org/fhir\"/>", "after the root element"),
        ("<Patient xmlns=\"http://hl7.org/fhir\"><contained/></Patient>", "must contain a resource"),
        (
            "<Patient xmlns=\"http://hl7.org/fhir\"><contained><Patient/><Patient/></contained></Patient>",
            "exactly one resource",
        ),
        ("<Patient xmlns=\"http://hl7.org/fhir\"><name/></Patient>", "no content"),
    ];
    for (body, want) in cases {
        let e = xml_err(&format!("{DECL}{body}"));
        assert!(e.contains(want), "{body}: expected `{want}` in `{e}`");
        assert!(e.starts_with("line "), "{e}");
        assert!(!e.contains("山田") && !e.contains("passwd") && !e.contains("female"), "content leaked: {e}");
    }
    assert!(
        xml_err("<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><Patient xmlns=\"http://hl7.org/fhir\"/>")
            .contains("UTF-8")
    );
    assert!(
        xml_err("<Patient xmlns=\"http://hl7.org/fhir\"/><?xml version=\"1.0\"?>").contains("processing instructions")
    );
    assert!(
        xml_err("<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\"/>\u{1}</Patient>").contains("line 1")
    );
    let deep = format!(
        "<Patient xmlns=\"http://hl7.org/fhir\">{}{}</Patient>",
        "<extension url=\"u\">".repeat(200),
        "</extension>".repeat(200)
    );
    assert!(xml_err(&deep).contains("nested more than"));
    // The line of the offending element is reported.
    let e = xml_err(&format!(
        "{DECL}\n<Patient xmlns=\"http://hl7.org/fhir\">\n  <active value=\"true\"/>\n  <bogus/>\n</Patient>"
    ));
    assert!(e.starts_with("line 4: Patient: unknown element bogus"), "{e}");
}

#[test]
fn prefixes_schema_locations_and_bytes_are_accepted() {
    let xml = "<f:Patient xmlns:f=\"http://hl7.org/fhir\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
               xsi:schemaLocation=\"http://hl7.org/fhir ../../schema/patient.xsd\"><f:active value=\"true\"/></f:Patient>";
    assert_eq!(from_xml(xml).unwrap(), json!({"resourceType": "Patient", "active": true}));
    let bom = format!("\u{feff}{DECL}<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\"/></Patient>");
    assert_eq!(from_xml_bytes(bom.as_bytes()).unwrap()["active"], true);
    let latin1 = b"<Patient xmlns=\"http://hl7.org/fhir\"><name><text value=\"\xe9\"/></name></Patient>";
    assert!(matches!(from_xml_bytes(latin1), Err(FhirError::Xml(m)) if m.contains("UTF-8")));
}

#[test]
fn types_without_definitions_use_json_order_and_are_not_read() {
    let cs = json!({
        "resourceType": "CapabilityStatement", "status": "active", "date": "2024-01-01", "kind": "instance",
        "fhirVersion": "4.0.1", "format": ["application/fhir+json", "application/fhir+xml"],
        "rest": [{"mode": "server", "resource": [{"type": "Patient", "interaction": [{"code": "read"}], "readHistory": true,
                  "searchParam": [{"name": "_id", "type": "token"}]}]}],
        "extension": [{"url": "http://example.org/x", "valueString": "y"}],
    });
    let xml = to_xml(&cs).unwrap();
    assert_eq!(
        xml,
        format!(
            "{DECL}<CapabilityStatement xmlns=\"http://hl7.org/fhir\"><status value=\"active\"/><date value=\"2024-01-01\"/>\
             <kind value=\"instance\"/><fhirVersion value=\"4.0.1\"/><format value=\"application/fhir+json\"/>\
             <format value=\"application/fhir+xml\"/><rest><mode value=\"server\"/><resource><type value=\"Patient\"/>\
             <interaction><code value=\"read\"/></interaction><readHistory value=\"true\"/><searchParam>\
             <name value=\"_id\"/><type value=\"token\"/></searchParam></resource></rest>\
             <extension url=\"http://example.org/x\"><valueString value=\"y\"/></extension></CapabilityStatement>"
        )
    );
    assert!(
        matches!(from_xml(&xml), Err(FhirError::Xml(m)) if m.contains("CapabilityStatement is not supported in XML"))
    );
}

#[test]
fn json_that_does_not_fit_the_definitions_is_refused() {
    for (v, want) in [
        (json!({"resourceType": "Patient", "nickname": "x"}), "Patient: unknown element nickname"),
        (json!({"resourceType": "Patient", "name": {"family": "x"}}), "Patient.name: the element repeats"),
        (json!({"resourceType": "Patient", "gender": ["female"]}), "Patient.gender: the element does not repeat"),
        (json!({"resourceType": "Patient", "active": {"x": 1}}), "Patient.active: a primitive value"),
        (json!({"resourceType": "Patient", "name": [{}]}), "Patient.name: the element must not be an empty"),
        (json!({"resourceType": "Patient", "_name": [{}]}), "only allowed for primitive"),
        (json!({"resourceType": 1}), "resourceType is missing"),
        (json!({"resourceType": "<x>"}), "resourceType is not a resource type name"),
        (json!([]), "a resource must be a JSON object"),
    ] {
        let e = to_xml(&v).unwrap_err().to_string();
        assert!(e.contains(want), "{v}: {e}");
    }
}

#[test]
fn operation_outcomes_of_this_server_round_trip() {
    let issue = ehr_core::Issue::error(ehr_core::IssueType::Invalid, "EHR-FHIR-004", "line 1: bad".to_string())
        .at("Patient.name");
    let oo = ehr_core::operation_outcome(&[issue]);
    let xml = round_trip(&oo);
    assert!(xml.contains("<expression value=\"Patient.name\"/>"), "{xml}");
}

// ---- generated round trip over every element of every defined resource type ----

/// Builds resources that use every element of a definition (choice types rotating with
/// `variant`), with ids, extensions and `null` placeholders on primitives.
struct Gen {
    variant: usize,
    serial: usize,
}

const TRICKY: &str = "a&b<c>\"d'\n\t\re 山田 \u{1F600}";

impl Gen {
    fn resource(&mut self, rt: &str, depth: usize) -> Value {
        let defs = definitions();
        let mut m = Map::new();
        m.insert("resourceType".into(), json!(rt));
        if let Some(td) = defs.types.get(rt) {
            self.fill(td, 0, &mut m, true, depth);
        }
        Value::Object(m)
    }

    fn usable_any(t: &str) -> bool {
        let defs = definitions();
        !matches!(
            t,
            "xhtml"
                | "Resource"
                | "DomainResource"
                | "Element"
                | "BackboneElement"
                | "Narrative"
                | "Extension"
                | "SimpleQuantity"
                | "MoneyQuantity"
        ) && (is_primitive(t) || defs.types.contains_key(t))
    }

    fn fill(&mut self, td: &'static TypeDef, idx: usize, m: &mut Map<String, Value>, is_resource: bool, depth: usize) {
        let defs = definitions();
        for &ci in td.children(idx) {
            let Some(node) = td.nodes.get(ci) else { continue };
            self.serial += 1;
            if !is_resource && node.name == "id" {
                m.insert("id".into(), json!(format!("e{}", self.serial)));
                continue;
            }
            if is_extension(td, idx) && node.name == "url" {
                m.insert("url".into(), json!("http://example.org/ext?a=1&b=2"));
                continue;
            }
            let types: Vec<&'static str> = if node.types.iter().any(|t| t == "*") {
                defs.all_types.iter().map(String::as_str).filter(|t| Self::usable_any(t)).collect()
            } else {
                node.types.iter().map(String::as_str).collect()
            };
            let tcode = if node.choice {
                match types.get((self.variant * 7 + self.serial) % types.len().max(1)) {
                    Some(t) => *t,
                    None => continue,
                }
            } else {
                types.first().copied().unwrap_or("")
            };
            let key = if node.choice {
                let mut c = tcode.chars();
                let first = c.next().map(|f| f.to_ascii_uppercase().to_string()).unwrap_or_default();
                format!("{}{first}{}", node.name, c.as_str())
            } else {
                node.name.clone()
            };
            let repeats = node.max.repeats();
            match shape(defs, td, ci, tcode) {
                Shape::Primitive(t) => {
                    let v = self.primitive(t);
                    if repeats {
                        m.insert(key.clone(), json!([v, null, v]));
                        m.insert(format!("_{key}"), json!([null, self.prim_ext(depth), {"id": "x"}]));
                    } else {
                        m.insert(key.clone(), v);
                        if self.serial.is_multiple_of(3) {
                            m.insert(format!("_{key}"), self.prim_ext(depth));
                        }
                    }
                }
                Shape::Xhtml => {
                    m.insert(key, json!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>x &amp; y</p></div>"));
                }
                Shape::Resource if depth < 2 => {
                    let r =
                        self.resource(if self.serial.is_multiple_of(2) { "Patient" } else { "Parameters" }, depth + 1);
                    m.insert(key, if repeats { json!([r]) } else { r });
                }
                Shape::Complex(dt, di) if depth < 3 => {
                    let mut inner = Map::new();
                    self.fill(dt, di, &mut inner, false, depth + 1);
                    if !inner.is_empty() {
                        let v = Value::Object(inner);
                        m.insert(
                            key,
                            if repeats && depth == 0 {
                                json!([v.clone(), v])
                            } else if repeats {
                                json!([v])
                            } else {
                                v
                            },
                        );
                    }
                }
                _ => {}
            }
        }
    }

    fn prim_ext(&mut self, depth: usize) -> Value {
        if depth < 3 {
            json!({"id": format!("x{}", self.serial), "extension": [{"url": "http://example.org/p", "valueString": TRICKY}]})
        } else {
            json!({"id": "x"})
        }
    }

    fn primitive(&self, t: &str) -> Value {
        match t {
            "boolean" => json!(self.serial.is_multiple_of(2)),
            "integer" => json!(-3),
            "positiveInt" => json!(5),
            "unsignedInt" => json!(0),
            "decimal" if self.variant.is_multiple_of(2) => json!(1.25),
            "decimal" => json!(10),
            "code" | "id" => json!("c-1"),
            _ => json!(TRICKY),
        }
    }
}

#[test]
fn every_element_of_every_defined_resource_round_trips() {
    let defs = definitions();
    let mut types: Vec<&String> = defs.resource_types.iter().collect();
    types.sort();
    assert!(types.iter().any(|t| *t == "Group") && types.iter().any(|t| *t == "OperationOutcome"));
    let mut checked = 0;
    let mut bytes = 0;
    for rt in types {
        for variant in 0..6 {
            let mut g = Gen { variant, serial: 0 };
            let v = g.resource(rt, 0);
            let xml = to_xml(&v).unwrap_or_else(|e| panic!("{rt} variant {variant}: {e}"));
            let back = from_xml(&xml).unwrap_or_else(|e| panic!("{rt} variant {variant}: {e}\n{xml}"));
            assert_eq!(back, v, "{rt} variant {variant}\n{xml}");
            checked += 1;
            bytes += xml.len();
        }
    }
    eprintln!("{checked} documents, {bytes} bytes");
    assert!(checked > 150, "{checked}");
}

#[test]
fn attribute_and_namespace_floods_are_refused_in_linear_time() {
    use std::time::{Duration, Instant};
    let started = Instant::now();
    // One start tag with 200,000 namespace declarations (about 3 MB): quick-xml's duplicate
    // check alone is quadratic in them, over a minute of CPU before the bound.
    let declarations: String = (0..200_000).map(|i| format!(" xmlns:p{i}=\"urn:x\"")).collect();
    let flood =
        format!("{DECL}<Patient xmlns=\"http://hl7.org/fhir\"{declarations}><active value=\"true\"/></Patient>");
    assert!(xml_err(&flood).contains("more than 64 attributes"));
    // The same inside the narrative, whose elements are otherwise taken as they are.
    let attrs: String = (0..200_000).map(|i| format!(" a{i}=\"x\"")).collect();
    let flood = format!(
        "{DECL}<Patient xmlns=\"http://hl7.org/fhir\"><text><status value=\"generated\"/>\
         <div xmlns=\"http://www.w3.org/1999/xhtml\"><p{attrs}/></div></text></Patient>"
    );
    assert!(xml_err(&flood).contains("more than 64 attributes"));
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // Declarations accumulating along the nesting: every element name is resolved against all
    // of them.
    let ten: String = (0..10).map(|i| format!(" xmlns:p{i}=\"urn:x\"")).collect();
    let nested = format!(
        "{DECL}<Patient xmlns=\"http://hl7.org/fhir\">{}{}</Patient>",
        format!("<extension url=\"u\"{ten}>").repeat(8),
        "</extension>".repeat(8)
    );
    assert!(xml_err(&nested).contains("more than 64 namespace declarations in scope"));
    // Siblings do not add up: declarations leave scope with their element.
    let siblings = format!(
        "{DECL}<Patient xmlns=\"http://hl7.org/fhir\">{}</Patient>",
        format!("<identifier{ten}><value value=\"1\"/></identifier>").repeat(20)
    );
    assert_eq!(from_xml(&siblings).unwrap()["identifier"].as_array().map(Vec::len), Some(20));
}

#[test]
fn narrative_attributes_must_be_well_formed_in_both_directions() {
    for (div, why) in [
        ("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p class=\"a\" class=\"b\">x</p></div>", "given twice"),
        ("<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"&xxe;\">x</a></div>", "undefined entity"),
        ("<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"&#0;\">x</a></div>", "character"),
    ] {
        // Read: the document is refused, naming the problem.
        let doc = format!(
            "{DECL}<Patient xmlns=\"http://hl7.org/fhir\"><text><status value=\"generated\"/>{div}</text></Patient>"
        );
        let e = xml_err(&doc);
        assert!(e.contains(why), "{div}: {e}");
        // Written: refused rather than sent as a document no XML parser reads.
        let v = json!({"resourceType": "Patient", "text": {"status": "generated", "div": div}});
        let e = to_xml(&v).unwrap_err().to_string();
        assert!(e.contains("Patient.text.div") && e.contains("attribute"), "{div}: {e}");
    }
    // Ordinary attributes, entities and character references pass.
    let div = "<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"x?a=1&amp;b=&#x32;\" title=\"&quot;\">x</a></div>";
    let v = json!({"resourceType": "Patient", "text": {"status": "generated", "div": div}});
    round_trip(&v);
}
