//! The hub end of the relay link: accepts edges (mutual TLS, then the
//! certificate's fingerprint must be registered and not revoked), stages
//! what they send durably, verifies every instance, commits each study
//! atomically, and serves the way back (reports, notifications).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::link::{LinkError, LinkStatus, read_body, read_frame};
use super::store::{self, CommitItem, EdgeRow, Staged};
use super::wire::{self, Manifest, Request, Response, WayBackNotification, WayBackReport};
use crate::archive::files::{Archive, Committed};
use crate::archive::index::Index;
use crate::clock::now_ms;
use crate::config::Config;
use crate::reading::notifications;

/// QUIC close codes the edge logs (application-level reasons).
pub const CLOSE_UNKNOWN_EDGE: u32 = 0x10;
pub const CLOSE_REVOKED: u32 = 0x11;
pub const CLOSE_SHUTDOWN: u32 = 0x12;

pub struct Hub {
    pub cfg: Arc<Config>,
    pub index: Index,
    pub archive: Archive,
    pub status: Arc<LinkStatus>,
    /// Bounds memory and disk work for bundles, all edges together.
    inflight: Semaphore,
    staging: PathBuf,
}

impl Hub {
    pub fn new(cfg: Arc<Config>, index: Index, archive: Archive, status: Arc<LinkStatus>) -> Hub {
        let staging = cfg.data_dir.join("relay-staging");
        let inflight = Semaphore::new(cfg.relay.max_inflight_bundles);
        Hub {
            cfg,
            index,
            archive,
            status,
            inflight,
            staging,
        }
    }
}

/// Bind the relay endpoint (UDP).
pub fn bind(cfg: &Config, addr: std::net::SocketAddr) -> Result<quinn::Endpoint, String> {
    super::pki::ensure_hub(&cfg.cert_dir, &cfg.relay.name).map_err(|e| e.to_string())?;
    let sc = super::pki::hub_server_config(&cfg.cert_dir).map_err(|e| e.to_string())?;
    quinn::Endpoint::server(sc, addr).map_err(|e| format!("cannot listen on {addr} (UDP): {e}"))
}

pub async fn serve(hub: Arc<Hub>, endpoint: quinn::Endpoint, shutdown: CancellationToken, tracker: TaskTracker) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        let hub = hub.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let remote = incoming.remote_address();
            match tokio::time::timeout(Duration::from_secs(30), incoming).await {
                Ok(Ok(conn)) => connection(hub, conn, shutdown).await,
                Ok(Err(e)) => warn!(%remote, error = %e, "relay handshake refused"),
                Err(_) => warn!(%remote, "relay handshake timed out"),
            }
        });
    }
    endpoint.close(quinn::VarInt::from_u32(CLOSE_SHUTDOWN), b"hub shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

fn peer_fingerprint(conn: &quinn::Connection) -> Option<String> {
    let id = conn.peer_identity()?;
    let certs = id.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| super::pki::fingerprint(c))
}

