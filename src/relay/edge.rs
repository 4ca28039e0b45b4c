//! The edge end of the relay link: keeps one QUIC connection to the hub
//! (reconnecting with backoff), drains the outbox in priority order, and
//! brings reports and notifications back.
//!
//! Per study: announce the manifest (the hub answers with what it already
//! holds, so a restart on either side resumes rather than repeats), send
//! previews on a higher-priority stream, then the remaining instances in
//! bundles over several streams at once, then ask the hub to commit. A
//! STAT study completing meanwhile preempts at the next bundle boundary;
//! what was staged stays staged.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::link::{LinkError, LinkStatus, read_body, read_frame};
use super::plan::{self, InstanceInfo, PartKind};
use super::rate::TokenBucket;
use super::store::{self, OutboxItem, OutgoingInstance, ReceivedReport};
use super::wire::{self, Manifest, Member, PreviewItem, Request, Response};
use crate::archive::files::Archive;
use crate::archive::index::Index;
use crate::clock::now_ms;
use crate::config::{Config, EdgeConfig};

pub const HUB: &str = "hub";

pub struct Edge {
    pub cfg: Arc<Config>,
    pub ecfg: EdgeConfig,
    pub index: Index,
    pub archive: Archive,
    pub status: Arc<LinkStatus>,
    pub delivery: crate::reading::delivery::DeliveryHandle,
    bucket: Mutex<TokenBucket>,
    client: quinn::ClientConfig,
}

impl Edge {
    pub fn new(
        cfg: Arc<Config>,
        index: Index,
        archive: Archive,
        status: Arc<LinkStatus>,
        delivery: crate::reading::delivery::DeliveryHandle,
    ) -> Result<Edge, String> {
        let ecfg = cfg.edge.clone().ok_or("role = \"edge\" needs an [edge] section")?;
        let client = super::pki::edge_client_config(&ecfg.cert, &ecfg.key, &ecfg.hub_ca).map_err(|e| e.to_string())?;
        let bucket = Mutex::new(TokenBucket::from_mbit(ecfg.rate_mbit, Instant::now()));
        Ok(Edge {
            cfg,
            ecfg,
            index,
            archive,
            status,
            delivery,
            bucket,
            client,
        })
    }

    fn pace(&self, n: usize) -> Duration {
        self.bucket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(n, Instant::now())
    }
}

