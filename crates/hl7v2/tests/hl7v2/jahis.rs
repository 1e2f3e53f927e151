//! The typed JAHIS lab messages: the SS-MIX2 OUL^R22 fixture read field by field, an OML^O33
//! for a Japanese patient written and read back (UTF-8 and ISO-2022-JP), and the typed errors
//! that become ERR segments.

use std::path::Path;

use ehr_core::Classify;
use ehr_hl7v2::jahis::JLAC10;
use ehr_hl7v2::{
    AckBuilder, AckCode, Charset, Coding, ControlId, ErrorCode, Hl7Error, LabOrder, LabTest, Location, Message,
    MessageHeader, Patient, PersonName, Provider, Sex, Specimen, Timestamp, build_oml_o33, charset, parse_lab_results,
};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
}

#[test]
fn ssmix2_oul_r22_fixture() {
    let raw = fixture("oul_r22_ssmix2_iso2022jp.hl7");
    let text = charset::decode(&raw).unwrap();
    let message = Message::parse(&text).unwrap();
    let results = parse_lab_results(&message).unwrap();

    assert_eq!(results.message_type.to_string(), "OUL^R22^OUL_R22");
    assert_eq!(results.control_id.as_str(), "20111220131032");
    let patient = &results.patient;
    assert_eq!(patient.id, "0001000052");
    assert_eq!(patient.kanji_name, Some(PersonName::new("患者", "太郎")));
    assert_eq!(patient.kana_name, Some(PersonName::new("カンジャ", "タロウ")));
    assert_eq!(patient.birth_date.as_ref().map(Timestamp::as_str), Some("19700405"));
    assert_eq!(patient.sex, Some(Sex::Male));

    assert_eq!(results.orders.len(), 1);
    let order = &results.orders[0];
    assert_eq!(order.placer_order_number, "000000011000354");
    assert_eq!(order.filler_order_number, "000000001219001");
    assert_eq!(order.service.primary, Coding::new("E001", "血液学的検査", "99O03"));
    assert_eq!(order.service.local().map(|c| c.code.as_str()), Some("E001"));
    assert_eq!(order.order_control.as_deref(), Some("SC"));
    assert_eq!(order.order_status.as_deref(), Some("CM"));
    let specimen = order.specimen.as_ref().unwrap();
    assert_eq!(specimen.id.as_deref(), Some("000000001219001"));
    assert_eq!(specimen.kind, Coding::new("023", "血清", JLAC10));
    assert_eq!(specimen.collected_at.as_ref().map(Timestamp::as_str), Some("201112191500"));

    assert_eq!(order.observations.len(), 2);
    let ag = &order.observations[0];
    assert_eq!(ag.set_id, "1");
    assert_eq!(ag.value_type, "NM");
    assert_eq!(ag.code.primary, Coding::new("3A016000002327102", "A/G比", "JC10"));
    assert_eq!(ag.values, ["1.7"]);
    assert_eq!(ag.units, None);
    assert_eq!(ag.reference_range.as_deref(), Some("1.2-2.0"));
    assert!(ag.abnormal_flags.is_empty());
    assert_eq!(ag.status, "F");
    let tp = &order.observations[1];
    assert_eq!(tp.code.jlac10().map(|c| c.code.as_str()), Some("3A010000002327101"));
    assert_eq!(tp.code.primary.text, "総蛋白");
    assert_eq!(tp.values, ["7.2"]);
    assert_eq!(tp.units, Some(Coding::new("g/dl", "g/dl", "99XYZ")));
    assert_eq!(tp.reference_range.as_deref(), Some("6.70-8.3"));
    assert_eq!(tp.observed_at.as_ref().map(Timestamp::as_str), Some("201112191500"));
    assert_eq!(results.observations().count(), 2);
}