async fn connection(hub: Arc<Hub>, conn: quinn::Connection, shutdown: CancellationToken) {
    let remote = conn.remote_address();
    let pool = hub.index.pool().clone();
    let pool = &pool;
    let edge = match peer_fingerprint(&conn) {
        Some(fp) => store::edge_by_fingerprint(pool, &fp).await,
        None => Ok(None),
    };
    let edge = match edge {
        Ok(Some(e)) if e.revoked_ms.is_none() => e,
        Ok(Some(e)) => {
            warn!(edge = %e.name, %remote, "refused a revoked edge certificate");
            conn.close(quinn::VarInt::from_u32(CLOSE_REVOKED), b"edge certificate revoked");
            return;
        }
        Ok(None) => {
            warn!(%remote, "refused an edge certificate that is not registered here");
            conn.close(quinn::VarInt::from_u32(CLOSE_UNKNOWN_EDGE), b"unknown edge certificate");
            return;
        }
        Err(e) => {
            warn!(error = %e, "looking up an edge failed");
            conn.close(quinn::VarInt::from_u32(CLOSE_SHUTDOWN), b"hub index unavailable");
            return;
        }
    };
    let edge = Arc::new(edge);
    let span = info_span!("relay", edge = %edge.name);
    let pool = pool.clone();
    async move {
        let pool = &pool;
        info!(%remote, "edge connected");
        let _ = store::seen(pool, &edge.name, &remote.to_string(), now_ms()).await;
        hub.status.with(&edge.name, |f| {
            f.connections += 1;
            f.update_from(&conn, now_ms());
        });
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_addr = remote;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                s = conn.accept_bi() => match s {
                    Ok((send, recv)) => {
                        let hub = hub.clone();
                        let edge = edge.clone();
                        tokio::spawn(async move {
                            if let Err(e) = stream(&hub, &edge, send, recv).await {
                                debug!(error = %e, "relay stream ended with an error");
                            }
                        }.in_current_span());
                    }
                    Err(e) => {
                        info!(reason = %e, "edge disconnected");
                        break;
                    }
                },
                _ = tick.tick() => {
                    hub.status.with(&edge.name, |f| f.update_from(&conn, now_ms()));
                    let addr = conn.remote_address();
                    if addr != last_addr {
                        info!(from = %last_addr, to = %addr, "edge address changed; connection migrated");
                        last_addr = addr;
                        let _ = store::seen(pool, &edge.name, &addr.to_string(), now_ms()).await;
                    }
                    // Revocation also ends a live connection.
                    if store::is_revoked(pool, &edge.name).await.unwrap_or(false) {
                        warn!("edge revoked while connected; closing");
                        conn.close(quinn::VarInt::from_u32(CLOSE_REVOKED), b"edge certificate revoked");
                        break;
                    }
                }
            }
        }
        hub.status.with(&edge.name, |f| f.connected = false);
    }
    .instrument(span)
    .await
}

async fn respond(send: &mut quinn::SendStream, r: &Response, body: &[u8]) -> Result<(), LinkError> {
    send.write_all(&wire::encode(r)).await?;
    if !body.is_empty() {
        send.write_all(body).await?;
    }
    send.finish()?;
    Ok(())
}

async fn stream(
    hub: &Hub,
    edge: &EdgeRow,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), LinkError> {
    let req: Request = match read_frame(&mut recv).await {
        Ok(r) => r,
        Err(LinkError::Wire(e)) => {
            let r = Response::Error {
                message: format!("bad request: {e}"),
                retry: false,
            };
            return respond(&mut send, &r, &[]).await;
        }
        Err(e) => return Err(e),
    };
    // Nothing an edge sends reaches a path, a query or a page unchecked.
    if let Err(e) = req.check() {
        warn!(error = %e, "relay request refused");
        let r = Response::Error {
            message: format!("refused: {e}"),
            retry: false,
        };
        return respond(&mut send, &r, &[]).await;
    }
    let (resp, body) = match handle(hub, edge, req, &mut recv).await {
        Ok(v) => v,
        Err(HandleError::Link(e)) => return Err(e),
        Err(HandleError::Refuse(message, retry)) => {
            warn!(error = %message, "relay request refused");
            (Response::Error { message, retry }, Vec::new())
        }
    };
    respond(&mut send, &resp, &body).await
}

enum HandleError {
    Link(LinkError),
    /// Refused with a reason; `bool`: retrying may help.
    Refuse(String, bool),
}

impl From<LinkError> for HandleError {
    fn from(e: LinkError) -> Self {
        match e {
            LinkError::Wire(w) => HandleError::Refuse(w.to_string(), false),
            e => HandleError::Link(e),
        }
    }
}

impl From<crate::archive::index::IndexError> for HandleError {
    fn from(e: crate::archive::index::IndexError) -> Self {
        HandleError::Refuse(format!("hub index: {e}"), true)
    }
}