/// Runs until `shutdown`: connect, drain, reconnect.
pub async fn run(edge: Arc<Edge>, shutdown: CancellationToken) {
    if let Err(e) = store::install_outbox(edge.index.pool()).await {
        warn!(error = %e, "cannot install the relay outbox; nothing will be relayed");
        return;
    }
    let bind: std::net::SocketAddr = ([0, 0, 0, 0], 0).into();
    let mut endpoint = match quinn::Endpoint::client(bind) {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "cannot open a UDP socket for the relay link");
            return;
        }
    };
    endpoint.set_default_client_config(edge.client.clone());
    let mut backoff = Duration::from_millis(250);
    let mut last_logged: Option<String> = None;
    while !shutdown.is_cancelled() {
        match connect(&edge, &endpoint).await {
            Ok(conn) => {
                info!(hub = %edge.ecfg.hub, remote = %conn.remote_address(), "relay link up");
                last_logged = None;
                edge.status.with(HUB, |f| {
                    f.connections += 1;
                    f.last_error = None;
                    f.update_from(&conn, now_ms());
                });
                session(&edge, &conn, &shutdown).await;
                let why = conn
                    .close_reason()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "closed".into());
                edge.status.with(HUB, |f| {
                    f.connected = false;
                    f.last_error = Some(why.clone());
                });
                if shutdown.is_cancelled() {
                    conn.close(quinn::VarInt::from_u32(0), b"edge shutting down");
                    break;
                }
                warn!(reason = %why, "relay link down; reconnecting");
                backoff = if refused(&why) {
                    Duration::from_secs(60)
                } else {
                    Duration::from_millis(250)
                };
            }
            Err(e) => {
                let msg = e.to_string();
                if last_logged.as_deref() != Some(msg.as_str()) {
                    warn!(hub = %edge.ecfg.hub, error = %msg, "cannot reach the hub; retrying");
                    last_logged = Some(msg.clone());
                }
                if refused(&msg) {
                    backoff = Duration::from_secs(60);
                } else if backoff >= Duration::from_secs(60) {
                    backoff = Duration::from_secs(5);
                }
                edge.status.with(HUB, |f| {
                    f.connected = false;
                    f.last_error = Some(msg);
                });
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        // Up to 5 s between attempts while the link is merely down; a
        // refused identity (set above) keeps its minute.
        if backoff < Duration::from_secs(5) {
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
}

/// The hub refused this edge's identity: retrying quickly cannot help.
fn refused(why: &str) -> bool {
    why.contains("revoked") || why.contains("unknown edge certificate") || why.contains("certificate")
}

async fn connect(edge: &Edge, endpoint: &quinn::Endpoint) -> Result<quinn::Connection, String> {
    let addr = tokio::net::lookup_host(&edge.ecfg.hub)
        .await
        .map_err(|e| format!("resolving {}: {e}", edge.ecfg.hub))?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", edge.ecfg.hub))?;
    let connecting = endpoint.connect(addr, &edge.ecfg.hub_name).map_err(|e| e.to_string())?;
    let conn = tokio::time::timeout(Duration::from_secs(20), connecting)
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

async fn session(edge: &Arc<Edge>, conn: &quinn::Connection, shutdown: &CancellationToken) {
    let way_back = tokio::spawn(way_back(edge.clone(), conn.clone()));
    let stats = {
        let (edge, conn) = (edge.clone(), conn.clone());
        tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(1));
            loop {
                t.tick().await;
                edge.status.with(HUB, |f| f.update_from(&conn, now_ms()));
                // Once a second at debug: enough to see a link's congestion
                // control at work (`log = "info,medrelay::relay=debug"`).
                let s = conn.stats();
                tracing::debug!(
                    rtt_ms = s.path.rtt.as_millis() as u64,
                    cwnd = s.path.cwnd,
                    sent = s.path.sent_packets,
                    lost = s.path.lost_packets,
                    tx_bytes = s.udp_tx.bytes,
                    "relay link"
                );
                if conn.close_reason().is_some() {
                    break;
                }
            }
        })
    };
    // Studies whose last attempt was refused wait before the next one.
    let mut backing_off: HashMap<String, Instant> = HashMap::new();
    loop {
        if shutdown.is_cancelled() || conn.close_reason().is_some() {
            break;
        }
        let now = Instant::now();
        backing_off.retain(|_, until| *until > now);
        let skip: Vec<String> = backing_off.keys().cloned().collect();
        if let Err(e) = store::sync_outbox(edge.index.pool()).await {
            warn!(error = %e, "taking completed studies into the outbox failed");
        }
        let next = match store::next_outbox(edge.index.pool(), &skip, 1).await {
            Ok(mut v) => v.pop(),
            Err(e) => {
                warn!(error = %e, "reading the outbox failed");
                None
            }
        };
        let Some(item) = next else {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = conn.closed() => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        };
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = send_study(edge, conn, &item) => r,
        };
        match outcome {
            Ok(Outcome::Sent { bytes }) => {
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                if let Err(e) = store::mark_sent(edge.index.pool(), &item, bytes, now_ms()).await {
                    warn!(study_uid = %item.study_uid, error = %e, "study committed at the hub but not marked sent; it will be announced again (no data resent)");
                }
                edge.status.with(HUB, |f| {
                    f.studies_total += 1;
                    f.bytes_total += bytes;
                    if bytes > 0 {
                        f.goodput_bps = bytes as f64 * 8.0 / secs;
                    }
                });
                info!(study_uid = %item.study_uid, bytes, secs = format!("{secs:.1}"), "study relayed and committed at the hub");
            }
            Ok(Outcome::Preempted) => {
                info!(study_uid = %item.study_uid, "paused for a higher-priority study");
            }
            Err(e) if e.is_connection() => {
                debug!(study_uid = %item.study_uid, error = %e, "link lost mid-study; will resume");
                break;
            }
            Err(e) => {
                warn!(study_uid = %item.study_uid, error = %e, "relaying a study failed; will retry");
                let _ = store::mark_failed(edge.index.pool(), &item.study_uid, &e.to_string()).await;
                let delay = Duration::from_secs(5u64 << item.attempts.clamp(0, 6));
                backing_off.insert(
                    item.study_uid.clone(),
                    Instant::now() + delay.min(Duration::from_secs(300)),
                );
            }
        }
    }
    way_back.abort();
    stats.abort();
}

