//! Prometheus metrics: one recorder per process, rendered on `/metrics` for the operator (see
//! [`OperatorToken`]). Names are listed in `docs/protocol.md`; every counter a lab shows comes
//! from here.

use std::sync::OnceLock;

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use protocol::http::ErrorBody;
use protocol::ws::ErrorCode;

use crate::auth::OperatorToken;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls reuse it) and returns a handle to
/// render it. `None` if another recorder was installed first. Durations are bucketed from
/// 100 µs to 2.5 s, batch sizes by powers of two.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ])
                .ok()?
                // Counts, not durations: events per commit, up to the committer's cap of 256.
                .set_buckets_for_metric(
                    Matcher::Full("chat_store_batch_size".into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .clone()
}

/// The metrics page.
pub fn render() -> String {
    install().map(|h| h.render()).unwrap_or_default()
}

/// `GET /metrics` on any process: the page for the operator, `401` for anyone else (the counts
/// say how busy the cluster is and when, which is the operator's business).
pub fn page(operator: &OperatorToken, headers: &HeaderMap) -> Response {
    if operator.admits(headers) {
        render().into_response()
    } else {
        operator_only("the metrics")
    }
}

/// The refusal of an operator's route to anyone without the operator credential.
pub fn operator_only(what: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(ErrorBody::new(
            ErrorCode::Unauthorized,
            format!("{what} need the operator credential (Authorization: Bearer)"),
        )),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn batch_sizes_get_count_buckets() {
        assert!(super::install().is_some());
        metrics::histogram!("chat_store_batch_size").record(3.0);
        metrics::histogram!("chat_store_commit_seconds").record(0.002);
        let page = super::render();
        assert!(
            page.contains("chat_store_batch_size_bucket{le=\"4\"} 1"),
            "{page}"
        );
        assert!(
            !page.contains("chat_store_batch_size_bucket{le=\"0.0001\"}"),
            "{page}"
        );
        assert!(
            page.contains("chat_store_commit_seconds_bucket{le=\"0.0025\"} 1"),
            "{page}"
        );
    }
}
