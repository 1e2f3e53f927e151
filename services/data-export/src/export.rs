//! (being written; see issue #5)

use crate::ExportState;
use axum::Router;

/// The export routes.
pub(crate) fn routes() -> Router<ExportState> {
    Router::new()
}