enum Outcome {
    Sent { bytes: u64 },
    Preempted,
}

/// One request on its own stream; the request is paced by the rate cap.
async fn request(
    edge: &Edge,
    conn: &quinn::Connection,
    req: &Request,
    body: &[u8],
    priority: i32,
) -> Result<(Response, quinn::RecvStream), LinkError> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let _ = send.set_priority(priority);
    let head = wire::encode(req);
    let sent = async {
        write_paced(edge, &mut send, &head).await?;
        write_paced(edge, &mut send, body).await?;
        send.finish()?;
        Ok::<(), LinkError>(())
    }
    .await;
    match sent {
        Ok(()) => {}
        // The hub refuses a request on its header without reading the body
        // and stops the stream; its answer (why, and whether a retry can
        // help) is already on the way back. Treating the stop as a broken
        // link would reconnect and resend what will be refused again.
        Err(LinkError::Write(quinn::WriteError::Stopped(_))) => {}
        Err(e) => return Err(e),
    }
    let resp: Response = read_frame(&mut recv).await?;
    match resp {
        Response::Error { message, .. } => Err(LinkError::Refused(message)),
        r => Ok((r, recv)),
    }
}

async fn write_paced(edge: &Edge, send: &mut quinn::SendStream, mut data: &[u8]) -> Result<(), LinkError> {
    const CHUNK: usize = 64 << 10;
    while !data.is_empty() {
        let n = data.len().min(CHUNK);
        let wait = edge.pace(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        send.write_all(&data[..n]).await?;
        data = &data[n..];
    }
    Ok(())
}

async fn send_study(edge: &Arc<Edge>, conn: &quinn::Connection, item: &OutboxItem) -> Result<Outcome, LinkError> {
    let pool = edge.index.pool();
    let (mut insts, priority, question) = store::outgoing(pool, &item.study_uid)
        .await
        .map_err(|e| LinkError::Unexpected(format!("reading the study: {e}")))?;
    // Sizes of the files as stored (the index counts the dataset only).
    let archive = edge.archive.clone();
    let paths: Vec<String> = insts.iter().map(|i| i.rel_path.clone()).collect();
    let sizes =
        tokio::task::spawn_blocking(move || paths.iter().map(|p| archive.size(p)).collect::<Result<Vec<u64>, _>>())
            .await
            .map_err(|e| LinkError::Unexpected(e.to_string()))?
            .map_err(|e| LinkError::Unexpected(format!("an instance file of the study is missing: {e}")))?;
    for (i, s) in insts.iter_mut().zip(sizes) {
        i.manifest.file_size = s;
    }
    let manifest = Manifest {
        study_uid: item.study_uid.clone(),
        priority,
        clinical_question: question,
        instances: insts.iter().map(|i| i.manifest.clone()).collect(),
    };
    let (resp, _) = request(edge, conn, &Request::Begin { manifest }, &[], 2).await?;
    let (have_instances, have_previews) = match resp {
        Response::Begun {
            have_instances,
            have_previews,
        } => (
            have_instances.into_iter().collect::<HashSet<_>>(),
            have_previews.into_iter().collect::<HashSet<_>>(),
        ),
        other => return Err(LinkError::Unexpected(format!("{other:?}"))),
    };
    let insts = Arc::new(insts);
    // The first preview of each series goes before any pixels (the expert
    // sees the study while the rest travels); the other previews share the
    // link with the bundles on a higher-priority stream.
    let (firsts, others) = preview_order(&insts);
    let first = read_previews(edge, &insts, &firsts, &have_previews, usize::MAX).await;
    if let Some((items, body)) = first.into_iter().next()
        && let Err(e) = flush_previews(edge, conn, &item.study_uid, items, body).await
    {
        if e.is_connection() {
            return Err(e);
        }
        warn!(study_uid = %item.study_uid, error = %e, "first previews not relayed");
    }
    // The rest are read while the bundles travel, not before the first.
    let previews = {
        let (edge, conn, uid, insts) = (edge.clone(), conn.clone(), item.study_uid.clone(), insts.clone());
        tokio::spawn(async move {
            for (items, body) in read_previews(&edge, &insts, &others, &have_previews, 256 << 10).await {
                flush_previews(&edge, &conn, &uid, items, body).await?;
            }
            Ok::<(), LinkError>(())
        })
    };
    let todo: Vec<usize> = (0..insts.len())
        .filter(|&i| !have_instances.contains(&insts[i].manifest.meta.sop_instance_uid))
        .collect();
    let sent_bytes: u64 = todo.iter().map(|&i| insts[i].manifest.file_size).sum();
    let r = send_bundles(edge, conn, item, &insts, &todo).await;
    let previews_result = previews.await;
    if r? {
        return Ok(Outcome::Preempted);
    }
    match previews_result {
        Ok(Err(e)) if e.is_connection() => return Err(e),
        Ok(Err(e)) => warn!(study_uid = %item.study_uid, error = %e, "previews not relayed; the hub renders its own"),
        _ => {}
    }
    for _round in 0..3 {
        let (resp, _) = request(
            edge,
            conn,
            &Request::Commit {
                study_uid: item.study_uid.clone(),
            },
            &[],
            2,
        )
        .await?;
        match resp {
            Response::Committed { .. } => return Ok(Outcome::Sent { bytes: sent_bytes }),
            Response::Missing { sop_uids } => {
                warn!(study_uid = %item.study_uid, missing = sop_uids.len(), "the hub lacks instances; sending them again");
                let again: HashSet<String> = sop_uids.into_iter().collect();
                let idx: Vec<usize> = (0..insts.len())
                    .filter(|&i| again.contains(&insts[i].manifest.meta.sop_instance_uid))
                    .collect();
                send_bundles(edge, conn, item, &insts, &idx).await?;
            }
            other => return Err(LinkError::Unexpected(format!("{other:?}"))),
        }
    }
    Err(LinkError::Refused(
        "the hub still lacks instances after three rounds".into(),
    ))
}

/// Send the given instances in bundles, `streams` at once. Returns true
/// when preempted by a higher-priority study (in-flight bundles finish).
async fn send_bundles(
    edge: &Arc<Edge>,
    conn: &quinn::Connection,
    item: &OutboxItem,
    insts: &Arc<Vec<OutgoingInstance>>,
    which: &[usize],
) -> Result<bool, LinkError> {
    let infos: Vec<InstanceInfo> = which
        .iter()
        .map(|&i| InstanceInfo {
            sop_uid: insts[i].manifest.meta.sop_instance_uid.clone(),
            sha256: insts[i].manifest.sha256.clone(),
            size: insts[i].manifest.file_size,
            transfer_syntax: insts[i].manifest.meta.transfer_syntax.clone(),
        })
        .collect();
    let p = plan::plan(&item.study_uid, &infos, edge.ecfg.bundle_mb << 20);
    let mut bundles = p.parts.into_iter().filter_map(|part| match part.kind {
        PartKind::Bundle { members } => Some((part.id, part.compress, members)),
        _ => None,
    });
    let mut inflight: JoinSet<Result<(), LinkError>> = JoinSet::new();
    let mut preempted = false;
    let mut checked = Instant::now();
    loop {
        while inflight.len() < edge.ecfg.streams && !preempted {
            let Some((id, compress, members)) = bundles.next() else {
                break;
            };
            // A STAT study waiting overtakes this one at a bundle boundary.
            if checked.elapsed() > Duration::from_millis(200) {
                checked = Instant::now();
                if let Ok(v) = store::next_outbox(edge.index.pool(), &[], 1).await
                    && let Some(top) = v.first()
                    && top.rank < item.rank
                {
                    preempted = true;
                    break;
                }
            }
            let members: Vec<(String, String, String)> = members
                .iter()
                .map(|&m| {
                    let inst = &insts[which[m]];
                    (
                        inst.manifest.meta.sop_instance_uid.clone(),
                        inst.manifest.sha256.clone(),
                        inst.rel_path.clone(),
                    )
                })
                .collect();
            let (edge, conn, uid) = (edge.clone(), conn.clone(), item.study_uid.clone());
            inflight.spawn(async move { send_bundle(&edge, &conn, &uid, id, compress, members).await });
        }
        match inflight.join_next().await {
            None => break,
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => {
                inflight.abort_all();
                return Err(e);
            }
            Some(Err(e)) => {
                inflight.abort_all();
                return Err(LinkError::Unexpected(format!("bundle task: {e}")));
            }
        }
    }
    Ok(preempted)
}

async fn send_bundle(
    edge: &Edge,
    conn: &quinn::Connection,
    study_uid: &str,
    part_id: String,
    compress: bool,
    members: Vec<(String, String, String)>,
) -> Result<(), LinkError> {
    let archive = edge.archive.clone();
    let level = edge.ecfg.zstd_level;
    let (members, body) = tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<Member>, Vec<u8>)> {
        let mut plain = Vec::new();
        let mut out = Vec::with_capacity(members.len());
        for (sop, sha, rel) in members {
            let bytes = archive.read(&rel).map_err(|e| std::io::Error::other(e.to_string()))?;
            out.push(Member {
                sop_uid: sop,
                sha256: sha,
                file_sha256: hex::encode(Sha256::digest(&bytes)),
                size: bytes.len() as u64,
            });
            if compress {
                plain.extend(wire::shuffle16(&bytes));
            } else {
                plain.extend_from_slice(&bytes);
            }
        }
        let body = if compress {
            zstd::bulk::compress(&plain, level)?
        } else {
            plain
        };
        Ok((out, body))
    })
    .await
    .map_err(|e| LinkError::Unexpected(e.to_string()))?
    .map_err(|e| LinkError::Unexpected(format!("reading instance files: {e}")))?;
    let req = Request::Bundle {
        study_uid: study_uid.to_string(),
        part_id,
        compressed: compress,
        shuffled: compress,
        body_len: body.len() as u64,
        members,
    };
    match request(edge, conn, &req, &body, 0).await?.0 {
        Response::Stored { .. } => Ok(()),
        other => Err(LinkError::Unexpected(format!("{other:?}"))),
    }
}