async fn handle(
    hub: &Hub,
    edge: &EdgeRow,
    req: Request,
    recv: &mut quinn::RecvStream,
) -> Result<(Response, Vec<u8>), HandleError> {
    let pool = hub.index.pool();
    match req {
        Request::Begin { manifest } => {
            // A study that collides with another clinic's data is refused
            // before it crosses the WAN (and again at commit, which holds).
            if let Some(c) = hub.index.first_conflict(&as_filed(edge, &manifest, now_ms())).await? {
                return Err(refuse_conflict(hub, edge, &c).await);
            }
            let json = serde_json::to_string(&manifest).map_err(|e| HandleError::Refuse(e.to_string(), false))?;
            let h = store::begin(pool, &edge.name, &edge.clinic_id, &manifest, &json, now_ms()).await?;
            info!(study_uid = %manifest.study_uid, instances = manifest.instances.len(),
                  already = h.instances.len(), "study arriving");
            Ok((
                Response::Begun {
                    have_instances: h.instances.into_iter().collect(),
                    have_previews: h.previews.into_iter().collect(),
                },
                Vec::new(),
            ))
        }
        Request::Previews { study_uid, items } => {
            let total = items
                .iter()
                .try_fold(0u64, |t, i| t.checked_add(i.len))
                .ok_or_else(|| HandleError::Refuse("preview lengths overflow".into(), false))?;
            // The permit before the body: bodies in memory are bounded for
            // all edges and streams together, not per stream.
            let _permit = hub
                .inflight
                .acquire()
                .await
                .map_err(|_| HandleError::Refuse("hub shutting down".into(), true))?;
            let body = read_body(recv, total, hub.cfg.relay.max_bundle_mb << 20).await?;
            let dir = hub.staging.join(&edge.name).join(&study_uid);
            let items2 = items.clone();
            let staged = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<Staged>> {
                std::fs::create_dir_all(&dir)?;
                let mut at = 0usize;
                let mut out = Vec::with_capacity(items2.len());
                for it in &items2 {
                    let bytes = &body[at..at + it.len as usize];
                    at += it.len as usize;
                    let path = dir.join(format!("{}.{}.jpg", it.sop_uid, it.kind));
                    // Previews can be rendered again from the instance:
                    // renamed into place, not fsynced.
                    let tmp = path.with_extension("jpg.tmp");
                    std::fs::write(&tmp, bytes)?;
                    std::fs::rename(&tmp, &path)?;
                    out.push(Staged {
                        sop_uid: it.sop_uid.clone(),
                        kind: it.kind.clone(),
                        sha256: String::new(),
                        size: it.len,
                        path: path.to_string_lossy().into_owned(),
                    });
                }
                Ok(out)
            })
            .await
            .map_err(|e| HandleError::Refuse(e.to_string(), true))?
            .map_err(|e| HandleError::Refuse(format!("staging previews: {e}"), true))?;
            if !store::stage(pool, &edge.name, &study_uid, &staged, now_ms()).await? {
                return Err(HandleError::Refuse(
                    "study not announced (send begin first)".into(),
                    true,
                ));
            }
            Ok((Response::Stored { count: items.len() }, Vec::new()))
        }
        Request::Bundle {
            study_uid,
            part_id,
            compressed,
            shuffled,
            body_len,
            members,
        } => {
            let inb = store::inbound(pool, &edge.name, &study_uid)
                .await?
                .filter(|i| i.state == "arriving")
                .ok_or_else(|| HandleError::Refuse("study not announced (send begin first)".into(), true))?;
            let manifest: Manifest = serde_json::from_str(&inb.manifest)
                .map_err(|e| HandleError::Refuse(format!("stored manifest: {e}"), true))?;
            let by_sop: HashMap<&str, &wire::ManifestInstance> = manifest
                .instances
                .iter()
                .map(|i| (i.meta.sop_instance_uid.as_str(), i))
                .collect();
            for m in &members {
                match by_sop.get(m.sop_uid.as_str()) {
                    Some(i) if i.sha256 == m.sha256 && i.file_size == m.size => {}
                    _ => {
                        return Err(HandleError::Refuse(
                            format!("instance {} does not match the manifest", m.sop_uid),
                            false,
                        ));
                    }
                }
            }
            let max = hub.cfg.relay.max_bundle_mb << 20;
            // Checked: the sizes are the edge's, and a wrapped sum passed this check.
            let plain_total = wire::members_total(&members).map_err(|e| HandleError::Refuse(e.to_string(), false))?;
            if plain_total > max.saturating_mul(4) {
                return Err(HandleError::Refuse("bundle too large".into(), false));
            }
            // The permit before the body (see Previews).
            let _permit = hub
                .inflight
                .acquire()
                .await
                .map_err(|_| HandleError::Refuse("hub shutting down".into(), true))?;
            let body = read_body(recv, body_len, max).await?;
            let dir = hub.staging.join(&edge.name).join(&study_uid);
            let ts: HashMap<String, String> = members
                .iter()
                .filter_map(|m| {
                    by_sop
                        .get(m.sop_uid.as_str())
                        .map(|i| (m.sop_uid.clone(), i.meta.transfer_syntax.clone()))
                })
                .collect();
            let members2 = members.clone();
            let staged =
                tokio::task::spawn_blocking(move || stage_bundle(&dir, &members2, compressed, shuffled, body, &ts))
                    .await
                    .map_err(|e| HandleError::Refuse(e.to_string(), true))??;
            if !store::stage(pool, &edge.name, &study_uid, &staged, now_ms()).await? {
                return Err(HandleError::Refuse("study no longer arriving".into(), true));
            }
            debug!(study_uid = %study_uid, part = %part_id, instances = members.len(), "bundle staged");
            Ok((Response::Stored { count: members.len() }, Vec::new()))
        }
        Request::Commit { study_uid } => commit(hub, edge, &study_uid).await,
        Request::Poll { notif_after, wait_ms } => poll(hub, edge, notif_after, wait_ms).await,
        Request::Ack { delivery_ids } => {
            let now = now_ms();
            for id in delivery_ids {
                let row = crate::reading::delivery::study_and_target(pool, id)
                    .await
                    .map_err(|e| HandleError::Refuse(e.to_string(), true))?;
                let Some((study_uid, target)) = row else { continue };
                if target != format!("edge:{}", edge.name) {
                    continue;
                }
                crate::reading::delivery::mark_sent(pool, id, now)
                    .await
                    .map_err(|e| HandleError::Refuse(e.to_string(), true))?;
                info!(delivery = id, study_uid = %study_uid, "report handed to the edge");
            }
            Ok((Response::Acked, Vec::new()))
        }
    }
}

