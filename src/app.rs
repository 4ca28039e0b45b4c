//! Wires the services together and owns shutdown.
//!
//! Shutdown follows mini-redis: one CancellationToken tells every listener to
//! stop accepting; a TaskTracker lets in-flight associations finish within the
//! grace period; then the index writer drains and the database is closed.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::archive::files::Archive;
use crate::archive::index::Index;
use crate::config::Config;
use crate::dicom::scp::{OnStored, Scp, Stored, bind_listener};
use crate::http::Services;
use crate::imaging::worker::RenderJob;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("archive at {path}: {source}")]
    Archive {
        path: String,
        source: crate::archive::files::ArchiveError,
    },
    #[error("index: {0}")]
    Index(#[from] crate::archive::index::IndexError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sfu(#[from] crate::sfu::SfuStartError),
    #[error("{0}")]
    Other(String),
}

/// Settle the staging files of a previous run before anything is received:
/// the ones an index row refers to were acknowledged and go into place, the
/// rest were not and go away (see `archive::staging`). Then receptions use
/// staging.
async fn recover_staged(archive: &Archive, index: &Index) -> Result<(), AppError> {
    let a = archive.clone();
    let leftovers = tokio::task::spawn_blocking(move || a.staging_leftovers())
        .await
        .map_err(|e| AppError::Other(e.to_string()))?
        .map_err(|e| AppError::Other(format!("reading the staging directory: {e}")))?;
    let mut keep = std::collections::HashSet::new();
    for l in &leftovers {
        let versions = index.instance_versions(&l.sop_instance_uid).await?;
        if versions.iter().any(|v| v.sha256 == l.sha256) {
            keep.insert(l.path.clone());
        }
    }
    let a = archive.clone();
    let (placed, removed) = tokio::task::spawn_blocking(move || {
        let counts = a.recover_staged(leftovers, |l| keep.contains(&l.path))?;
        a.start_staging().map(|()| counts)
    })
    .await
    .map_err(|e| AppError::Other(e.to_string()))?
    .map_err(|e| AppError::Other(format!("recovering staged instances: {e}")))?;
    if placed + removed > 0 {
        info!(
            placed,
            removed, "settled staged instances of a previous run (placed: acknowledged; removed: never acknowledged)"
        );
    }
    Ok(())
}