/// Previews in sending order: the first image of each series (what the
/// worklist shows, sent alone and first), then the others.
fn preview_order(insts: &[OutgoingInstance]) -> (Vec<usize>, Vec<usize>) {
    let mut firsts: Vec<usize> = Vec::new();
    let mut seen_series = HashSet::new();
    for (i, inst) in insts.iter().enumerate() {
        if inst.preview_ok && seen_series.insert(inst.manifest.meta.series_uid.clone()) {
            firsts.push(i);
        }
    }
    let others = (0..insts.len())
        .filter(|i| insts[*i].preview_ok && !firsts.contains(i))
        .collect();
    (firsts, others)
}

/// The preview files of `which`, in parts of about `cap` bytes. Missing
/// files (not rendered yet, or no preview possible) are skipped; the hub
/// renders those itself after the commit.
async fn read_previews(
    edge: &Edge,
    insts: &[OutgoingInstance],
    which: &[usize],
    skip: &HashSet<String>,
    cap: usize,
) -> Vec<(Vec<PreviewItem>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut items: Vec<PreviewItem> = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    for &i in which {
        let inst = &insts[i];
        let sop = &inst.manifest.meta.sop_instance_uid;
        if skip.contains(sop) {
            continue;
        }
        for kind in ["thumb", "preview", "mid", "cine"] {
            let (archive, rel) = (edge.archive.clone(), inst.rel_path.clone());
            let Ok(Ok(Some(bytes))) = tokio::task::spawn_blocking(move || archive.derived(&rel, kind)).await else {
                continue;
            };
            items.push(PreviewItem {
                sop_uid: sop.clone(),
                kind: kind.to_string(),
                len: bytes.len() as u64,
            });
            body.extend_from_slice(&bytes);
        }
        if body.len() >= cap {
            out.push((std::mem::take(&mut items), std::mem::take(&mut body)));
        }
    }
    if !items.is_empty() {
        out.push((items, body));
    }
    out
}