/// Verify and stage one bundle: every member's SHA-256 and content hash,
/// each file fsynced, then the directory. Blocking.
fn stage_bundle(
    dir: &Path,
    members: &[wire::Member],
    compressed: bool,
    shuffled: bool,
    body: Vec<u8>,
    ts: &HashMap<String, String>,
) -> Result<Vec<Staged>, HandleError> {
    let refuse = |e: wire::WireError| HandleError::Refuse(e.to_string(), true);
    let plain = wire::unpack_body(members, compressed, shuffled, body).map_err(refuse)?;
    let files = wire::split_bundle(members, &plain).map_err(refuse)?;
    let io = |e: std::io::Error| HandleError::Refuse(format!("staging: {e}"), true);
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut out = Vec::with_capacity(members.len());
    for (m, bytes) in members.iter().zip(files) {
        let ts = ts.get(&m.sop_uid).map(String::as_str).unwrap_or_default();
        let content = wire::content_sha256(bytes, ts).map_err(refuse)?;
        if content != m.sha256 {
            return Err(HandleError::Refuse(
                format!("instance {}: content hash differs from the manifest", m.sop_uid),
                false,
            ));
        }
        let path = dir.join(format!("{}.dcm", m.sop_uid));
        let tmp = dir.join(format!("{}.dcm.tmp", m.sop_uid));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(bytes).map_err(io)?;
            f.sync_data().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        out.push(Staged {
            sop_uid: m.sop_uid.clone(),
            kind: "instance".into(),
            sha256: m.sha256.clone(),
            size: m.size,
            path: path.to_string_lossy().into_owned(),
        });
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(out)
}

async fn commit(hub: &Hub, edge: &EdgeRow, study_uid: &str) -> Result<(Response, Vec<u8>), HandleError> {
    let pool = hub.index.pool();
    let inb = store::inbound(pool, &edge.name, study_uid)
        .await?
        .ok_or_else(|| HandleError::Refuse("study not announced".into(), false))?;
    if inb.state == "committed" {
        // A repeated commit (the answer to the first was lost).
        return Ok((
            Response::Committed {
                instances: 0,
                duplicates: 0,
            },
            Vec::new(),
        ));
    }
    let manifest: Manifest =
        serde_json::from_str(&inb.manifest).map_err(|e| HandleError::Refuse(format!("stored manifest: {e}"), true))?;
    let staged = store::staged_of(pool, &edge.name, study_uid).await?;
    let holdings = store::begin_holdings_committed(pool, &manifest).await?;
    let mut files: HashMap<&str, &Staged> = HashMap::new();
    let mut previews: HashMap<&str, Vec<&Staged>> = HashMap::new();
    for s in &staged {
        if s.kind == "instance" {
            files.insert(s.sop_uid.as_str(), s);
        } else {
            previews.entry(s.sop_uid.as_str()).or_default().push(s);
        }
    }
    // The edge's clinic may not file into other data (see
    // `archive::index::Conflict`): refused before any file moves, so the
    // staged study stays as it is for an administrator to sort out.
    let now = now_ms();
    let items_meta = as_filed(edge, &manifest, now);
    if let Some(c) = hub.index.first_conflict(&items_meta).await? {
        return Err(refuse_conflict(hub, edge, &c).await);
    }
    let missing: Vec<String> = manifest
        .instances
        .iter()
        .filter(|i| {
            !files.contains_key(i.meta.sop_instance_uid.as_str()) && !holdings.contains(&i.meta.sop_instance_uid)
        })
        .map(|i| i.meta.sop_instance_uid.clone())
        .collect();
    if !missing.is_empty() {
        return Ok((Response::Missing { sop_uids: missing }, Vec::new()));
    }
    // Move the staged files into the archive (idempotent: a file already in
    // place from an interrupted commit is accepted as is).
    let moves: Vec<Move> = manifest
        .instances
        .iter()
        .filter_map(|i| {
            let s = files.get(i.meta.sop_instance_uid.as_str())?;
            let pv = previews
                .get(i.meta.sop_instance_uid.as_str())
                .map(|v| v.iter().map(|p| (p.kind.clone(), p.path.clone())).collect())
                .unwrap_or_default();
            Some((i.meta.sop_instance_uid.clone(), s.path.clone(), i.sha256.clone(), pv))
        })
        .collect();
    let archive = hub.archive.clone();
    let placed = tokio::task::spawn_blocking(move || place_files(&archive, moves))
        .await
        .map_err(|e| HandleError::Refuse(e.to_string(), true))?;
    let placed = match placed {
        Ok(p) => p,
        Err(PlaceError::Vanished(sop)) => {
            // Staged but gone (disk trouble): ask for it again.
            let _ = store::unstage(pool, &edge.name, study_uid, &sop).await;
            return Ok((Response::Missing { sop_uids: vec![sop] }, Vec::new()));
        }
        Err(PlaceError::Io(e)) => return Err(HandleError::Refuse(format!("placing files: {e}"), true)),
    };
    let items: Vec<CommitItem> = manifest
        .instances
        .iter()
        .zip(items_meta)
        .filter_map(|(i, inst)| {
            let (file, has_previews) = placed.get(&i.meta.sop_instance_uid)?;
            Some(CommitItem {
                inst,
                file: file.clone(),
                previews: *has_previews,
                cine_frames: i.cine_frames,
            })
        })
        .collect();
    let committed = store::commit_study(
        pool,
        &edge.name,
        study_uid,
        &items,
        &inb.priority,
        inb.clinical_question.as_deref(),
        now,
    )
    .await;
    // Every placed file is settled: kept when indexed, or when this failure
    // is one a retry resolves (the files stay in place and are accepted as
    // they are then); taken back when the study is refused for good.
    let settle = |keep: bool| {
        let archive = hub.archive.clone();
        let files: Vec<Committed> = placed.values().map(|(c, _)| c.clone()).collect();
        tokio::task::spawn_blocking(move || files.iter().for_each(|f| archive.settle(f, keep)))
    };
    let (new, dup) = match committed {
        Ok(v) => {
            let _ = settle(true).await;
            v
        }
        Err(crate::archive::index::IndexError::Conflict(c)) => {
            // Lost a race since the check above: take back the files this
            // commit put in place (nothing refers to them), then refuse.
            let _ = settle(false).await;
            let _ = store::unstage_all(pool, &edge.name, study_uid).await;
            return Err(refuse_conflict(hub, edge, &c).await);
        }
        Err(e) => {
            let _ = settle(true).await;
            return Err(e.into());
        }
    };
    let _ = std::fs::remove_dir_all(hub.staging.join(&edge.name).join(study_uid));
    let bytes: u64 = manifest.instances.iter().map(|i| i.file_size).sum();
    let began = store::began_ms(pool, &edge.name, study_uid).await.ok().flatten();
    hub.status.with(&edge.name, |f| {
        f.studies_total += 1;
        f.bytes_total += bytes;
        if let Some(b) = began
            && now > b
        {
            f.goodput_bps = bytes as f64 * 8000.0 / (now - b) as f64;
        }
    });
    info!(study_uid = %study_uid, instances = new, duplicates = dup, "study committed from edge");
    Ok((
        Response::Committed {
            instances: new,
            duplicates: dup,
        },
        Vec::new(),
    ))
}

/// The manifest's instances as the hub files them: the edge's clinic (the
/// hub's own record, never the edge's word), no stability wait (the study
/// is complete), received now.
fn as_filed(edge: &EdgeRow, manifest: &Manifest, now: i64) -> Vec<crate::archive::index::NewInstance> {
    manifest
        .instances
        .iter()
        .map(|i| crate::archive::index::NewInstance {
            clinic_id: edge.clinic_id.clone(),
            stable_after_ms: 0,
            received_ms: now,
            ..i.meta.clone()
        })
        .collect()
}

/// Audits a study refused because one of its instances collides with data
/// the edge's clinic does not own, and words the refusal for the edge.
async fn refuse_conflict(hub: &Hub, edge: &EdgeRow, c: &crate::archive::index::Conflict) -> HandleError {
    warn!(
        study_uid = %c.study_uid,
        level = c.level.token(),
        reason = c.reason_token(),
        "study refused: an instance's UIDs belong elsewhere"
    );
    crate::reading::audit::record_ingest_refusal(
        hub.index.pool(),
        now_ms(),
        &edge.name,
        crate::reading::audit::Actor::Relay,
        &edge.clinic_id,
        c,
        edge.last_addr.as_deref().unwrap_or_default(),
    )
    .await;
    HandleError::Refuse(format!("refused: instance {}: {c}", c.sop_instance_uid), false)
}

/// (SOP UID, staged path, content hash, [(preview kind, staged path)]).
type Move = (String, String, String, Vec<(String, String)>);

enum PlaceError {
    Vanished(String),
    Io(std::io::Error),
}

/// Blocking: move staged instance files (and their previews) into the
/// archive through the blob boundary, each durable when placed. Returns, per SOP UID, the
/// committed file and whether its thumbnail and preview came along.
fn place_files(archive: &Archive, moves: Vec<Move>) -> Result<HashMap<String, (Committed, bool)>, PlaceError> {
    let mut out: HashMap<String, (Committed, bool)> = HashMap::new();
    let placed = place_each(archive, moves, &mut out);
    if placed.is_err() {
        // Nothing refers to what this attempt moved: a retry stages again.
        for (c, _) in out.values() {
            archive.settle(c, false);
        }
    }
    placed.map(|()| out)
}

fn place_each(
    archive: &Archive,
    moves: Vec<Move>,
    out: &mut HashMap<String, (Committed, bool)>,
) -> Result<(), PlaceError> {
    for (sop, staged, sha, previews) in moves {
        // Durable when placed (rename and directory fsync on local files,
        // the upload on S3).
        let committed = archive
            .place(Path::new(&staged), &sha)
            .map_err(PlaceError::Io)?
            .ok_or_else(|| PlaceError::Vanished(sop.clone()))?;
        let mut kinds = HashSet::new();
        for (kind, path) in previews {
            if archive.place_derived(&committed.rel_path, &kind, Path::new(&path)) {
                kinds.insert(kind);
            }
        }
        let has_previews = kinds.contains("thumb") && kinds.contains("preview");
        out.insert(sop, (committed, has_previews));
    }
    Ok(())
}

/// The way back: waits (up to `wait_ms`, bounded) for reports for this
/// edge's clinic or notifications newer than the edge's cursor.
async fn poll(hub: &Hub, edge: &EdgeRow, notif_after: i64, wait_ms: u64) -> Result<(Response, Vec<u8>), HandleError> {
    let pool = hub.index.pool();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms.min(25_000));
    let target = format!("edge:{}", edge.name);
    loop {
        let due = crate::reading::delivery::due_for_target(pool, &target, 16)
            .await
            .map_err(|e| HandleError::Refuse(e.to_string(), true))?;
        let notes: Vec<WayBackNotification> = notifications::since(pool, &edge.clinic_id, notif_after, 100)
            .await
            .map_err(|e| HandleError::Refuse(e.to_string(), true))?
            .into_iter()
            .map(|n| WayBackNotification {
                id: n.id,
                kind: n.kind,
                study_uid: n.study_uid,
                text: n.text,
                created_ms: n.created_ms,
            })
            .collect();
        if !due.is_empty() || !notes.is_empty() || tokio::time::Instant::now() >= deadline {
            let mut reports = Vec::new();
            let mut body = Vec::new();
            for d in due {
                match crate::reading::delivery::ensure_file(
                    &hub.index,
                    &hub.cfg,
                    &hub.cfg.data_dir.join("sr-spool"),
                    &d,
                )
                .await
                {
                    Ok(path) => match tokio::fs::read(&path).await {
                        Ok(bytes) => {
                            reports.push(WayBackReport {
                                delivery_id: d.id,
                                study_uid: d.study_uid.clone(),
                                version: d.version,
                                sop_instance_uid: d.sop_instance_uid.clone(),
                                len: bytes.len() as u64,
                            });
                            body.extend_from_slice(&bytes);
                        }
                        Err(e) => warn!(delivery = d.id, error = %e, "reading a report SR for the edge failed"),
                    },
                    Err(e) => warn!(delivery = d.id, error = %e, "building a report SR for the edge failed"),
                }
            }
            return Ok((
                Response::Inbox {
                    reports,
                    notifications: notes,
                },
                body,
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
