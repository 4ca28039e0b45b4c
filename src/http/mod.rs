//! HTTPS API: axum router served over rustls with hyper-util, so TLS and
//! graceful shutdown stay under our control (no second TLS stack).
//!
//! Every response carries the security headers (`security_headers`); every
//! connection has a write timeout (`limits::WriteTimeout`). Prometheus
//! metrics are not on this listener: they have their own, loopback by
//! default (`serve_metrics`), as exporters do.

pub mod admin;
pub mod api;
mod assets;
pub mod auth;
pub mod broadcast;
pub mod compress;
pub mod consult;
pub mod dicomweb;
pub mod error;
pub mod images;
pub mod lang;
pub mod limits;
pub mod reading;
pub mod relay;
pub mod room_access;
mod services;
mod signal_session;
pub mod uid;
pub mod zipstream;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

pub use services::Services;

pub fn router(services: Arc<Services>) -> Router {
    Router::new()
        .route("/api/health", get(api::health))
        .route("/api/login", post(auth::login))
        .route("/api/logout", post(auth::logout))
        .route("/api/me", get(auth::me))
        .route("/api/me/language", axum::routing::put(lang::set_mine))
        .route("/api/clinics", get(reading::clinics))
        .route("/api/worklist", get(reading::worklist))
        .route("/api/worklist/{uid}/claim", post(reading::claim))
        .route("/api/worklist/{uid}/renew", post(reading::renew))
        .route("/api/worklist/{uid}/release", post(reading::release))
        .route("/api/worklist/{uid}/return", post(reading::return_study))
        .route("/api/worklist/{uid}/cancel", post(reading::cancel))
        .route("/api/worklist/{uid}/priority", post(reading::set_priority))
        .route("/api/worklist/{uid}/history", get(reading::history))
        .route("/api/report-templates", get(reading::templates))
        .route("/api/studies/{uid}/reports", get(reading::study_reports))
        .route(
            "/api/studies/{uid}/report/draft",
            axum::routing::put(reading::save_draft),
        )
        .route("/api/studies/{uid}/report/sign", post(reading::sign))
        .route("/api/notifications", get(reading::notifications))
        .route("/api/notifications/{id}/read", post(reading::notification_read))
        .route(
            "/api/requests",
            get(reading::list_requests).post(reading::create_request),
        )
        .route("/api/requests/{id}/accept", post(reading::accept_request))
        .route("/api/requests/{id}/reschedule", post(reading::reschedule_request))
        .route("/api/requests/{id}/cancel", post(reading::cancel_request))
        .route("/api/requests/{id}/join", post(reading::join_request))
        .route("/api/requests/{id}/finish", post(reading::finish_request))
        .route("/api/admin/users", get(admin::users).post(admin::add_user))
        .route("/api/admin/users/{name}/disable", post(admin::disable_user))
        .route("/api/admin/turnaround", get(admin::turnaround))
        .route("/api/admin/audit", get(admin::audit_log))
        .route("/api/admin/deliveries", get(admin::deliveries))
        .route("/api/admin/ingest-refusals", get(admin::ingest_refusals))
        .route("/api/admin/relay", get(relay::admin_relay))
        .route("/api/relay/arriving", get(relay::arriving))
        .route("/api/relay/arriving/{uid}/{kind}", get(relay::arriving_image))
        .route("/api/instances/{uid}/tags", get(api::instance_tags))
        .route("/", get(reading::root))
        .route("/login", get(reading::login_page))
        .route("/studies", get(reading::studies_page))
        .route("/worklist", get(reading::worklist_page))
        .route("/viewer", get(reading::viewer_page))
        .route("/requests", get(reading::requests_page))
        .route("/broadcasts", get(reading::broadcasts_page))
        .route("/admin", get(reading::admin_page))
        .route("/api/studies", get(api::studies))
        .route("/api/studies/{uid}", get(api::study))
        .route("/api/studies/{uid}/series", get(api::study_series))
        .route("/api/studies/{uid}/instances", get(api::study_instances))
        .route("/api/studies/{uid}/archive.zip", get(api::study_zip))
        .route("/api/series/{uid}/instances", get(api::series_instances))
        .route("/api/instances/{uid}", get(api::instance))
        .route("/api/instances/{uid}/file", get(api::instance_file))
        .route("/api/instances/{uid}/thumbnail", get(images::thumbnail))
        .route("/api/instances/{uid}/preview", get(images::preview))
        .route("/api/instances/{uid}/cine", get(images::cine))
        .route("/api/instances/{uid}/rendered", get(images::rendered_image))
        .route("/api/studies/{uid}/key-images", get(images::key_images))
        .route("/api/broadcasts", get(broadcast::list).post(broadcast::create))
        .route("/api/broadcasts/{id}", axum::routing::delete(broadcast::end))
        .route("/api/broadcasts/{id}/join", post(broadcast::join))
        .route("/api/rooms", post(consult::create_room))
        .route("/api/rooms/{id}", get(consult::room_status).delete(consult::close_room))
        .route("/api/rooms/{id}/participants", post(consult::add_participant))
        .route("/ws/consult", get(consult::signaling))
        .route("/consult", get(consult::consult_page))
        // The broadcast page is the consultation page in broadcast mode.
        .route("/broadcast", get(consult::consult_page))
        .route("/web/{name}", get(consult::web_asset))
        .nest(dicomweb::BASE, dicomweb::router(services.clone()))
        .layer(axum::middleware::from_fn(compress::gzip))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(services)
}

