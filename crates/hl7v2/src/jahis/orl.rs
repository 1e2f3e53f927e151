//! ORL^O34, the general order acknowledgment answering OML^O33 (HL7 v2.5 §4.4.9; JAHIS
//! 臨床検査データ交換規約 pairs OML^O33 with ORL^O34).
//!
//! Structure (ORL_O34): `MSH MSA [{ERR}] [RESPONSE: PID {SPECIMEN: SPM {ORDER: ORC [TQ1] [OBR]}}]`.
//! The response group is optional: a lab that could not read the patient or the specimen
//! answers with MSH, MSA and ERR only.

use crate::ack::{AckBuilder, AckCode, AckError};
use crate::builder::SegmentBuilder;
use crate::error::{Hl7Error, Result};
use crate::message::Message;
use crate::reply::{AckReply, parse_ack};
use crate::types::{ControlId, Location, MessageType, Timestamp};

use super::{JLAC10, LabTest, Located, Specimen, coded_element, parse_patient_id, text_of};

/// ORC-1 order control (HL7 table 0119), the codes of lab orders and their responses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OrderControl {
    /// `NW`: new order.
    New,
    /// `CA`: cancel order request.
    Cancel,
    /// `OK`: order accepted and OK.
    Accepted,
    /// `UA`: unable to accept order.
    UnableToAccept,
    /// `CR`: canceled as requested.
    CanceledAsRequested,
    /// `UC`: unable to cancel.
    UnableToCancel,
    /// `UX`: unable to change.
    UnableToChange,
    /// `SC`: status changed (results messages).
    StatusChanged,
    /// Any other table 0119 code, as written.
    Other(String),
}

impl OrderControl {
    /// The code as written in ORC-1.
    pub fn code(&self) -> &str {
        match self {
            Self::New => "NW",
            Self::Cancel => "CA",
            Self::Accepted => "OK",
            Self::UnableToAccept => "UA",
            Self::CanceledAsRequested => "CR",
            Self::UnableToCancel => "UC",
            Self::UnableToChange => "UX",
            Self::StatusChanged => "SC",
            Self::Other(code) => code,
        }
    }

    /// Reads ORC-1; codes other than the named ones become [`OrderControl::Other`].
    pub fn from_code(code: &str) -> Self {
        match code {
            "NW" => Self::New,
            "CA" => Self::Cancel,
            "OK" => Self::Accepted,
            "UA" => Self::UnableToAccept,
            "CR" => Self::CanceledAsRequested,
            "UC" => Self::UnableToCancel,
            "UX" => Self::UnableToChange,
            "SC" => Self::StatusChanged,
            other => Self::Other(other.to_owned()),
        }
    }
}

/// One order's answer: ORC, and OBR when the test is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderResponse {
    /// ORC-1: `OK` accepted, `UA` unable to accept, `CR`/`UC` for a cancel request.
    pub control: OrderControl,
    /// ORC-2 (and OBR-2) placer order number, required.
    pub placer_order_number: String,
    /// ORC-3 (and OBR-3) filler order number the lab assigned, when it accepted the order.
    pub filler_order_number: Option<String>,
    /// ORC-5 order status (HL7 table 0038: `SC` scheduled, `IP` in process, `CA` canceled…).
    pub order_status: Option<String>,
    /// OBR-4 of the test answered; the OBR is written only when given.
    pub test: Option<LabTest>,
}

/// One specimen of the response group and the orders on it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpecimenResponse {
    /// SPM (SPM-4 required).
    pub specimen: Specimen,
    /// The ORC/OBR answers, in order.
    pub orders: Vec<OrderResponse>,
}

/// The response group of ORL^O34.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrlResponse {
    /// PID-3, required.
    pub patient_id: String,
    /// The specimens with their orders; at least one.
    pub specimens: Vec<SpecimenResponse>,
}

/// Builds the ORL^O34 answering a parsed OML^O33: MSH (from [`AckBuilder`]: sender and
/// receiver swapped, MSH-18/20 copied), MSA, one ERR per error, then the response group.
#[derive(Debug, Clone)]
pub struct OrlBuilder<'m, 'a> {
    ack: AckBuilder<'m, 'a>,
    response: Option<OrlResponse>,
}

impl<'m, 'a> OrlBuilder<'m, 'a> {
    /// An ORL^O34 answering `original` with this MSA-1 code.
    pub fn new(original: &'m Message<'a>, code: AckCode) -> Self {
        let orl = MessageType::new("ORL", Some("O34"), Some("ORL_O34"));
        let ack = AckBuilder::new(original, code);
        // The constant type is valid; the fallback keeps this infallible without unwrapping.
        let ack = match orl {
            Ok(message_type) => ack.message_type(message_type),
            Err(_) => ack,
        };
        Self { ack, response: None }
    }

    /// Adds an ERR segment.
    pub fn error(mut self, error: AckError) -> Self {
        self.ack = self.ack.error(error);
        self
    }

    /// Sets the response group.
    pub fn response(mut self, response: OrlResponse) -> Self {
        self.response = Some(response);
        self
    }