#[test]
fn ascii_oru_r01_fixture() {
    let raw = fixture("oru_r01_ascii_lf.hl7");
    let text = charset::decode(&raw).unwrap();
    let results = parse_lab_results(&Message::parse(&text).unwrap()).unwrap();
    assert_eq!(results.patient.alphabetic_name, Some(PersonName::new("YAMADA", "TARO")));
    assert_eq!(results.patient.kanji_name, None);
    let order = &results.orders[0];
    assert_eq!(
        (order.placer_order_number.as_str(), order.filler_order_number.as_str()),
        ("000000011000354", "L000123")
    );
    assert_eq!(order.result_status.as_deref(), Some("F"));
    assert_eq!(order.specimen, None);
    let obx: Vec<_> = order.observations.iter().map(|o| (o.value_type.as_str(), o.values.clone())).collect();
    assert_eq!(obx[0], ("NM", vec!["7.2".to_owned()]));
    assert_eq!(order.observations[0].abnormal_flags, ["N"]);
    assert_eq!(obx[2], ("FT", vec!["line1\nline2".to_owned(), "second repetition".to_owned()]));
}

fn yamada_order() -> LabOrder {
    LabOrder {
        patient: Patient {
            id: "0001000052".into(),
            kanji_name: Some(PersonName::new("山田", "太郎")),
            kana_name: Some(PersonName::new("ヤマダ", "タロウ")),
            birth_date: Some(Timestamp::new("19700405").unwrap()),
            sex: Some(Sex::Male),
            ..Patient::default()
        },
        patient_class: Some("O".into()),
        placer_order_number: "000000011000354".into(),
        ordering_facility: Some("登呂病院".into()),
        department: Some(Coding::new("01", "内科", "99XY1")),
        ordering_provider: Some(Provider { id: "607".into(), name: PersonName::new("医師", "一郎") }),
        specimen: Specimen {
            id: Some("000000001219001".into()),
            kind: Coding::new("023", "血清", JLAC10),
            collected_at: Some(Timestamp::new("20240401090000").unwrap()),
        },
        tests: vec![
            LabTest {
                jlac10: "3A010000002327101".into(),
                name: "総蛋白".into(),
                local: Some(Coding::new("L001", "TP", "99XYZ")),
            },
            LabTest { jlac10: "3A016000002327102".into(), name: "A/G比".into(), local: None },
        ],
        priority: Some("R".into()),
    }
}

fn header(charset: Charset) -> MessageHeader {
    MessageHeader::new(
        ("HIS", "TORO_HOSP"),
        ("LABSYS", "LABCO"),
        ControlId::new("ORD20240401000001").unwrap(),
        Timestamp::new("20240401093000+0900").unwrap(),
        charset,
    )
}

#[test]
fn oml_o33_for_a_japanese_patient() {
    let text = build_oml_o33(&yamada_order(), &header(Charset::Utf8)).unwrap();
    let m = Message::parse(&text).unwrap();
    let ids: Vec<_> = m.segments().map(|s| s.id()).collect();
    assert_eq!(ids, ["MSH", "PID", "PV1", "SPM", "ORC", "TQ1", "OBR", "ORC", "TQ1", "OBR"]);
    assert_eq!(m.message_type().unwrap().to_string(), "OML^O33^OML_O33");
    assert_eq!(m.version(), Some("2.5"));
    assert_eq!(m.get("MSH-18").unwrap(), Some("UNICODE UTF-8"));
    assert_eq!(m.get("MSH-20").unwrap(), Some(""));
    assert_eq!(m.control_id().unwrap().as_str(), "ORD20240401000001");

    assert_eq!(m.get("PID-3").unwrap(), Some("0001000052^^^^PI"));
    assert_eq!(m.get("PID-5(1)").unwrap(), Some("山田^太郎^^^^^L^I"));
    assert_eq!(m.get("PID-5(2)").unwrap(), Some("ヤマダ^タロウ^^^^^L^P"));
    assert_eq!(m.get("PID-5(2)-8").unwrap(), Some("P"));
    assert_eq!(m.get("PID-7").unwrap(), Some("19700405"));
    assert_eq!(m.get("PID-8").unwrap(), Some("M"));
    assert_eq!(m.get("PV1-2").unwrap(), Some("O"));

    assert_eq!(m.get("SPM-2").unwrap(), Some("000000001219001"));
    assert_eq!(m.get("SPM-4").unwrap(), Some("023^血清^JC10"));
    assert_eq!(m.get("SPM-17").unwrap(), Some("20240401090000"));

    assert_eq!(m.get("ORC-1").unwrap(), Some("NW"));
    assert_eq!(m.get("ORC-2").unwrap(), Some("000000011000354"));
    assert_eq!(m.get("ORC-9").unwrap(), Some("20240401093000+0900"));
    assert_eq!(m.get("ORC-12").unwrap(), Some("607^医師^一郎^^^^^^^L^^^^^I"));
    assert_eq!(m.get("ORC-17").unwrap(), Some("01^内科^99XY1"));
    assert_eq!(m.get("ORC-21").unwrap(), Some("登呂病院"));
    assert_eq!(m.get("ORC-29").unwrap(), Some("O^外来患者オーダ^HL70482"));
    assert_eq!(m.get("TQ1-9").unwrap(), Some("R"));

    assert_eq!(m.get("OBR(1)-1").unwrap(), Some("1"));
    assert_eq!(m.get("OBR(1)-4").unwrap(), Some("3A010000002327101^総蛋白^JC10^L001^TP^99XYZ"));
    assert_eq!(m.get("OBR(1)-4-3").unwrap(), Some("JC10"));
    assert_eq!(m.get("OBR(2)-4").unwrap(), Some("3A016000002327102^A/G比^JC10"));
    assert_eq!(m.get("OBR(2)-2").unwrap(), Some("000000011000354"));
    assert_eq!(m.get("OBR(2)-16-1").unwrap(), Some("607"));

    // The ORC positions of the SS-MIX2 sample (jp-standards §D.1).
    let raw = fixture("oul_r22_ssmix2_iso2022jp.hl7");
    let text = charset::decode(&raw).unwrap();
    let sample = Message::parse(&text).unwrap();
    for path in ["ORC-17", "ORC-29", "SPM-4", "PID-3", "PID-7", "PID-8", "PV1-2"] {
        assert_eq!(m.get(path).unwrap(), sample.get(path).unwrap(), "{path}");
    }
    assert_eq!(sample.get("ORC-21").unwrap(), Some("登呂病院"));
}

