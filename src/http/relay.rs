//! Relay link views: studies arriving from edges ("arriving: k of n", with
//! the first preview, for the worklist) and the link figures, outbox and
//! registered edges for admins.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::auth::require;
use super::error::ApiError;
use crate::clock::now_ms;
use crate::http::Services;
use crate::reading::access::{Caller, Role};
use crate::relay::store;

type S = State<Arc<Services>>;

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// Studies on their way from edges, in the caller's scope.
pub async fn arriving(State(s): S, c: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    let clinics = c.scope.clinics().map(|v| v.to_vec());
    let rows = store::arriving(s.index.pool(), clinics.as_deref(), now_ms() - 10 * 60 * 1000)
        .await
        .map_err(internal)?;
    Ok(Json(json!({ "arriving": rows })))
}

/// The first staged thumbnail (or preview) of an arriving study.
pub async fn arriving_image(
    State(s): S,
    c: Caller,
    Path((uid, kind)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    super::uid::check(&uid)?;
    if kind != "thumb" && kind != "preview" {
        return Err(ApiError::BadRequest("kind: thumb or preview".into()));
    }
    let (path, clinic) = store::staged_preview(s.index.pool(), &uid, &kind)
        .await
        .map_err(internal)?
        .ok_or(ApiError::NotFound("arriving preview"))?;
    if !c.scope.allows(&clinic) {
        return Err(ApiError::NotFound("arriving preview"));
    }
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|_| ApiError::NotFound("arriving preview"))?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "private, no-cache"),
        ],
        bytes,
    )
        .into_response())
}

/// Link figures, registered edges (hub) or the outbox (edge).
pub async fn admin_relay(State(s): S, c: Caller) -> Result<Json<serde_json::Value>, ApiError> {
    require(&c, &[Role::Admin])?;
    let pool = s.index.pool();
    let links = s.relay.snapshot();
    if s.cfg.role == "edge" {
        let stats = store::outbox_stats(pool).await.map_err(internal)?;
        let outbox = store::outbox_list(pool, 100).await.map_err(internal)?;
        let e = s.cfg.edge.as_ref();
        return Ok(Json(json!({
            "role": "edge",
            "hub": e.map(|e| e.hub.clone()),
            "rate_mbit": e.map(|e| e.rate_mbit),
            "links": links,
            "outbox_stats": stats,
            "outbox": outbox,
        })));
    }
    let edges = store::edges(pool).await.map_err(internal)?;
    let arriving = store::arriving(pool, None, now_ms() - 24 * 3600 * 1000)
        .await
        .map_err(internal)?;
    Ok(Json(json!({
        "role": "hub",
        "listen": s.cfg.relay.listen.map(|a| a.to_string()),
        "links": links,
        "edges": edges,
        "arriving": arriving,
    })))
}

/// Prometheus lines for the relay link.
pub async fn render_metrics(s: &Services, out: &mut String) {
    use std::fmt::Write;
    let links = s.relay.snapshot();
    type Get = fn(&crate::relay::link::LinkFigures) -> f64;
    let gauges: [(&str, &str, Get); 7] = [
        ("medrelay_relay_connected", "1 while the relay link is up", |f| {
            f64::from(u8::from(f.connected))
        }),
        (
            "medrelay_relay_rtt_ms",
            "Relay link round-trip time (QUIC estimate)",
            |f| f.rtt_ms,
        ),
        (
            "medrelay_relay_loss_ratio",
            "Lost / sent datagrams on the relay link",
            |f| f.loss,
        ),
        (
            "medrelay_relay_goodput_bps",
            "Study bits per second over the last relayed study",
            |f| f.goodput_bps,
        ),
        (
            "medrelay_relay_bytes_total",
            "Study bytes committed over the relay link",
            |f| f.bytes_total as f64,
        ),
        (
            "medrelay_relay_studies_total",
            "Studies committed over the relay link",
            |f| f.studies_total as f64,
        ),
        (
            "medrelay_relay_connections_total",
            "Relay connections established",
            |f| f.connections as f64,
        ),
    ];
    for (name, help, get) in gauges {
        if links.is_empty() {
            break;
        }
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (peer, f) in &links {
            let _ = writeln!(out, "{name}{{peer=\"{peer}\"}} {}", get(f));
        }
    }
    if s.cfg.role == "edge"
        && let Ok(st) = store::outbox_stats(s.index.pool()).await
    {
        let age = st
            .oldest_ms
            .map(|t| (now_ms() - t).max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        let _ = writeln!(
            out,
            "# HELP medrelay_relay_outbox_depth Complete studies not yet committed at the hub\n# TYPE medrelay_relay_outbox_depth gauge\nmedrelay_relay_outbox_depth {}",
            st.depth
        );
        let _ = writeln!(
            out,
            "# HELP medrelay_relay_outbox_oldest_seconds Age of the oldest study waiting in the outbox\n# TYPE medrelay_relay_outbox_oldest_seconds gauge\nmedrelay_relay_outbox_oldest_seconds {age}"
        );
        let _ = writeln!(
            out,
            "# HELP medrelay_relay_outbox_bytes Bytes of the studies waiting in the outbox\n# TYPE medrelay_relay_outbox_bytes gauge\nmedrelay_relay_outbox_bytes {}",
            st.bytes_pending
        );
    }
    if s.cfg.role == "hub"
        && s.cfg.relay.listen.is_some()
        && let Ok(rows) = store::arriving(s.index.pool(), None, i64::MAX).await
    {
        let _ = writeln!(
            out,
            "# HELP medrelay_relay_arriving Studies arriving from edges (announced, not yet committed)\n# TYPE medrelay_relay_arriving gauge\nmedrelay_relay_arriving {}",
            rows.len()
        );
    }
}