pub async fn serve(cfg: Config, shutdown: CancellationToken) -> Result<(), AppError> {
    let cfg = Arc::new(cfg);
    crate::archive::files::make_private(&cfg.data_dir)
        .map_err(|e| AppError::Other(format!("creating data dir {}: {e}", cfg.data_dir.display())))?;
    if crate::tls::ensure_certificate(&cfg.cert_dir)? {
        warn!(dir = %cfg.cert_dir.display(), "generated a self-signed development certificate; replace it for production");
    }
    let http_tls = crate::tls::server_config(&cfg.cert_dir, &[b"h2", b"http/1.1"])?;
    let storage = cfg.storage_url();
    let archive =
        Archive::open_url(&cfg.data_dir, &storage, cfg.dicom.min_free_bytes).map_err(|source| AppError::Archive {
            path: format!("{storage:?}"),
            source,
        })?;
    info!(storage = %archive.blobs().describe(), "instance storage");
    match archive.clean_tmp() {
        Ok(0) => {}
        Ok(n) => info!(
            files = n,
            "removed unacknowledged partial receptions from a previous run"
        ),
        Err(e) => warn!(error = %e, "could not clean the tmp directory"),
    }
    let (index, writer) = Index::open_url(&cfg.index_url()).await?;
    recover_staged(&archive, &index).await?;
    let metrics = Arc::new(Metrics::default());
    first_admin(&index, &cfg).await?;

    let tracker = TaskTracker::new();
    let dicom_tls = match cfg.dicom.tls_listen {
        Some(_) => Some(crate::tls::server_config(&cfg.cert_dir, &[])?),
        None => None,
    };
    // The SCP's "stored" event feeds the render pool; a full queue drops
    // the offer and the pool's catch-up loop renders the instance later.
    let on_stored = cfg.render.enabled.then(|| {
        let workers = cfg.render.effective_workers();
        info!(workers, "preview rendering on");
        let queue = crate::imaging::worker::start(
            archive.clone(),
            index.clone(),
            workers,
            cfg.render.queue,
            metrics.clone(),
            shutdown.clone(),
            &tracker,
        )
        .queue;
        Arc::new(move |s: Stored| {
            queue.offer(RenderJob {
                sop_instance_uid: s.sop_instance_uid,
                version: s.version,
                rel_path: s.rel_path,
            });
        }) as OnStored
    });
    let ingest = crate::dicom::scp::Ingest {
        archive: archive.clone(),
        index: index.clone(),
        metrics: metrics.clone(),
        on_stored: on_stored.clone(),
    };
    let scp = Arc::new(Scp::new(
        cfg.clone(),
        archive.clone(),
        index.clone(),
        metrics.clone(),
        dicom_tls,
        on_stored,
    ));
    let bind =
        |addr| bind_listener(addr, cfg.dicom.recv_buffer_bytes).map_err(|source| AppError::Bind { addr, source });
    let dicom_listener = bind(cfg.dicom.listen)?;
    info!(addr = %cfg.dicom.listen, ae = %cfg.dicom.ae_title, "DICOM listening");
    let mut listeners = Vec::new();
    listeners.push(tokio::spawn(scp.clone().serve(
        dicom_listener,
        false,
        shutdown.clone(),
        tracker.clone(),
    )));
    if let Some(addr) = cfg.dicom.tls_listen {
        let l = bind(addr)?;
        info!(%addr, "DICOM TLS listening");
        listeners.push(tokio::spawn(scp.clone().serve(
            l,
            true,
            shutdown.clone(),
            tracker.clone(),
        )));
    }

    let sfu = Arc::new(crate::sfu::Sfu::start(&cfg.sfu, shutdown.clone())?);
    info!(addr = %sfu.media_addr, "consultation media (UDP) listening");

    let delivery = crate::reading::delivery::start(
        index.clone(),
        cfg.clone(),
        cfg.data_dir.join("sr-spool"),
        shutdown.clone(),
        &tracker,
    );
    let relay_status = Arc::new(crate::relay::link::LinkStatus::default());
    let mut relay_tasks = Vec::new();
    if let Some(addr) = cfg.relay.listen
        && cfg.role == "hub"
    {
        let endpoint = crate::relay::hub::bind(&cfg, addr).map_err(AppError::Other)?;
        info!(%addr, name = %cfg.relay.name, "relay link (QUIC) listening for edges");
        let hub = Arc::new(crate::relay::hub::Hub::new(
            cfg.clone(),
            index.clone(),
            archive.clone(),
            relay_status.clone(),
        ));
        relay_tasks.push(tokio::spawn(crate::relay::hub::serve(
            hub,
            endpoint,
            shutdown.clone(),
            tracker.clone(),
        )));
    }
    if cfg.role == "edge" {
        let edge = crate::relay::edge::Edge::new(
            cfg.clone(),
            index.clone(),
            archive.clone(),
            relay_status.clone(),
            delivery.clone(),
        )
        .map_err(|e| AppError::Other(format!("relay link to the hub: {e}")))?;
        info!(hub = ?cfg.edge.as_ref().map(|e| e.hub.clone()), "edge role: relaying complete studies to the hub");
        relay_tasks.push(tokio::spawn(crate::relay::edge::run(Arc::new(edge), shutdown.clone())));
    }

    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let login = Arc::new(
        crate::http::auth::LoginGuard::new(
            cfg.auth.login_free_failures,
            cfg.auth.effective_hash_threads(),
            cfg.auth.login_queue,
        )
        .map_err(|e| AppError::Other(format!("starting the password threads: {e}")))?,
    );
    let limits = Arc::new(crate::http::limits::LimitCounters::default());
    let services = Arc::new(Services {
        cfg: cfg.clone(),
        archive,
        index: index.clone(),
        metrics: metrics.clone(),
        render_slots: tokio::sync::Semaphore::new(cores),
        sfu: sfu.clone(),
        delivery,
        relay: relay_status,
        login: login.clone(),
        zip_slots: crate::http::limits::ZipSlots::new(
            cfg.http.max_zip_downloads,
            cfg.http.max_zip_downloads_per_account,
        ),
        limits: limits.clone(),
        ingest,
    });
    let http_listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .map_err(|source| AppError::Bind {
            addr: cfg.http.listen,
            source,
        })?;
    info!(addr = %cfg.http.listen, "HTTPS API listening");
    let write_timeout = Duration::from_secs(cfg.http.write_timeout_secs);
    let metrics_http = if cfg.metrics.enabled {
        let l = tokio::net::TcpListener::bind(cfg.metrics.listen)
            .await
            .map_err(|source| AppError::Bind {
                addr: cfg.metrics.listen,
                source,
            })?;
        info!(addr = %cfg.metrics.listen, token = !cfg.metrics.token.is_empty(), "metrics (plain HTTP) listening");
        Some(tokio::spawn(crate::http::serve_metrics(
            l,
            crate::http::metrics_router(services.clone()),
            limits.clone(),
            write_timeout,
            shutdown.clone(),
        )))
    } else {
        None
    };
    let grace = Duration::from_secs(cfg.shutdown_grace_secs);
    let http = tokio::spawn(crate::http::serve(
        http_listener,
        http_tls,
        crate::http::router(services),
        limits,
        write_timeout,
        shutdown.clone(),
        grace,
    ));

    let sweep_every = Duration::from_millis(((cfg.stability.stable_after_secs * 1000.0 / 4.0) as u64).clamp(50, 1000));
    let stability = tokio::spawn(crate::archive::stability::run(
        index.clone(),
        metrics,
        sweep_every,
        shutdown.clone(),
    ));
    let housekeeping = tokio::spawn(housekeeping(index.clone(), cfg.clone(), login, shutdown.clone()));
    // Ready marker for scripts and tests: every listener is bound.
    info!("medrelay ready");

    shutdown.cancelled().await;
    info!("shutting down: no new associations; waiting for in-flight transfers");
    for l in listeners {
        let _ = l.await;
    }
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            grace_secs = cfg.shutdown_grace_secs,
            "associations still open after the grace period; dropping them"
        );
    }
    let _ = http.await;
    if let Some(m) = metrics_http {
        let _ = m.await;
    }
    for t in relay_tasks {
        let _ = t.await;
    }
    let _ = stability.await;
    let _ = housekeeping.await;
    sfu.join();
    drop(scp);
    // The writer ends once every Index handle is gone and its queue is drained;
    // only then is the pool closed (which checkpoints the WAL).
    let pool = index.pool().clone();
    drop(index);
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    pool.close().await;
    info!("shutdown complete");
    Ok(())
}