#[test]
fn oml_o33_round_trips_through_iso_2022_jp() {
    let mut order = yamada_order();
    order.patient_class = None;
    order.priority = None;
    let text = build_oml_o33(&order, &header(Charset::Iso2022Jp)).unwrap();
    assert!(text.starts_with("MSH|^~\\&|HIS|TORO_HOSP|LABSYS|LABCO|20240401093000+0900||OML^O33^OML_O33|"));
    let wire = charset::encode(&text, Charset::Iso2022Jp).unwrap();
    assert!(wire.is_ascii(), "ISO-2022-JP is 7-bit");
    assert!(wire.windows(3).any(|w| w == b"\x1b$B"), "kanji are in JIS X 0208");
    assert_eq!(charset::detect(&wire).unwrap(), Charset::Iso2022Jp);
    let decoded = charset::decode(&wire).unwrap();
    assert_eq!(decoded, text);

    let m = Message::parse(&decoded).unwrap();
    assert_eq!(m.charset().unwrap(), Charset::Iso2022Jp);
    assert_eq!(m.get("MSH-18").unwrap(), Some("~ISO IR87"));
    assert_eq!(m.get("MSH-20").unwrap(), Some("ISO 2022-1994"));
    let ids: Vec<_> = m.segments().map(|s| s.id()).collect();
    assert_eq!(ids, ["MSH", "PID", "SPM", "ORC", "OBR", "ORC", "OBR"]);
    assert_eq!(m.get("PID-5(1)-1").unwrap(), Some("山田"));
    assert_eq!(m.get("PID-5(2)-2").unwrap(), Some("タロウ"));
    assert_eq!(m.get("OBR(2)-4-2").unwrap(), Some("A/G比"));
    assert_eq!(m.get("ORC-29").unwrap(), Some(""));
}

