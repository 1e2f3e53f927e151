//! The laboratory side of the JAHIS messages: ORL^O34 answering an OML^O33 (written and read
//! back), and OUL^R22/ORU^R01 written from the types `parse_lab_results` reads.

use std::path::Path;

use ehr_hl7v2::jahis::JLAC10;
use ehr_hl7v2::{
    AckCode, AckError, Charset, Coding, ControlId, ErrorCode, Hl7Error, LabOrder, LabTest, Location, Message,
    MessageHeader, OrderControl, OrderResponse, OrlBuilder, OrlResponse, Patient, PersonName, ReplyCode, Sex, Specimen,
    SpecimenResponse, Timestamp, build_oml_o33, build_oru_r01, build_oul_r22, charset, parse_lab_results,
    parse_orl_o34,
};

fn order() -> LabOrder {
    LabOrder {
        patient: Patient {
            id: "0001000052".into(),
            kanji_name: Some(PersonName::new("山田", "太郎")),
            kana_name: Some(PersonName::new("ヤマダ", "タロウ")),
            birth_date: Some(Timestamp::new("19700405").unwrap()),
            sex: Some(Sex::Male),
            ..Patient::default()
        },
        placer_order_number: "000000011000354".into(),
        specimen: Specimen {
            id: Some("S0001".into()),
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
        ..LabOrder::default()
    }
}

fn header(charset: Charset, id: &str) -> MessageHeader {
    MessageHeader::new(
        ("HIS", "TORO_HOSP"),
        ("LABSYS", "LABCO"),
        ControlId::new(id).unwrap(),
        Timestamp::new("20240401093000+0900").unwrap(),
        charset,
    )
}

fn ids() -> (ControlId, Timestamp) {
    (ControlId::new("LAB0001").unwrap(), Timestamp::new("20240401093001+0900").unwrap())
}

fn accepted_response(order: &LabOrder) -> OrlResponse {
    OrlResponse {
        patient_id: order.patient.id.clone(),
        specimens: vec![SpecimenResponse {
            specimen: order.specimen.clone(),
            orders: order
                .tests
                .iter()
                .map(|test| OrderResponse {
                    control: OrderControl::Accepted,
                    placer_order_number: order.placer_order_number.clone(),
                    filler_order_number: Some("F0001".into()),
                    order_status: Some("SC".into()),
                    test: Some(test.clone()),
                })
                .collect(),
        }],
    }
}

#[test]
fn orl_o34_accepting_an_order_round_trips_in_iso_2022_jp() {
    let order = order();
    let oml = build_oml_o33(&order, &header(Charset::Iso2022Jp, "ORD0001")).unwrap();
    let original = Message::parse(&oml).unwrap();
    let (id, ts) = ids();
    let response = accepted_response(&order);
    let orl = OrlBuilder::new(&original, AckCode::Accept).response(response.clone()).build(&id, &ts).unwrap();

    let m = Message::parse(&orl).unwrap();
    let segments: Vec<_> = m.segments().map(|s| s.id()).collect();
    assert_eq!(segments, ["MSH", "MSA", "PID", "SPM", "ORC", "OBR", "ORC", "OBR"]);
    assert_eq!(m.get("MSH-9").unwrap(), Some("ORL^O34^ORL_O34"));
    assert_eq!(m.get("MSH-3").unwrap(), Some("LABSYS"));
    assert_eq!(m.get("MSH-5").unwrap(), Some("HIS"));
    assert_eq!(m.get("MSH-18").unwrap(), Some("~ISO IR87"));
    assert_eq!(m.get("MSA-1").unwrap(), Some("AA"));
    assert_eq!(m.get("MSA-2").unwrap(), Some("ORD0001"));
    assert_eq!(m.get("PID-3").unwrap(), Some("0001000052^^^^PI"));
    assert_eq!(m.get("SPM-4").unwrap(), Some("023^血清^JC10"));
    assert_eq!(m.get("ORC(1)").unwrap(), Some("ORC|OK|000000011000354|F0001||SC"));
    assert_eq!(m.get("OBR(1)-4").unwrap(), Some("3A010000002327101^総蛋白^JC10^L001^TP^99XYZ"));
    assert_eq!(m.get("OBR(2)-1").unwrap(), Some("2"));

    // On the wire in the order's character set, and read back by the order's sender.
    let wire = charset::encode_declared(&orl).unwrap();
    assert!(wire.windows(3).any(|w| w == b"\x1B$B"));
    let text = charset::decode(&wire).unwrap();
    let reply = parse_orl_o34(&Message::parse(&text).unwrap()).unwrap();
    assert_eq!(reply.ack.code, ReplyCode::ApplicationAccept);
    assert!(reply.ack.acknowledges(&ControlId::new("ORD0001").unwrap()));
    assert_eq!(reply.patient_id.as_deref(), Some("0001000052"));
    assert_eq!(reply.specimens, response.specimens);
    assert_eq!(reply.orders().count(), 2);
}

#[test]
fn orl_o34_with_errors_and_no_response_group() {
    let order = order();
    let oml = build_oml_o33(&order, &header(Charset::Utf8, "ORD0002")).unwrap();
    let original = Message::parse(&oml).unwrap();
    let (id, ts) = ids();
    let orl = OrlBuilder::new(&original, AckCode::Error)
        .error(
            AckError::new(ErrorCode::RequiredFieldMissing)
                .at(Location::field("PID", 3))
                .diagnostic("PID-3 is required"),
        )
        .error(AckError::new(ErrorCode::TableValueNotFound).at(Location::field("OBR", 4).occurrence(2)))
        .build(&id, &ts)
        .unwrap();
    let m = Message::parse(&orl).unwrap();
    assert_eq!(m.segments().map(|s| s.id()).collect::<Vec<_>>(), ["MSH", "MSA", "ERR", "ERR"]);
    assert_eq!(m.get("ERR(1)-2").unwrap(), Some("PID^1^3"));
    assert_eq!(m.get("ERR(2)-2").unwrap(), Some("OBR^2^4"));

    let reply = parse_orl_o34(&m).unwrap();
    assert_eq!(reply.ack.code, ReplyCode::ApplicationError);
    assert_eq!(reply.ack.errors.len(), 2);
    assert_eq!(reply.ack.errors[0].location, Some(Location::field("PID", 3)));
    assert_eq!(reply.ack.errors[0].error_code(), Some(ErrorCode::RequiredFieldMissing));
    assert_eq!(reply.ack.errors[0].diagnostic.as_deref(), Some("PID-3 is required"));
    assert_eq!(reply.ack.errors[1].location.as_ref().map(ToString::to_string).as_deref(), Some("OBR(2)-4"));
    assert_eq!(reply.patient_id, None);
    assert!(reply.specimens.is_empty());

    // An order refused with ORC-1 UA still names its orders.
    let mut response = accepted_response(&order);
    for o in &mut response.specimens[0].orders {
        o.control = OrderControl::UnableToAccept;
        o.filler_order_number = None;
        o.order_status = None;
    }
    let orl = OrlBuilder::new(&original, AckCode::Error).response(response).build(&id, &ts).unwrap();
    let reply = parse_orl_o34(&Message::parse(&orl).unwrap()).unwrap();
    assert!(reply.orders().all(|o| o.control == OrderControl::UnableToAccept && o.filler_order_number.is_none()));
    assert_eq!(OrderControl::from_code("ZZ"), OrderControl::Other("ZZ".into()));
}

#[test]
fn orl_o34_refuses_an_incomplete_response_and_reads_only_replies() {
    let oml = build_oml_o33(&order(), &header(Charset::Utf8, "ORD0003")).unwrap();
    let original = Message::parse(&oml).unwrap();
    let (id, ts) = ids();
    let location = |response: OrlResponse| {
        OrlBuilder::new(&original, AckCode::Accept)
            .response(response)
            .build(&id, &ts)
            .unwrap_err()
            .location()
            .map(ToString::to_string)
    };
    let mut response = accepted_response(&order());
    response.patient_id.clear();
    assert_eq!(location(response).as_deref(), Some("PID-3"));
    let mut response = accepted_response(&order());
    response.specimens.clear();
    assert_eq!(location(response).as_deref(), Some("SPM"));
    let mut response = accepted_response(&order());
    response.specimens[0].orders[1].placer_order_number.clear();
    assert_eq!(location(response).as_deref(), Some("ORC(2)-2"));

    let err = parse_orl_o34(&original).unwrap_err();
    assert!(matches!(err, Hl7Error::UnexpectedMessageType { .. }));
    let early = "MSH|^~\\&|LAB|LABCO|HIS|HOSP|20240401||ORL^O34^ORL_O34|A|P|2.5\rMSA|AA|ORD\rPID|1||1\rORC|OK|P1\r";
    let err = parse_orl_o34(&Message::parse(early).unwrap()).unwrap_err();
    assert_eq!(err.location(), Some(&Location::segment("ORC")));
    // A general ACK answering an order is read too.
    let ack = "MSH|^~\\&|LAB|LABCO|HIS|HOSP|20240401||ACK^O33^ACK|A|P|2.5\rMSA|AR|ORD\r";
    assert_eq!(parse_orl_o34(&Message::parse(ack).unwrap()).unwrap().ack.code, ReplyCode::ApplicationReject);
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
}

fn result_header(charset: Charset) -> MessageHeader {
    MessageHeader::new(
        ("LABSYS", "LABCO"),
        ("HIS", "TORO_HOSP"),
        ControlId::new("RES0002").unwrap(),
        Timestamp::new("20240401120000+0900").unwrap(),
        charset,
    )
}

#[test]
fn results_written_parse_back_to_their_input() {
    for (file, oul) in [("oul_r22_ssmix2_iso2022jp.hl7", true), ("oru_r01_ascii_lf.hl7", false)] {
        let raw = fixture(file);
        let text = charset::decode(&raw).unwrap();
        let original = parse_lab_results(&Message::parse(&text).unwrap()).unwrap();
        for charset in [Charset::Iso2022Jp, Charset::Utf8] {
            let header = result_header(charset);
            let built = if oul {
                build_oul_r22(&original.patient, &original.orders, &header)
            } else {
                build_oru_r01(&original.patient, &original.orders, &header)
            }
            .unwrap();
            let wire = charset::encode_declared(&built).unwrap();
            let decoded = charset::decode(&wire).unwrap();
            let parsed = parse_lab_results(&Message::parse(&decoded).unwrap()).unwrap();
            assert_eq!(parsed.control_id.as_str(), "RES0002", "{file}");
            assert_eq!(parsed.patient, original.patient, "{file}");
            assert_eq!(parsed.orders, original.orders, "{file}");
        }
    }
}

#[test]
fn oul_r22_groups_orders_by_specimen_and_refuses_missing_elements() {
    let raw = fixture("oul_r22_ssmix2_iso2022jp.hl7");
    let text = charset::decode(&raw).unwrap();
    let original = parse_lab_results(&Message::parse(&text).unwrap()).unwrap();
    let mut orders = vec![original.orders[0].clone(), original.orders[0].clone()];
    orders[1].placer_order_number = "000000011000355".into();
    let header = result_header(Charset::Utf8);
    let built = build_oul_r22(&original.patient, &orders, &header).unwrap();
    let m = Message::parse(&built).unwrap();
    let ids: Vec<_> = m.segments().map(|s| s.id()).collect();
    assert_eq!(ids, ["MSH", "PID", "SPM", "OBR", "ORC", "OBX", "OBX", "OBR", "ORC", "OBX", "OBX"]);
    assert_eq!(m.get("MSH-9").unwrap(), Some("OUL^R22^OUL_R22"));
    assert_eq!(m.get("OBR(2)-1").unwrap(), Some("2"));
    assert_eq!(m.get("OBX(2)-3").unwrap(), Some("3A010000002327101^総蛋白^JC10"));

    let mut no_specimen = orders.clone();
    no_specimen[1].specimen = None;
    let err = build_oul_r22(&original.patient, &no_specimen, &header).unwrap_err();
    assert_eq!(err.location().map(ToString::to_string).as_deref(), Some("SPM(2)"));
    let mut no_status = orders.clone();
    no_status[1].observations[1].status.clear();
    let err = build_oul_r22(&original.patient, &no_status, &header).unwrap_err();
    assert_eq!(err.location().map(ToString::to_string).as_deref(), Some("OBX(4)-11"));
    let mut anonymous = original.patient.clone();
    anonymous.id.clear();
    let err = build_oru_r01(&anonymous, &orders, &header).unwrap_err();
    assert_eq!(err.location().map(ToString::to_string).as_deref(), Some("PID-3"));
    assert!(build_oru_r01(&original.patient, &[], &header).is_err());
}