async fn flush_previews(
    edge: &Edge,
    conn: &quinn::Connection,
    study_uid: &str,
    items: Vec<PreviewItem>,
    body: Vec<u8>,
) -> Result<(), LinkError> {
    let req = Request::Previews {
        study_uid: study_uid.to_string(),
        items,
    };
    match request(edge, conn, &req, &body, 1).await?.0 {
        Response::Stored { .. } => Ok(()),
        other => Err(LinkError::Unexpected(format!("{other:?}"))),
    }
}

/// Reports and notifications from the hub, long-polled over the same link.
async fn way_back(edge: Arc<Edge>, conn: quinn::Connection) {
    loop {
        match way_back_once(&edge, &conn).await {
            Ok(()) => {}
            Err(e) if e.is_connection() => return,
            Err(e) => {
                warn!(error = %e, "the way back from the hub failed; retrying");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

async fn way_back_once(edge: &Edge, conn: &quinn::Connection) -> Result<(), LinkError> {
    let pool = edge.index.pool();
    let cursor: i64 = store::kv_get(pool, "notif_cursor")
        .await
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (resp, mut recv) = request(
        edge,
        conn,
        &Request::Poll {
            notif_after: cursor,
            wait_ms: 20_000,
        },
        &[],
        3,
    )
    .await?;
    let Response::Inbox { reports, notifications } = resp else {
        return Err(LinkError::Unexpected("expected an inbox".into()));
    };
    if reports.is_empty() && notifications.is_empty() {
        return Ok(());
    }
    let total: u64 = reports.iter().map(|r| r.len).sum();
    let body = read_body(&mut recv, total, 256 << 20).await?;
    let spool = edge.cfg.data_dir.join("sr-spool");
    let default_clinic = edge.cfg.clinics.first().map(|c| c.id.clone()).unwrap_or_default();
    let mut received = Vec::new();
    let mut at = 0usize;
    for r in &reports {
        let bytes = body[at..at + r.len as usize].to_vec();
        at += r.len as usize;
        if !r.sop_instance_uid.bytes().all(|b| b.is_ascii_digit() || b == b'.') || r.sop_instance_uid.is_empty() {
            warn!("a report from the hub has an invalid UID; skipped");
            continue;
        }
        let dir = spool.clone();
        let name = format!("{}.dcm", r.sop_instance_uid);
        let path = tokio::task::spawn_blocking(move || crate::reading::delivery::write_durable(&dir, &name, &bytes))
            .await
            .map_err(|e| LinkError::Unexpected(e.to_string()))?
            .map_err(|e| LinkError::Unexpected(format!("storing a report: {e}")))?;
        let clinic = match edge.index.study(&r.study_uid).await {
            Ok(Some(s)) => s.clinic_id,
            _ => default_clinic.clone(),
        };
        let target = edge
            .cfg
            .clinics
            .iter()
            .find(|c| c.id == clinic)
            .and_then(|c| c.pacs.clone());
        received.push(ReceivedReport {
            study_uid: r.study_uid.clone(),
            version: r.version,
            sop_instance_uid: r.sop_instance_uid.clone(),
            path: path.to_string_lossy().into_owned(),
            clinic_id: clinic,
            target,
        });
    }
    let mut notes = Vec::new();
    let mut next_cursor = cursor;
    for n in notifications {
        next_cursor = next_cursor.max(n.id);
        let clinic = match &n.study_uid {
            Some(u) => match edge.index.study(u).await {
                Ok(Some(s)) => s.clinic_id,
                _ => default_clinic.clone(),
            },
            None => default_clinic.clone(),
        };
        notes.push((clinic, n));
    }
    store::store_inbox(pool, &received, &notes, next_cursor, now_ms())
        .await
        .map_err(|e| LinkError::Unexpected(format!("storing the inbox: {e}")))?;
    if !reports.is_empty() {
        info!(reports = reports.len(), "reports received from the hub");
        edge.delivery.wake();
        let ids = reports.iter().map(|r| r.delivery_id).collect();
        request(edge, conn, &Request::Ack { delivery_ids: ids }, &[], 3).await?;
    }
    Ok(())
}
