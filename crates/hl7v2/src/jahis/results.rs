//! Results out: OUL^R22 and ORU^R01 as a laboratory writes them, from the same types
//! [`parse_lab_results`](super::parse_lab_results) reads into, so a message built here parses
//! back to its input.
//!
//! - OUL^R22 (HL7 v2.5 §7.3.6, the SS-MIX2 form): `MSH PID {SPM {OBR [ORC] {OBX}}}`; orders
//!   that follow each other with the same specimen share one SPM group.
//! - ORU^R01 (§7.3.1): `MSH PID {[ORC] OBR {OBX} [SPM]}`.

use crate::builder::{MessageBuilder, SegmentBuilder};
use crate::error::{Hl7Error, Result};
use crate::types::Location;

use super::{CodedElement, Coding, MessageHeader, Observation, OrderResults, Patient, Specimen, name_components};

/// OBX-2 value types whose values are composite: their components are written as components,
/// not escaped into one text (the reader gives them back joined by `^`).
const COMPOSITE_VALUE_TYPES: &[&str] = &["CE", "CWE", "CF", "CX", "SN", "ED", "RP", "MA"];

/// Writes the results of one or more orders as OUL^R22 (JAHIS 臨床検査データ交換規約 results,
/// HL7 v2.5 §7.3.6), ready for [`crate::charset::encode`] in `header.charset`.
///
/// Required, with the location the value would have had: PID-3; each order's specimen and its
/// SPM-4; OBR-4; each OBX's OBX-3 and OBX-11.
pub fn build_oul_r22(patient: &Patient, orders: &[OrderResults], header: &MessageHeader) -> Result<String> {
    let mut message = start(patient, orders, header, ["OUL", "R22", "OUL_R22"])?;
    let mut counts = Counts::default();
    let mut current: Option<&Specimen> = None;
    for (i, order) in orders.iter().enumerate() {
        let specimen = order
            .specimen
            .as_ref()
            .ok_or(Hl7Error::RequiredMissing { location: Location::segment("SPM").occurrence(counts.spm + 1) })?;
        if current != Some(specimen) {
            counts.spm += 1;
            message.push(spm(specimen, counts.spm)?);
            current = Some(specimen);
        }
        counts.obr += 1;
        message.push(obr(order, i + 1, counts.obr, header)?);
        if order.order_control.is_some() {
            message.push(orc(order, header));
        }
        push_observations(&mut message, order, &mut counts)?;
    }
    message.build()
}

/// Writes the results of one or more orders as ORU^R01 (HL7 v2.5 §7.3.1), the specimen after
/// each order's observations.
///
/// Required as for [`build_oul_r22`], except that the specimen is optional.
pub fn build_oru_r01(patient: &Patient, orders: &[OrderResults], header: &MessageHeader) -> Result<String> {
    let mut message = start(patient, orders, header, ["ORU", "R01", "ORU_R01"])?;
    let mut counts = Counts::default();
    for (i, order) in orders.iter().enumerate() {
        if order.order_control.is_some() {
            message.push(orc(order, header));
        }
        counts.obr += 1;
        message.push(obr(order, i + 1, counts.obr, header)?);
        push_observations(&mut message, order, &mut counts)?;
        if let Some(specimen) = &order.specimen {
            counts.spm += 1;
            message.push(spm(specimen, counts.spm)?);
        }
    }
    message.build()
}

/// Occurrences written so far, for error locations.
#[derive(Default)]
struct Counts {
    spm: usize,
    obr: usize,
    obx: usize,
}

fn start(
    patient: &Patient,
    orders: &[OrderResults],
    header: &MessageHeader,
    message_type: [&str; 3],
) -> Result<MessageBuilder> {
    super::required(&patient.id, Location::field("PID", 3))?;
    if orders.is_empty() {
        return Err(Hl7Error::RequiredMissing { location: Location::segment("OBR") });
    }
    let mut message = MessageBuilder::default().segment(header.msh(message_type));
    let mut pid = SegmentBuilder::new("PID").field(1, "1").set(3, 1, 1, 1, &patient.id).set(3, 1, 5, 1, "PI");
    for (name, code) in [(&patient.kanji_name, "I"), (&patient.kana_name, "P"), (&patient.alphabetic_name, "A")] {
        if let Some(name) = name {
            pid = pid.repetition(5, name_components(name, code));
        }
    }
    if let Some(birth) = &patient.birth_date {
        pid = pid.field(7, birth.as_str());
    }
    if let Some(sex) = patient.sex {
        pid = pid.field(8, sex.code());
    }
    message.push(pid);
    Ok(message)
}

fn coding_components(coding: &Coding) -> [&str; 3] {
    [&coding.code, &coding.text, &coding.system]
}