#[test]
fn oml_o33_refuses_incomplete_orders() {
    let h = header(Charset::Utf8);
    let location = |order: &LabOrder| build_oml_o33(order, &h).unwrap_err().location().map(ToString::to_string);

    let mut order = yamada_order();
    order.patient.id.clear();
    assert_eq!(location(&order).as_deref(), Some("PID-3"));
    let mut order = yamada_order();
    order.placer_order_number.clear();
    assert_eq!(location(&order).as_deref(), Some("ORC-2"));
    let mut order = yamada_order();
    order.specimen.kind.code.clear();
    assert_eq!(location(&order).as_deref(), Some("SPM-4"));
    let mut order = yamada_order();
    order.tests.clear();
    assert_eq!(location(&order).as_deref(), Some("OBR"));
    let mut order = yamada_order();
    order.tests[1].jlac10 = "3A0160".into();
    let err = build_oml_o33(&order, &h).unwrap_err();
    assert!(matches!(err, Hl7Error::InvalidValue { .. }));
    assert_eq!(err.location().map(ToString::to_string).as_deref(), Some("OBR(2)-4-1"));
    // Kanji outside JIS X 0208 cannot go out as ISO-2022-JP: the encoder refuses it.
    let mut order = yamada_order();
    order.patient.kanji_name = Some(PersonName::new("𠮷田", "太郎"));
    let text = build_oml_o33(&order, &header(Charset::Iso2022Jp)).unwrap();
    assert!(matches!(charset::encode(&text, Charset::Iso2022Jp), Err(Hl7Error::Unmappable { .. })));
}

const OUL: &str = "MSH|^~\\&|LAB|LABCO|HIS|TORO|20240401120000||OUL^R22^OUL_R22|R1|P|2.5\r\
PID|1||0001000052^^^^PI||山田^太郎^^^^^L^I\r\
SPM|1|S1||023^血清^JC10|||||||||||||20240401090000\r\
OBR|1|000000011000354|L1|3A010000002327101^総蛋白^JC10\r\
OBX|1|NM|3A010000002327101^総蛋白^JC10||7.2|g/dL^g/dL^99XYZ|6.7-8.3|N|||F\r";

/// Parses `OUL` with one segment replaced (by its first 4 characters) and returns the error.
fn error_with(prefix: &str, replacement: &str) -> Hl7Error {
    let text: String = OUL
        .split('\r')
        .filter(|s| !s.is_empty())
        .map(|s| if s.starts_with(prefix) { replacement.to_owned() } else { s.to_owned() } + "\r")
        .collect();
    parse_lab_results(&Message::parse(&text).unwrap()).unwrap_err()
}

#[test]
fn results_errors_name_the_field() {
    assert!(parse_lab_results(&Message::parse(OUL).unwrap()).is_ok());

    // OBX without OBX-3: required field missing at OBX-3, ERR-3 101.
    let err = error_with("OBX|", "OBX|1|NM|||7.2||||||F");
    assert!(matches!(err, Hl7Error::RequiredMissing { .. }), "{err:?}");
    assert_eq!(err.location(), Some(&Location::field("OBX", 3)));
    assert_eq!(err.to_string(), "OBX-3 is required but missing");
    assert_eq!(err.code(), "EHR-HL7-019");
    let ack_error = err.to_ack_error();
    assert_eq!(ack_error.code(), ErrorCode::RequiredFieldMissing);
    assert_eq!(ack_error.location(), Some(&Location::field("OBX", 3)));

    // The AE acknowledgment names the field in ERR-2.
    let original = Message::parse(OUL).unwrap();
    let ack = AckBuilder::new(&original, AckCode::Error)
        .error(ack_error)
        .build(&ControlId::new("A1").unwrap(), &Timestamp::new("20240401120001").unwrap())
        .unwrap();
    let ack = Message::parse(&ack).unwrap();
    assert_eq!(ack.get("MSA-1").unwrap(), Some("AE"));
    assert_eq!(ack.get("ERR-2").unwrap(), Some("OBX^1^3"));
    assert_eq!(ack.get("ERR-3-1").unwrap(), Some("101"));

    // The second OBX is OBX(2); a code without its identifier is OBX-3-1.
    let two = OUL.to_owned() + "OBX|2|NM|^総蛋白^JC10||7.2||||||F\r";
    let err = parse_lab_results(&Message::parse(&two).unwrap()).unwrap_err();
    assert_eq!(err.location().map(ToString::to_string).as_deref(), Some("OBX(2)-3-1"));

    let cases = [
        ("OBX|", "OBX|1||3A010000002327101^総蛋白^JC10||7.2||||||F", "OBX-2"),
        ("OBX|", "OBX|1|XX|3A010000002327101^総蛋白^JC10||7.2||||||F", "OBX-2"),
        ("OBX|", "OBX|1|NM|3A010000002327101^総蛋白^JC10||high|||||F", "OBX-5(1)"),
        ("OBX|", "OBX|1|NM|3A010000002327101^総蛋白^JC10||7.2", "OBX-11"),
        ("OBX|", "OBX|1|NM|3A010000002327101^総蛋白^JC10||7.2|||||Q", "OBX-11"),
        ("OBX|", "OBX|1|NM|3A010000002327101^総蛋白^JC10||7.2||||||F|||2024-04-01", "OBX-14"),
        ("PID|", "PID|1||^^^^PI||山田^太郎", "PID-3-1"),
        ("PID|", "PID|1||0001000052^^^^PI||||19700405|X", "PID-8"),
        ("SPM|", "SPM|1|S1", "SPM-4"),
        ("SPM|", "SPM|1|S1||023^血清^JC10|||||||||||||yesterday", "SPM-17-1"),
        ("OBR|", "OBR|1|000000011000354|L1", "OBR-4"),
        ("SPM|", "NTE|1", "OBR"),
        ("PID|", "NTE|1", "PID"),
    ];
    for (prefix, replacement, expected) in cases {
        let err = error_with(prefix, replacement);
        assert_eq!(err.location().map(ToString::to_string).as_deref(), Some(expected), "{replacement}: {err}");
    }
    assert!(matches!(error_with("SPM|", "NTE|1"), Hl7Error::SegmentOutOfOrder { .. }));

    // OBX before any OBR: segment sequence error, ERR-3 100.
    let early = OUL.replace("OBR|1|000000011000354|L1|3A010000002327101^総蛋白^JC10\r", "");
    let err = parse_lab_results(&Message::parse(&early).unwrap()).unwrap_err();
    assert_eq!(err.to_ack_error().code(), ErrorCode::SegmentSequenceError);
    assert_eq!(err.location(), Some(&Location::segment("OBX")));

    // Not a result message.
    let oml = build_oml_o33(&yamada_order(), &header(Charset::Utf8)).unwrap();
    let err = parse_lab_results(&Message::parse(&oml).unwrap()).unwrap_err();
    assert!(matches!(err, Hl7Error::UnexpectedMessageType { .. }));
    assert_eq!(err.to_ack_error().code(), ErrorCode::UnsupportedMessageType);
}

