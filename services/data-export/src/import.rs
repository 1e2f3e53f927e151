//! (being written; see issue #5)

use crate::ExportState;
use axum::Router;

/// The import routes.
pub(crate) fn routes() -> Router<ExportState> {
    Router::new()
}