fn coded(segment: SegmentBuilder, n: usize, element: &CodedElement) -> SegmentBuilder {
    let mut segment = segment.components(n, coding_components(&element.primary));
    if let Some(alternate) = &element.alternate {
        for (i, value) in coding_components(alternate).into_iter().enumerate() {
            segment = segment.set(n, 1, 4 + i, 1, value);
        }
    }
    segment
}

fn spm(specimen: &Specimen, occurrence: usize) -> Result<SegmentBuilder> {
    super::required(&specimen.kind.code, Location::field("SPM", 4).occurrence(occurrence))?;
    let mut spm =
        SegmentBuilder::new("SPM").field(1, occurrence.to_string()).components(4, coding_components(&specimen.kind));
    if let Some(id) = &specimen.id {
        spm = spm.field(2, id);
    }
    if let Some(at) = &specimen.collected_at {
        spm = spm.field(17, at.as_str());
    }
    Ok(spm)
}

/// OBR: OBR-1 set id, OBR-2/3 placer and filler numbers, OBR-4 the test, OBR-7 the collection
/// time, OBR-22 the report time (MSH-7), OBR-25 the result status.
fn obr(order: &OrderResults, set_id: usize, occurrence: usize, header: &MessageHeader) -> Result<SegmentBuilder> {
    super::required(&order.service.primary.code, Location::field("OBR", 4).occurrence(occurrence).component(1))?;
    let mut obr = SegmentBuilder::new("OBR")
        .field(1, set_id.to_string())
        .field(2, &order.placer_order_number)
        .field(3, &order.filler_order_number);
    obr = coded(obr, 4, &order.service);
    if let Some(at) = order.specimen.as_ref().and_then(|s| s.collected_at.as_ref()) {
        obr = obr.field(7, at.as_str());
    }
    obr = obr.field(22, header.timestamp.as_str());
    if let Some(status) = &order.result_status {
        obr = obr.field(25, status);
    }
    Ok(obr)
}

/// ORC as in the SS-MIX2 sample: ORC-1 control (`SC`), ORC-2/3, ORC-5 status (`CM`), ORC-9
/// transaction time.
fn orc(order: &OrderResults, header: &MessageHeader) -> SegmentBuilder {
    let mut orc = SegmentBuilder::new("ORC")
        .field(1, order.order_control.as_deref().unwrap_or_default())
        .field(2, &order.placer_order_number)
        .field(3, &order.filler_order_number)
        .field(9, header.timestamp.as_str());
    if let Some(status) = &order.order_status {
        orc = orc.field(5, status);
    }
    orc
}

fn push_observations(message: &mut MessageBuilder, order: &OrderResults, counts: &mut Counts) -> Result<()> {
    push_notes(message, &order.notes);
    for (i, observation) in order.observations.iter().enumerate() {
        counts.obx += 1;
        message.push(obx(observation, i + 1, counts.obx)?);
        push_notes(message, &observation.notes);
    }
    Ok(())
}

/// One NTE per note (NTE-1 numbered from 1, NTE-3 the text, one repetition per line).
fn push_notes(message: &mut MessageBuilder, notes: &[String]) {
    for (i, note) in notes.iter().enumerate() {
        let mut nte = SegmentBuilder::new("NTE").field(1, (i + 1).to_string());
        for line in note.split('\n') {
            nte = nte.repetition(3, [line]);
        }
        message.push(nte);
    }
}

fn obx(observation: &Observation, set_id: usize, occurrence: usize) -> Result<SegmentBuilder> {
    let at = |n| Location::field("OBX", n).occurrence(occurrence);
    super::required(&observation.code.primary.code, at(3).component(1))?;
    super::required(&observation.status, at(11))?;
    let set_id = if observation.set_id.is_empty() { set_id.to_string() } else { observation.set_id.clone() };
    let mut obx = SegmentBuilder::new("OBX").field(1, set_id).field(2, &observation.value_type);
    obx = coded(obx, 3, &observation.code);
    obx = obx.field(4, &observation.sub_id);
    let composite = COMPOSITE_VALUE_TYPES.contains(&observation.value_type.as_str());
    for value in &observation.values {
        obx = if composite { obx.repetition(5, value.split('^')) } else { obx.repetition(5, [value.as_str()]) };
    }
    if let Some(units) = &observation.units {
        obx = obx.components(6, coding_components(units));
    }
    if let Some(range) = &observation.reference_range {
        obx = obx.field(7, range);
    }
    for flag in &observation.abnormal_flags {
        obx = obx.repetition(8, [flag.as_str()]);
    }
    obx = obx.field(11, &observation.status);
    if let Some(at) = &observation.observed_at {
        obx = obx.field(14, at.as_str());
    }
    Ok(obx)
}