#[test]
fn oru_r01_orc_before_obr_and_spm_after() {
    let text = "MSH|^~\\&|LAB|LABCO|HIS|TORO|20240401120000||ORU^R01^ORU_R01|R2|P|2.5|||||~ISO IR87||ISO 2022-1994\r\
PID|1||0001000052^^^^PI||山田^太郎^^^^^L^I~ヤマダ^タロウ^^^^^L^P\r\
ORC|SC|000000011000354|L1||CM\r\
OBR|1|||3A010000002327101^総蛋白^JC10^L001^TP^99XYZ|||||||||||||||||||F\r\
OBX|1|NM|L001^TP^99XYZ^3A010000002327101^総蛋白^JC10||8.9|g/dL^g/dL^99XYZ|6.7-8.3|H~A|||C|||20240401115500\r\
SPM|1|S1||023^血清^JC10\r";
    let results = parse_lab_results(&Message::parse(text).unwrap()).unwrap();
    assert_eq!(results.patient.kana_name, Some(PersonName::new("ヤマダ", "タロウ")));
    let order = &results.orders[0];
    assert_eq!((order.placer_order_number.as_str(), order.filler_order_number.as_str()), ("000000011000354", "L1"));
    assert_eq!((order.order_control.as_deref(), order.order_status.as_deref()), (Some("SC"), Some("CM")));
    assert_eq!(order.service.jlac10().map(|c| c.code.as_str()), Some("3A010000002327101"));
    assert_eq!(order.service.local(), Some(&Coding::new("L001", "TP", "99XYZ")));
    assert_eq!(order.specimen.as_ref().map(|s| s.kind.code.as_str()), Some("023"));
    let obx = &order.observations[0];
    assert_eq!(obx.code.local().map(|c| c.code.as_str()), Some("L001"));
    assert_eq!(obx.code.jlac10().map(|c| c.text.as_str()), Some("総蛋白"));
    assert_eq!(obx.abnormal_flags, ["H", "A"]);
    assert_eq!(obx.status, "C");
    assert_eq!(obx.observed_at.as_ref().map(Timestamp::as_str), Some("20240401115500"));
}
