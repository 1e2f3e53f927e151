//! A simulated outsourced clinical laboratory (外注検査センター) that speaks the JAHIS clinical
//! lab data exchange convention (HL7 v2.5) over MLLP for real, for integration tests and for
//! `ehr lab-sim`.
//!
//! - **Orders in**: OML^O33 frames on [`LabSimConfig::listen`], decoded per MSH-18
//!   (ISO-2022-JP or UTF-8), checked field by field as a strict lab would
//!   (see [`checks`]), answered with ORL^O34: `AA` with ORC-1 `OK` and a filler order number,
//!   `AE` with one ERR per problem (ERR-2 naming the field, `PID^1^3`) and ORC-1 `UA`, or `AR`
//!   for a frame that is not HL7 or not an order. Every frame is recorded as a
//!   [`ReceivedOrder`].
//! - **Results out**: for each accepted order, after [`LabSimConfig::result_delay_ms`] or on
//!   [`LabSimHandle::send_result_now`], an OUL^R22 (or ORU^R01) with deterministic values per
//!   JLAC10 test ([`catalog`]) goes to [`LabSimConfig::results_to`] over MLLP, one message at a
//!   time, resent with back-off while the EHR is unreachable or silent; an AE or AR answer is
//!   recorded, not retried. Every attempt's outcome is a [`SentResult`].
//! - **Knobs**: [`LabSimHandle::set_down`] closes the order listener (connects are refused) and
//!   reopens it on the same port; duplicate results, character set, message type and delay can
//!   be changed while running.
//!
//! Logs carry control ids, ack codes and counts, never names or other patient data.

pub mod catalog;
pub mod checks;
mod config;
mod error;
mod results;
mod sim;

pub use checks::{Problem, ReceivedTest};
pub use config::{LabCharset, LabSimConfig, ResultMessage};
pub use error::{LabSimError, Result};
pub use sim::{LabSimHandle, ReceivedOrder, SentResult, start, start_with_clock};

/// Runs the simulator until Ctrl-C: the body of `ehr lab-sim`.
pub async fn run(config: LabSimConfig) -> Result<()> {
    run_until(config, async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error.kind = %err.kind(), "cannot wait for ctrl-c; stopping");
        }
    })
    .await
}

/// Runs the simulator until `stop` completes, then shuts it down.
pub async fn run_until(config: LabSimConfig, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    let sim = start(config).await?;
    tracing::info!(addr = %sim.local_addr(), "lab simulator listening for orders");
    stop.await;
    sim.shutdown().await;
    Ok(())
}