    /// Writes the message, to be encoded in the original's character set. A response group
    /// without PID-3, without a specimen, with an SPM-4 or an ORC-2 missing is refused with the
    /// location it would have had.
    pub fn build(&self, control_id: &ControlId, timestamp: &Timestamp) -> Result<String> {
        let mut message = self.ack.builder(control_id, timestamp);
        let Some(response) = &self.response else { return message.build() };
        if response.patient_id.trim().is_empty() {
            return Err(Hl7Error::RequiredMissing { location: Location::field("PID", 3) });
        }
        if response.specimens.is_empty() {
            return Err(Hl7Error::RequiredMissing { location: Location::segment("SPM") });
        }
        message
            .push(SegmentBuilder::new("PID").field(1, "1").set(3, 1, 1, 1, &response.patient_id).set(3, 1, 5, 1, "PI"));
        let (mut orc_count, mut obr_count) = (0, 0);
        for (i, group) in response.specimens.iter().enumerate() {
            let specimen = &group.specimen;
            if specimen.kind.code.trim().is_empty() {
                return Err(Hl7Error::RequiredMissing { location: Location::field("SPM", 4).occurrence(i + 1) });
            }
            let mut spm = SegmentBuilder::new("SPM").field(1, (i + 1).to_string()).components(
                4,
                [specimen.kind.code.as_str(), specimen.kind.text.as_str(), specimen.kind.system.as_str()],
            );
            if let Some(id) = &specimen.id {
                spm = spm.field(2, id);
            }
            if let Some(at) = &specimen.collected_at {
                spm = spm.field(17, at.as_str());
            }
            message.push(spm);
            for order in &group.orders {
                orc_count += 1;
                if order.placer_order_number.trim().is_empty() {
                    return Err(Hl7Error::RequiredMissing {
                        location: Location::field("ORC", 2).occurrence(orc_count),
                    });
                }
                let filler = order.filler_order_number.as_deref().unwrap_or_default();
                let mut orc = SegmentBuilder::new("ORC")
                    .field(1, order.control.code())
                    .field(2, &order.placer_order_number)
                    .field(3, filler);
                if let Some(status) = &order.order_status {
                    orc = orc.field(5, status);
                }
                message.push(orc);
                if let Some(test) = &order.test {
                    obr_count += 1;
                    let mut obr = SegmentBuilder::new("OBR")
                        .field(1, obr_count.to_string())
                        .field(2, &order.placer_order_number)
                        .field(3, filler)
                        .components(4, [test.jlac10.as_str(), test.name.as_str(), JLAC10]);
                    if let Some(local) = &test.local {
                        obr = obr.set(4, 1, 4, 1, &local.code).set(4, 1, 5, 1, &local.text).set(
                            4,
                            1,
                            6,
                            1,
                            &local.system,
                        );
                    }
                    message.push(obr);
                }
            }
        }
        message.build()
    }
}

/// An ORL^O34 (or a plain ACK answering an order) as read by the order's sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrlReply {
    /// MSA and ERR.
    pub ack: AckReply,
    /// PID-3 of the response group, when present.
    pub patient_id: Option<String>,
    /// The specimens and order answers of the response group, in order.
    pub specimens: Vec<SpecimenResponse>,
}

impl OrlReply {
    /// Every order answer, in order.
    pub fn orders(&self) -> impl Iterator<Item = &OrderResponse> {
        self.specimens.iter().flat_map(|s| s.orders.iter())
    }
}

/// Reads an ORL^O34, or an ACK (a lab may answer a rejected order with a general ACK).
///
/// MSA as [`parse_ack`]; in the response group ORC-1 and ORC-2 are required, an ORC before any
/// SPM or an OBR before any ORC is out of sequence; TQ1, NTE and other segments are skipped.
pub fn parse_orl_o34(msg: &Message<'_>) -> Result<OrlReply> {
    let message_type = msg.message_type()?;
    if !matches!(message_type.code(), "ORL" | "ACK") {
        return Err(Hl7Error::UnexpectedMessageType { expected: "ORL^O34, ACK" });
    }
    let ack = parse_ack(msg)?;
    let mut reply = OrlReply { ack, patient_id: None, specimens: Vec::new() };
    let (mut spm_count, mut orc_count, mut obr_count) = (0, 0, 0);
    for segment in msg.segments() {
        match segment.id() {
            "PID" if reply.patient_id.is_none() => {
                let pid = Located { segment, occurrence: 1 };
                reply.patient_id = Some(parse_patient_id(&pid)?);
            }
            "SPM" => {
                spm_count += 1;
                let spm = Located { segment, occurrence: spm_count };
                let id = text_of(spm.field(2).component(1));
                let specimen = Specimen {
                    id: (!id.is_empty()).then_some(id),
                    kind: coded_element(spm.field(4)).primary,
                    collected_at: spm.timestamp(17, Some(1))?,
                };
                reply.specimens.push(SpecimenResponse { specimen, orders: Vec::new() });
            }
            "ORC" => {
                orc_count += 1;
                let orc = Located { segment, occurrence: orc_count };
                let group = reply.specimens.last_mut().ok_or(Hl7Error::SegmentOutOfOrder {
                    location: Location::segment("ORC").occurrence(orc_count),
                    expected: "ORC inside an SPM group (ORL_O34)",
                })?;
                let control = orc.text(1);
                super::required(&control, orc.location(1))?;
                let placer = text_of(orc.field(2).component(1));
                super::required(&placer, orc.location(2))?;
                let filler = text_of(orc.field(3).component(1));
                group.orders.push(OrderResponse {
                    control: OrderControl::from_code(&control),
                    placer_order_number: placer,
                    filler_order_number: (!filler.is_empty()).then_some(filler),
                    order_status: orc.optional(5),
                    test: None,
                });
            }
            "OBR" => {
                obr_count += 1;
                let obr = Located { segment, occurrence: obr_count };
                let order = reply.specimens.last_mut().and_then(|g| g.orders.last_mut()).ok_or(
                    Hl7Error::SegmentOutOfOrder {
                        location: Location::segment("OBR").occurrence(obr_count),
                        expected: "OBR after its ORC (ORL_O34)",
                    },
                )?;
                let service = coded_element(obr.field(4));
                let jlac10 = service.jlac10().cloned().unwrap_or_default();
                order.test = Some(LabTest { jlac10: jlac10.code, name: jlac10.text, local: service.local().cloned() });
            }
            _ => {}
        }
    }
    Ok(reply)
}