/// Content Security Policy of every response. Pages load only their own
/// scripts, styles and images; they connect only to their own origin (the
/// API and, by CSP 3 rules, the signaling WebSocket `wss://` on the same
/// host and port — never to another host); no site may frame them.
pub const CSP: &str = "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; \
connect-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// Security headers on every response, pages, API, files and errors alike:
/// HSTS (the gateway only speaks HTTPS; a year, no subdomains, since the
/// gateway does not own its parent domain), no MIME sniffing (a DICOM file
/// or an audit CSV is never run as a script), the CSP above (with
/// `frame-ancestors` against clickjacking; `X-Frame-Options` for old
/// browsers), no Referer (URLs carry study UIDs).
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

/// The metrics listener's routes: `/metrics` and the detailed `/api/health`.
/// With `metrics.token` set, both need `Authorization: Bearer <token>`.
pub fn metrics_router(services: Arc<Services>) -> Router {
    Router::new()
        .route("/metrics", get(api::metrics))
        .route(
            "/api/health",
            get(
                |axum::extract::State(s): axum::extract::State<Arc<Services>>| async move {
                    api::health_json(&s, true).await
                },
            ),
        )
        .layer(axum::middleware::from_fn_with_state(services.clone(), bearer))
        .with_state(services)
}

async fn bearer(axum::extract::State(s): axum::extract::State<Arc<Services>>, req: Request, next: Next) -> Response {
    let want = s.cfg.metrics.token.as_str();
    if !want.is_empty() {
        let sent = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !auth::ct_eq(sent.as_bytes(), want.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "metrics need the bearer token\n",
            )
                .into_response();
        }
    }
    next.run(req).await
}

/// The next connection, or None once `shutdown` is cancelled. Accept errors
/// (out of file descriptors) are logged and retried after a pause.
async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
    what: &str,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = listener.accept() => match r {
                Ok(v) => return Some(v),
                Err(e) => {
                    warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Plain HTTP/1.1 for the metrics listener (a scraper on the same host, or
/// behind the bearer token); ends with `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    app: Router,
    limits: Arc<limits::LimitCounters>,
    write_timeout: Duration,
    shutdown: CancellationToken,
) {
    while let Some((tcp, peer)) = accept(&listener, &shutdown, "metrics").await {
        let service = TowerToHyperService::new(app.clone());
        let io = TokioIo::new(limits::WriteTimeout::new(tcp, write_timeout, limits.clone()));
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut builder = Builder::new(TokioExecutor::new()).http1_only();
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30));
            let conn = builder.serve_connection(io, service);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    debug!(%peer, error = %e, "metrics connection ended with error");
                },
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Serve until `shutdown`, then let open connections finish within `grace`.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    limits: Arc<limits::LimitCounters>,
    write_timeout: Duration,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    while let Some((tcp, peer)) = accept(&listener, &shutdown, "HTTPS").await {
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        // Handlers learn the client address (audit trail, login throttling).
        let service = TowerToHyperService::new(app.clone().layer(axum::Extension(auth::Remote(peer))));
        let watcher = graceful.watcher();
        let limits = limits.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return debug!(%peer, "TLS handshake timed out"),
            };
            let mut builder = Builder::new(TokioExecutor::new());
            // Every read has a timeout: a client that never finishes its
            // request headers is dropped instead of holding a connection.
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30));
            builder
                .http2()
                .timer(hyper_util::rt::TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30));
            // Every write has a timeout too: a client that stops reading a
            // download (or a WebSocket) is cut instead of holding it for ever.
            let io = TokioIo::new(limits::WriteTimeout::new(tls, write_timeout, limits));
            let conn = builder.serve_connection_with_upgrades(io, service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                debug!(%peer, error = %e, "HTTP connection ended with error");
            }
        });
    }
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        warn!("HTTP connections still open after the grace period; closing");
    }
}