/// Periodic reading-workflow upkeep: abandoned claims return to the queue
/// when their lease runs out, expired sessions are deleted, and the last
/// minute of a failed-login flood gets its summary audit row.
async fn housekeeping(
    index: Index,
    cfg: Arc<Config>,
    login: Arc<crate::http::auth::LoginGuard>,
    shutdown: CancellationToken,
) {
    let every = Duration::from_secs(5);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = crate::clock::now_ms();
        match index.expire_worklist_leases(now).await {
            Ok(freed) if !freed.is_empty() => info!(studies = freed.len(), "expired claims returned to the worklist"),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "lease expiry sweep failed"),
        }
        let a = &cfg.auth;
        if let Err(e) = crate::reading::accounts::sweep_sessions(
            index.pool(),
            now,
            (a.session_idle_secs * 1000) as i64,
            (a.session_max_secs * 1000) as i64,
        )
        .await
        {
            warn!(error = %e, "session sweep failed");
        }
        login.flush_audit(index.pool()).await;
    }
}

/// First start with no accounts at all: create `admin` with a random
/// password written to `<data_dir>/initial-admin-password` (mode 0600), so
/// the one-command start is usable and no default password ever exists.
async fn first_admin(index: &Index, cfg: &Config) -> Result<(), AppError> {
    use crate::reading::accounts;
    let users = accounts::list_users(index.pool())
        .await
        .map_err(|e| AppError::Other(format!("reading accounts: {e}")))?;
    if !users.is_empty() {
        return Ok(());
    }
    let password = {
        use rand::RngCore;
        let mut b = [0u8; 12];
        rand::rng().fill_bytes(&mut b);
        hex::encode(b)
    };
    let path = cfg.data_dir.join("initial-admin-password");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| AppError::Other(format!("writing {}: {e}", path.display())))?;
        writeln!(f, "{password}").map_err(|e| AppError::Other(format!("writing {}: {e}", path.display())))?;
        f.sync_all()
            .map_err(|e| AppError::Other(format!("writing {}: {e}", path.display())))?;
    }
    let nu = accounts::NewUser {
        username: "admin".into(),
        password,
        display_name: "Administrator".into(),
        role: crate::reading::access::Role::Admin,
        clinic_id: None,
        hospital_id: None,
        department: None,
    };
    accounts::create_user(index.pool(), &nu, crate::clock::now_ms())
        .await
        .map_err(|e| AppError::Other(format!("creating the first admin: {e}")))?;
    warn!(
        file = %path.display(),
        "no accounts yet: created user \"admin\" with a random password stored in this file; log in, then change it with `medrelay user passwd admin` and delete the file"
    );
    Ok(())
}
