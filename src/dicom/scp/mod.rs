//! The DICOM SCP: listener, association loop, C-ECHO and C-STORE; the
//! Query/Retrieve services are in [`qr`].
//!
//! Layering, from the socket in: dicom-ul negotiates the association and reads
//! whole PDUs (strict: never more than our max PDU, so memory per association
//! is bounded); [`Assembler`] turns PDVs into DIMSE messages; dataset bytes go
//! through a bounded channel to a blocking writer thread ([`receive_instance`])
//! that writes, validates, fsyncs and renames; the index writer commits; only
//! then is the C-STORE-RSP sent. Errors map to DIMSE statuses in one place,
//! [`StoreFailure`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use dicom_ul::association::server::AccessControl;
use dicom_ul::association::{AsyncServerAssociation, ServerAssociationOptions};
use dicom_ul::pdu::{
    AbortRQServiceProviderReason, AbortRQSource, AssociationRJ, AssociationRJResult,
    AssociationRJServiceProviderPresentationReason, AssociationRJServiceUserReason, AssociationRJSource, PDataValue,
    PDataValueType, Pdu, PresentationContextResultReason, UserIdentity,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

mod qr;
mod retrieve;

use super::assembly::{Assembler, Step};
use super::attrs::{self, Attrs};
use super::dimse::{Command, field, status, tag};
use super::limits::{Progress, ProgressRule, RQ_PREFIX_LEN, RqPrefix, Slot, Slots, parse_rq_prefix};
use super::meta::{file_meta, is_valid_uid};
use super::sop_classes::STORAGE_SOP_CLASSES;
use super::walk::{self, Encoding};
use crate::archive::files::{Archive, ArchiveError, Committed};
use crate::archive::index::{Conflict, DurableGate, Index, IndexError, NewInstance, StoreError, StoreOutcome};
use crate::clock::now_ms;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::reading::access::Scope;

/// Below this much free space, an I/O failure is reported as out of resources.
const LOW_SPACE_BYTES: u64 = 16 << 20;

/// Command sets are a few hundred bytes; anything near this is hostile.
const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Dataset chunks in flight between the socket and the writer thread, per
/// association: with 1 MB PDUs this bounds buffered data to a few MB.
const CHUNKS_IN_FLIGHT: usize = 4;

/// The "stored" event: an instance this SCP has just committed (new, or a
/// new version of one; a duplicate is not news). `app` wires it to preview
/// rendering, so the SCP knows nothing of what follows a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub sop_instance_uid: String,
    pub version: i64,
    /// Instance path relative to the archive root.
    pub rel_path: String,
}

/// Told of each [`Stored`] instance on the C-STORE path, before the
/// response goes out: it must never block or wait (offer the event to a
/// bounded queue with `try_send`, and leave a full queue to a catch-up).
pub type OnStored = Arc<dyn Fn(Stored) + Send + Sync>;

/// The clinic stored data is filed under and its stability delay: taken
/// from who sends (the calling AE here, the caller's token or account for
/// STOW), never from the data itself.
#[derive(Debug, Clone)]
pub struct ClinicRoute {
    pub clinic_id: String,
    pub stable_after_ms: i64,
}

impl ClinicRoute {
    /// The route of `clinic_id` (its own `stable_after_secs`, else the global one).
    pub fn for_clinic(cfg: &Config, clinic_id: &str) -> ClinicRoute {
        let global_ms = (cfg.stability.stable_after_secs * 1000.0) as i64;
        let ms = cfg
            .clinics
            .iter()
            .find(|c| c.id == clinic_id)
            .and_then(|c| c.stable_after_secs)
            .map(|s| (s * 1000.0) as i64)
            .unwrap_or(global_ms);
        ClinicRoute {
            clinic_id: clinic_id.to_string(),
            stable_after_ms: ms,
        }
    }
}

/// The one ingest pipeline for C-STORE and STOW-RS: a blocking writer
/// thread fed chunks through a bounded channel validates the dataset
/// against its SOP class and writes it, the archive makes it durable, and
/// the index commits only once it is (`Index::store_when_durable`, with the
/// conflict and ownership rules; refusals audited). Sharing it means both
/// front doors have the same durability and isolation guarantees.
#[derive(Clone)]
pub struct Ingest {
    pub archive: Archive,
    pub index: Index,
    pub metrics: Arc<Metrics>,
    /// Told of every stored instance (never blocking).
    pub on_stored: Option<OnStored>,
}

/// One instance to ingest: who sends it (for the file meta's source AE,
/// the index row and refusal audits), where it goes, what it claims to be.
#[derive(Debug, Clone)]
pub struct IngestRequest {
    pub route: ClinicRoute,
    /// The calling AE, or `token:NAME` / the account for STOW.
    pub calling: String,
    pub via: crate::reading::audit::Actor,
    pub remote: String,
    pub sop_class: String,
    pub sop_instance: String,
    pub ts: String,
    /// STOW-RS to `/studies/{study}`: the dataset must belong to this
    /// study (else 0xA900, before anything is committed). None for C-STORE.
    pub study: Option<String>,
}

/// An instance being received: feed its dataset bytes with [`Ingesting::send`],
/// then [`Ingesting::finish`] waits until it is durable and indexed.
pub struct Ingesting {
    ingest: Ingest,
    req: IngestRequest,
    tx: mpsc::Sender<Chunk>,
    /// Validated and hashed, not yet durable.
    ready: oneshot::Receiver<Result<(NewInstance, Committed), StoreFailure>>,
    /// Durable (fsynced, renamed, directory fsynced).
    durable: DurableGate,
}

impl Ingest {
    /// Starts the writer thread for one instance (after checking the
    /// archive's free-space reserve); the UIDs must already be checked.
    /// Boxed: it is held inside per-message state enums.
    pub fn start(&self, req: IngestRequest) -> Result<Box<Ingesting>, StoreFailure> {
        self.archive.check_reserve()?;
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let params = ReceiveParams {
            archive: self.archive.clone(),
            sop_class: req.sop_class.clone(),
            sop_instance: req.sop_instance.clone(),
            ts: req.ts.clone(),
            calling: req.calling.clone(),
            route: req.route.clone(),
            study: req.study.clone(),
        };
        let (ready_tx, ready) = oneshot::channel();
        let (durable_tx, durable) = oneshot::channel();
        tokio::task::spawn_blocking(move || receive_instance(params, rx, ready_tx, durable_tx));
        Ok(Box::new(Ingesting {
            ingest: self.clone(),
            req,
            tx,
            ready,
            durable,
        }))
    }

    fn low_space(&self) -> bool {
        self.archive.free_bytes().map(|f| f < LOW_SPACE_BYTES).unwrap_or(false)
    }
}

impl Ingesting {
    /// Hands dataset bytes to the writer (waits while its queue is full).
    /// An error here means the writer already failed: keep sending (or
    /// not), the failure comes out of `finish`.
    pub async fn send(&self, data: Vec<u8>) {
        self.ingest.metrics.bytes_received.fetch_add(data.len() as u64, Relaxed);
        let _ = self.tx.send(Chunk::Data(data)).await;
    }

    /// The dataset is complete: wait for validation, durability and the
    /// index commit. Dropping an `Ingesting` instead abandons the instance
    /// (the temp file is removed).
    pub async fn finish(self) -> Result<StoreOutcome, StoreFailure> {
        tracing::trace!("dataset received");
        let _ = self.tx.send(Chunk::End).await;
        drop(self.tx);
        let t = Instant::now();
        let r = self
            .ready
            .await
            .unwrap_or_else(|_| Err(StoreFailure::Internal("file writer ended unexpectedly".into())));
        slow_stage("file writer validating", t);
        let t = Instant::now();
        let r = match r {
            Ok((inst, planned)) => index_instance(&self.ingest, &self.req, inst, planned, self.durable).await,
            Err(f) => Err(f),
        };
        slow_stage("index and fsync", t);
        r
    }
}

/// Counts an ingest's outcome in the store metrics (one place for C-STORE
/// and STOW-RS, so /metrics means the same for both).
pub fn count_outcome(m: &Metrics, r: &Result<StoreOutcome, StoreFailure>) {
    let c = match r {
        Ok(StoreOutcome::Stored) => &m.instances_stored,
        Ok(StoreOutcome::Duplicate) => &m.instances_duplicate,
        Ok(StoreOutcome::NewVersion(_)) => &m.instances_new_version,
        Err(f) => return f.count(m),
    };
    c.fetch_add(1, Relaxed);
}

/// Everything an association needs, shared read-only.
pub struct Scp {
    cfg: Arc<Config>,
    archive: Archive,
    index: Index,
    metrics: Arc<Metrics>,
    routes: HashMap<String, ClinicRoute>,
    /// What each calling AE may query and retrieve: its clinic, or the
    /// clinics its hospital serves (`[[hospital]] ae_titles`).
    scopes: HashMap<String, Scope>,
    abstract_syntaxes: Vec<String>,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Established associations, overall and per calling AE.
    slots: Arc<Slots>,
    /// Connections whose association request is still arriving (each cut
    /// at `association_request_timeout_secs`); beyond this, new
    /// connections are closed at once.
    handshakes: Arc<Semaphore>,
    progress: ProgressRule,
    next_id: AtomicU64,
    /// The C-STORE pipeline (shared with STOW-RS).
    ingest: Ingest,
}

/// SCP/SCU role selection (PS3.7 D.3.3.4): a C-GET requester proposes
/// the SCP role for the storage classes it wants back; granting what it
/// proposed lets the C-STORE sub-operations flow on its association.
struct Roles;

impl dicom_ul::association::server::Negotiation for Roles {
    fn negotiate_roles(
        &self,
        _sop_class_uid: &str,
        scu_role: bool,
        scp_role: bool,
    ) -> Option<dicom_ul::pdu::RequestorRoles> {
        Some(dicom_ul::pdu::RequestorRoles {
            scu: scu_role,
            scp: scp_role,
        })
    }
}

/// Calling-AE allow-list and called-AE check, applied during negotiation so an
/// unknown device gets a proper A-ASSOCIATE-RJ with the reason.
#[derive(Clone)]
struct AeControl {
    allowed: Option<Arc<HashSet<String>>>,
    check_called: bool,
    /// DICOM TLS only: the slot taken at accept, counted against the
    /// calling AE once the request is read inside the TLS session. (On the
    /// plain port the AE is read before negotiation; see `Scp::handle`.)
    tls_slot: Option<Arc<std::sync::Mutex<Option<Slot>>>>,
}

impl AccessControl for AeControl {
    fn check_access(
        &self,
        this_ae: &str,
        calling: &str,
        called: &str,
        _user: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if self.check_called && called.trim() != this_ae.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        match &self.allowed {
            Some(set) if !set.contains(calling.trim()) => {
                return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
            }
            _ => {}
        }
        if let Some(cell) = &self.tls_slot {
            let mut held = cell.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(slot) = held.as_mut()
                && slot.bind_ae(calling.trim()).is_err()
            {
                // dicom-ul answers a refusal from here as permanent with
                // this reason; it has no way to say "transient, local
                // limit exceeded" as the plain port does.
                warn!(calling = %calling.trim(), "association limit of this calling AE reached (TLS), rejecting");
                return Err(AssociationRJServiceUserReason::NoReasonGiven);
            }
        }
        Ok(())
    }
}

impl Scp {
    pub fn new(
        cfg: Arc<Config>,
        archive: Archive,
        index: Index,
        metrics: Arc<Metrics>,
        tls: Option<Arc<rustls::ServerConfig>>,
        on_stored: Option<OnStored>,
    ) -> Scp {
        let global_ms = (cfg.stability.stable_after_secs * 1000.0) as i64;
        let mut routes = HashMap::new();
        for c in &cfg.clinics {
            let ms = c.stable_after_secs.map(|s| (s * 1000.0) as i64).unwrap_or(global_ms);
            for ae in &c.ae_titles {
                routes.insert(
                    ae.trim().to_string(),
                    ClinicRoute {
                        clinic_id: c.id.clone(),
                        stable_after_ms: ms,
                    },
                );
            }
        }
        let mut scopes: HashMap<String, Scope> = routes
            .iter()
            .map(|(ae, r)| (ae.clone(), Scope::Clinics(vec![r.clinic_id.clone()])))
            .collect();
        for h in &cfg.hospitals {
            for ae in &h.ae_titles {
                scopes.insert(ae.trim().to_string(), Scope::Clinics(h.serves.clone()));
            }
        }
        if routes.is_empty() {
            warn!("no [[clinic]] configured: accepting associations from ANY calling AE title (first-run mode)");
        }
        let mut abstract_syntaxes: Vec<String> = STORAGE_SOP_CLASSES.iter().map(|(uid, _)| uid.to_string()).collect();
        abstract_syntaxes.extend(cfg.dicom.extra_sop_classes.iter().cloned());
        abstract_syntaxes.push(super::dimse::VERIFICATION_SOP_CLASS.to_string());
        abstract_syntaxes.extend(super::qr::ALL_SOP_CLASSES.map(String::from));
        let slots = Slots::new(cfg.dicom.max_associations, cfg.dicom.per_ae_limit());
        let handshakes = Arc::new(Semaphore::new(cfg.dicom.max_associations));
        let progress = ProgressRule {
            grace: cfg.idle_timeout(),
            min_rate: cfg.dicom.min_receive_bytes_per_sec,
        };
        let ingest = Ingest {
            archive: archive.clone(),
            index: index.clone(),
            metrics: metrics.clone(),
            on_stored,
        };
        Scp {
            cfg,
            archive,
            index,
            metrics,
            routes,
            scopes,
            abstract_syntaxes,
            tls,
            slots,
            handshakes,
            progress,
            next_id: AtomicU64::new(1),
            ingest,
        }
    }

    fn options(
        &self,
        tls_slot: Option<Arc<std::sync::Mutex<Option<Slot>>>>,
    ) -> ServerAssociationOptions<'_, AeControl, Roles> {
        let allowed = if self.scopes.is_empty() {
            None
        } else {
            Some(Arc::new(self.scopes.keys().cloned().collect::<HashSet<_>>()))
        };
        let mut o = ServerAssociationOptions::new()
            .ae_access_control(AeControl {
                allowed,
                check_called: self.cfg.dicom.check_called_ae,
                tls_slot,
            })
            .with_negotiation(Roles)
            .ae_title(self.cfg.dicom.ae_title.as_str())
            .max_pdu_length(self.cfg.dicom.max_pdu)
            .strict(true)
            .read_timeout(self.cfg.idle_timeout())
            .write_timeout(self.cfg.idle_timeout());
        for a in &self.abstract_syntaxes {
            o = o.with_abstract_syntax(a.as_str());
        }
        if let Some(tls) = &self.tls {
            o = o.tls_config(tls.clone());
        }
        o
    }

    /// Accept associations until `shutdown`; each runs on `tracker` so the
    /// caller can wait for in-flight transfers to finish.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        use_tls: bool,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(v) => v,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let id = self.next_id.fetch_add(1, Relaxed);
            let span = info_span!("assoc", id, %peer, tls = use_tls);
            // Bounded before any task exists: a flood of connections that
            // never send a request cannot grow tasks or hold slots.
            let Ok(handshake) = self.handshakes.clone().try_acquire_owned() else {
                self.metrics.associations_rejected.fetch_add(1, Relaxed);
                span.in_scope(|| warn!("too many association requests in progress; closing the connection"));
                drop(stream);
                continue;
            };
            let scp = self.clone();
            tracker.spawn(async move { scp.handle(stream, peer, handshake, use_tls).await }.instrument(span));
        }
    }

    /// From TCP accept to a running association. The whole request phase
    /// (TLS handshake included) has one deadline,
    /// `association_request_timeout_secs`, however the bytes trickle in.
    async fn handle(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        handshake: OwnedSemaphorePermit,
        use_tls: bool,
    ) {
        let deadline = tokio::time::Instant::now() + self.cfg.association_request_timeout();
        if use_tls {
            return self.handle_tls(stream, peer, handshake, deadline).await;
        }
        // The calling AE decides which slots apply, so read it before
        // negotiating: peeked, the request stays in the socket for dicom-ul.
        let calling = match tokio::time::timeout_at(deadline, peek_calling_ae(&stream)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                debug!(error = %e, "connection closed before an association request");
                return;
            }
            Err(_) => return self.cut_request(),
        };
        let slot = match self.slots.acquire(calling.as_deref()) {
            Ok(slot) => slot,
            Err(busy) => {
                self.metrics.associations_rejected.fetch_add(1, Relaxed);
                warn!(
                    calling = calling.as_deref().unwrap_or(""),
                    limit = ?busy,
                    max = self.cfg.dicom.max_associations,
                    max_per_ae = self.cfg.dicom.per_ae_limit(),
                    "association limit reached, rejecting"
                );
                reject_busy(stream, self.cfg.dicom.max_pdu, deadline).await;
                return;
            }
        };
        let opts = self.options(None);
        match tokio::time::timeout_at(deadline, opts.establish_async(stream)).await {
            Ok(Ok(a)) => {
                drop(handshake);
                self.clone().run(a, peer, slot).await
            }
            Ok(Err(e)) => self.rejected(e),
            Err(_) => self.cut_request(),
        }
    }

    async fn handle_tls(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        handshake: OwnedSemaphorePermit,
        deadline: tokio::time::Instant,
    ) {
        // The request is inside the TLS session: take a slot now and count
        // it against the calling AE during negotiation (AeControl).
        let slot = match self.slots.acquire(None) {
            Ok(slot) => slot,
            Err(_) => {
                self.metrics.associations_rejected.fetch_add(1, Relaxed);
                warn!(
                    max = self.cfg.dicom.max_associations,
                    "association limit reached, closing a TLS connection"
                );
                return;
            }
        };
        let cell = Arc::new(std::sync::Mutex::new(Some(slot)));
        let opts = self.options(Some(cell.clone()));
        match tokio::time::timeout_at(deadline, opts.establish_tls_async(stream)).await {
            Ok(Ok(a)) => {
                drop(handshake);
                let slot = cell.lock().unwrap_or_else(|p| p.into_inner()).take();
                match slot {
                    Some(slot) => self.clone().run(a, peer, slot).await,
                    None => warn!("association slot vanished; closing"),
                }
            }
            Ok(Err(e)) => self.rejected(e),
            Err(_) => self.cut_request(),
        }
    }

    fn cut_request(&self) {
        self.metrics.associations_rejected.fetch_add(1, Relaxed);
        info!(
            secs = self.cfg.dicom.association_request_timeout_secs,
            "no complete association request in time; connection closed"
        );
    }

    fn rejected(&self, e: dicom_ul::association::Error) {
        self.metrics.associations_rejected.fetch_add(1, Relaxed);
        info!(reason = %e, "association not established");
    }

    async fn run<S>(self: Arc<Self>, mut assoc: AsyncServerAssociation<S>, peer: SocketAddr, _slot: Slot)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        self.metrics.associations_total.fetch_add(1, Relaxed);
        self.metrics.associations_active.fetch_add(1, Relaxed);
        let calling = dicom_ul::association::Association::peer_ae_title(&assoc)
            .trim()
            .to_string();
        let contexts: HashMap<u8, (String, String)> = assoc
            .presentation_contexts()
            .iter()
            .filter(|pc| pc.reason == PresentationContextResultReason::Acceptance)
            .map(|pc| (pc.id, (pc.abstract_syntax.clone(), pc.transfer_syntax.clone())))
            .collect();
        info!(calling = %calling, contexts = contexts.len(), "association accepted");
        // A hospital's AE may query and retrieve, never store; with no
        // [[clinic]] configured (first-run mode) everything is the one
        // unnamed clinic, and so is what it may query.
        let may_store = self.routes.is_empty() || self.routes.contains_key(&calling);
        let route = self.routes.get(&calling).cloned().unwrap_or(ClinicRoute {
            clinic_id: String::new(),
            stable_after_ms: (self.cfg.stability.stable_after_secs * 1000.0) as i64,
        });
        let scope = self
            .scopes
            .get(&calling)
            .cloned()
            .unwrap_or_else(|| Scope::Clinics(vec![String::new()]));
        let mut session = Session {
            scp: self.clone(),
            peer,
            calling,
            route,
            may_store,
            scope,
            contexts,
            max_send_pdu: assoc.requestor_max_pdu_length(),
            asm: Assembler::new(MAX_COMMAND_BYTES),
            current: None,
            progress: Progress::default(),
        };
        let end = session.drive(&mut assoc).await;
        match end {
            End::Released => {
                let _ = assoc.send(&Pdu::ReleaseRP).await;
                debug!("association released");
            }
            End::PeerAborted => info!("association aborted by peer"),
            End::Closed(why) => {
                self.metrics.associations_aborted.fetch_add(1, Relaxed);
                info!(reason = %why, "association ended without release");
            }
            End::Abort(reason, why) => {
                self.metrics.associations_aborted.fetch_add(1, Relaxed);
                warn!(reason = %why, "aborting association");
                let _ = assoc
                    .send(&Pdu::AbortRQ {
                        source: AbortRQSource::ServiceProvider(reason),
                    })
                    .await;
            }
        }
        // Bounded: over TLS, shutdown writes close_notify, which waits
        // forever on a peer that stopped reading.
        let _ = tokio::time::timeout(self.cfg.idle_timeout(), assoc.inner_stream().shutdown()).await;
        self.metrics.associations_active.fetch_sub(1, Relaxed);
    }
}

/// Answer an A-ASSOCIATE-RQ with "transient, local limit exceeded" so the
/// sender retries later instead of treating it as a configuration error.
/// The request is read whole first (by `deadline`): closing on unread bytes
/// would reset the connection before the peer reads the answer.
async fn reject_busy(mut stream: TcpStream, max_pdu: u32, deadline: tokio::time::Instant) {
    let mut buf = bytes::BytesMut::with_capacity(4096);
    let read = dicom_ul::association::read_pdu_from_wire_async(&mut stream, &mut buf, max_pdu, true);
    if let Ok(Ok(Pdu::AssociationRQ(_))) = tokio::time::timeout_at(deadline, read).await {
        let rj = Pdu::AssociationRJ(AssociationRJ {
            result: AssociationRJResult::Transient,
            source: AssociationRJSource::ServiceProviderPresentation(
                AssociationRJServiceProviderPresentationReason::LocalLimitExceeded,
            ),
        });
        let mut out = Vec::new();
        if dicom_ul::pdu::write_pdu(&mut out, &rj).is_ok() {
            let _ = stream.write_all(&out).await;
        }
    }
    let _ = stream.shutdown().await;
}

/// The calling AE title of the A-ASSOCIATE-RQ arriving on `stream`, read
/// with MSG_PEEK so the request stays queued for the association layer;
/// None when the first bytes are not an association request (the layer
/// answers those). Waits for the 42 bytes that hold the AE titles,
/// however slowly they come (the caller's deadline bounds it).
async fn peek_calling_ae(stream: &TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = [0u8; RQ_PREFIX_LEN];
    let mut pause = Duration::from_millis(2);
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        match parse_rq_prefix(&buf[..n]) {
            RqPrefix::Calling(ae) => return Ok(Some(ae)),
            RqPrefix::NotAssociateRq => return Ok(None),
            // Peeking does not consume, so the socket stays readable: wait
            // a little before looking again.
            RqPrefix::NeedMore => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    }
}

enum End {
    Released,
    PeerAborted,
    Closed(String),
    Abort(AbortRQServiceProviderReason, String),
}

/// Per-association state.
struct Session {
    scp: Arc<Scp>,
    peer: SocketAddr,
    calling: String,
    route: ClinicRoute,
    may_store: bool,
    scope: Scope,
    contexts: HashMap<u8, (String, String)>,
    max_send_pdu: u32,
    asm: Assembler,
    current: Option<Reception>,
    /// The message being received, against `Scp::progress`.
    progress: Progress,
}

/// The message whose dataset is being received.
enum Reception {
    Store(StoreJob),
    /// A C-FIND / C-MOVE / C-GET identifier.
    Query(qr::QueryJob),
    /// Refused up front (unknown context, bad command): drain the dataset, then answer.
    Discard {
        rq: Command,
        pc: u8,
        failure: StoreFailure,
    },
}

struct StoreJob {
    rq: Command,
    pc: u8,
    job: Box<Ingesting>,
}

enum Chunk {
    Data(Vec<u8>),
    End,
}

/// PS3.7 §9.1.1.1.9 (general C-STORE statuses) "Invalid SOP Instance":
/// the Affected SOP Instance UID violates the UID construction rules. Not
/// 0xC000, which says the data could not be parsed (the README's table).
const INVALID_SOP_INSTANCE: u16 = 0x0117;

/// PS3.7 §9.1.1.1.9 "Refused: Not authorized": the sender may not perform
/// this store. Used when an instance's UIDs already belong to another
/// clinic's data, or would move a stored series or instance to another
/// study or series: the dataset is well formed (not 0xA9xx, "does not match
/// its SOP class", nor 0xCxxx, "cannot understand"), and the refusal is
/// permanent, so a resend cannot help (unlike 0xA7xx, out of resources);
/// only an administrator can sort it out (the refusal is audited).
const NOT_AUTHORIZED: u16 = 0x0124;

/// Why a C-STORE failed, mapped once to a DIMSE status and comment.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreFailure {
    #[error("out of resources: {0}")]
    Resources(String),
    #[error("{0}")]
    Mismatch(String),
    #[error("cannot understand: {0}")]
    Unreadable(String),
    #[error("{0}")]
    InvalidUid(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    NotAuthorized(String),
    #[error("processing failure: {0}")]
    Internal(String),
    /// The index database is unreachable: a processing failure for
    /// C-STORE (same status and text as `Internal`), 503 for STOW-RS.
    #[error("processing failure: {0}")]
    IndexUnavailable(String),
}

impl StoreFailure {
    pub fn status(&self) -> u16 {
        match self {
            StoreFailure::Resources(_) => status::OUT_OF_RESOURCES,
            StoreFailure::Mismatch(_) => status::DATASET_DOES_NOT_MATCH_SOP_CLASS,
            StoreFailure::Unreadable(_) => status::CANNOT_UNDERSTAND,
            StoreFailure::InvalidUid(_) => INVALID_SOP_INSTANCE,
            StoreFailure::Refused(_) => status::SOP_CLASS_NOT_SUPPORTED,
            StoreFailure::NotAuthorized(_) => NOT_AUTHORIZED,
            StoreFailure::Internal(_) | StoreFailure::IndexUnavailable(_) => status::PROCESSING_FAILURE,
        }
    }

    fn count(&self, m: &Metrics) {
        let c = match self {
            StoreFailure::Resources(_) => &m.store_failures_resources,
            StoreFailure::Mismatch(_) | StoreFailure::Unreadable(_) | StoreFailure::InvalidUid(_) => {
                &m.store_failures_invalid
            }
            StoreFailure::Refused(_) | StoreFailure::NotAuthorized(_) => &m.store_failures_refused,
            StoreFailure::Internal(_) | StoreFailure::IndexUnavailable(_) => &m.store_failures_internal,
        };
        c.fetch_add(1, Relaxed);
    }
}

impl From<ArchiveError> for StoreFailure {
    fn from(e: ArchiveError) -> Self {
        if e.is_resource_problem() {
            StoreFailure::Resources(e.to_string())
        } else {
            StoreFailure::Internal(e.to_string())
        }
    }
}

impl Session {
    async fn drive<S>(&mut self, assoc: &mut AsyncServerAssociation<S>) -> End
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        loop {
            let pdu = match assoc.receive().await {
                Ok(p) => p,
                Err(e) => return self.classify_error(e),
            };
            match pdu {
                Pdu::PData { data } => {
                    // A message must keep arriving at the minimum rate once
                    // started (a single PDU is bounded by the read timeout).
                    let n: u64 = data.iter().map(|p| p.data.len() as u64).sum();
                    if let Err(slow) = self.progress.on_data(&self.scp.progress, Instant::now(), n) {
                        return End::Abort(
                            AbortRQServiceProviderReason::ReasonNotSpecified,
                            format!("peer too slow: {slow}"),
                        );
                    }
                    for pdv in data {
                        if let Err(end) = self.on_pdv(assoc, pdv).await {
                            return end;
                        }
                    }
                    if !self.asm.in_message() && self.current.is_none() {
                        self.progress.reset();
                    }
                }
                Pdu::ReleaseRQ if self.asm.in_message() => {
                    return End::Abort(
                        AbortRQServiceProviderReason::UnexpectedPdu,
                        "release requested in the middle of a message".into(),
                    );
                }
                Pdu::ReleaseRQ => return End::Released,
                Pdu::AbortRQ { .. } => return End::PeerAborted,
                Pdu::Unknown { pdu_type, .. } => {
                    return End::Abort(
                        AbortRQServiceProviderReason::UnrecognizedPdu,
                        format!("unknown PDU type {pdu_type:#04x}"),
                    );
                }
                other => {
                    return End::Abort(
                        AbortRQServiceProviderReason::UnexpectedPdu,
                        format!("unexpected PDU {}", other.short_description()),
                    );
                }
            }
        }
    }

    fn classify_error(&self, e: dicom_ul::association::Error) -> End {
        use dicom_ul::association::Error as E;
        let text = e.to_string();
        match e {
            E::ReceivePdu { .. } if text.contains("closed") || text.contains("Connection") => End::Closed(text),
            E::ReceivePdu { .. } => End::Abort(AbortRQServiceProviderReason::InvalidPduParameter, text),
            E::Timeout { .. } => End::Abort(
                AbortRQServiceProviderReason::ReasonNotSpecified,
                format!("idle timeout: {text}"),
            ),
            _ => End::Closed(text),
        }
    }

    async fn on_pdv<S>(&mut self, assoc: &mut AsyncServerAssociation<S>, pdv: PDataValue) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        match self.feed_pdv(&pdv)? {
            Step::Pending => Ok(()),
            Step::Command { pc, cmd } => self.on_command(assoc, pc, cmd).await,
            Step::Data { last, .. } => {
                if let Some(Reception::Query(job)) = &mut self.current {
                    Session::query_data(job, &pdv.data);
                } else if let Some(Reception::Store(job)) = &self.current {
                    // A failed writer keeps draining; the failure is
                    // reported when the dataset ends.
                    let t = Instant::now();
                    job.job.send(pdv.data).await;
                    slow_stage("file writer accepting data", t);
                }
                if last {
                    self.finish_message(assoc).await?;
                }
                Ok(())
            }
        }
    }

    async fn on_command<S>(&mut self, assoc: &mut AsyncServerAssociation<S>, pc: u8, cmd: Command) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let fieldv = cmd.command_field().unwrap_or(0);
        match fieldv {
            field::C_ECHO_RQ if !cmd.has_dataset() => {
                self.scp.metrics.echoes_total.fetch_add(1, Relaxed);
                self.respond(assoc, pc, &Command::response_to(&cmd, status::SUCCESS, None))
                    .await
            }
            field::C_STORE_RQ if cmd.has_dataset() => {
                // With "response sent" below, places a stall seen by a peer
                // (a DIMSE timeout) on one side of the wire or the other.
                debug!(message_id = cmd.message_id().unwrap_or(0), pc, "C-STORE request");
                self.current = Some(match self.start_store(pc, &cmd) {
                    Ok(job) => Reception::Store(job),
                    Err(failure) => Reception::Discard { rq: cmd, pc, failure },
                });
                Ok(())
            }
            field::C_FIND_RQ | field::C_MOVE_RQ | field::C_GET_RQ if cmd.has_dataset() => {
                let op = match fieldv {
                    field::C_FIND_RQ => super::qr::Op::Find,
                    field::C_MOVE_RQ => super::qr::Op::Move,
                    _ => super::qr::Op::Get,
                };
                debug!(message_id = cmd.message_id().unwrap_or(0), pc, ?op, "Q/R request");
                self.current = Some(self.start_query(pc, cmd, op));
                Ok(())
            }
            _ if cmd.has_dataset() => {
                let failure = StoreFailure::Refused(format!("unsupported command {fieldv:#06x}"));
                self.current = Some(Reception::Discard { rq: cmd, pc, failure });
                Ok(())
            }
            field::C_CANCEL_RQ => Ok(()),
            _ => {
                let rsp = Command::response_to(&cmd, status::UNRECOGNIZED_OPERATION, Some("operation not supported"));
                self.respond(assoc, pc, &rsp).await
            }
        }
    }

    /// Validate the request against the negotiated context and start the writer.
    fn start_store(&self, pc: u8, cmd: &Command) -> Result<StoreJob, StoreFailure> {
        if !self.may_store {
            return Err(StoreFailure::NotAuthorized(
                "this AE title may query and retrieve, not store".into(),
            ));
        }
        let (abstract_syntax, ts) = self
            .contexts
            .get(&pc)
            .ok_or_else(|| StoreFailure::Refused(format!("presentation context {pc} was not accepted")))?;
        let sop_class = cmd
            .str(tag::AFFECTED_SOP_CLASS_UID)
            .map_err(|e| StoreFailure::Unreadable(e.to_string()))?
            .to_string();
        if sop_class != *abstract_syntax {
            return Err(StoreFailure::Refused(format!(
                "SOP class {sop_class} sent on context for {abstract_syntax}"
            )));
        }
        let sop_instance = cmd
            .str(tag::AFFECTED_SOP_INSTANCE_UID)
            .map_err(|e| StoreFailure::Unreadable(e.to_string()))?
            .to_string();
        if !is_valid_uid(&sop_instance) {
            return Err(StoreFailure::InvalidUid("invalid Affected SOP Instance UID".into()));
        }
        let job = self.scp.ingest.start(IngestRequest {
            route: self.route.clone(),
            calling: self.calling.clone(),
            via: crate::reading::audit::Actor::Dicom,
            remote: self.peer.to_string(),
            sop_class,
            sop_instance,
            ts: ts.clone(),
            study: None,
        })?;
        Ok(StoreJob {
            rq: cmd.clone(),
            pc,
            job,
        })
    }

    async fn finish_message<S>(&mut self, assoc: &mut AsyncServerAssociation<S>) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let started = Instant::now();
        let (rq, pc, result) = match self.current.take() {
            None => return Ok(()),
            Some(Reception::Query(job)) => return self.finish_query(assoc, job).await,
            Some(Reception::Discard { rq, pc, failure }) => (rq, pc, Err(failure)),
            Some(Reception::Store(job)) => (job.rq, job.pc, job.job.finish().await),
        };
        let scp = self.scp.clone();
        let metrics = &scp.metrics;
        count_outcome(metrics, &result);
        let rsp = match &result {
            Ok(StoreOutcome::Stored) | Ok(StoreOutcome::Duplicate) => Command::response_to(&rq, status::SUCCESS, None),
            Ok(StoreOutcome::NewVersion(v)) => {
                let note = format!("SOP Instance UID already stored with other content; kept as version {v}");
                Command::response_to(&rq, status::WARNING_COERCION, Some(&note))
            }
            Err(f) => {
                info!(status = format!("{:#06x}", f.status()), error = %f, "C-STORE failed");
                Command::response_to(&rq, f.status(), Some(&f.to_string()))
            }
        };
        self.respond(assoc, pc, &rsp).await?;
        metrics.store_latency.observe(started.elapsed());
        debug!(
            message_id = rq.message_id().unwrap_or(0),
            status = format!("{:#06x}", rsp.u16(tag::STATUS).unwrap_or(0)),
            total_ms = started.elapsed().as_millis() as u64,
            "C-STORE response sent"
        );
        Ok(())
    }

    async fn respond<S>(&mut self, assoc: &mut AsyncServerAssociation<S>, pc: u8, rsp: &Command) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let bytes = rsp.encode();
        // A response command is ~200 bytes; it always fits the peer's max PDU
        // (minimum 4096), so one PDV, marked command + last.
        debug_assert!(bytes.len() + 12 <= self.max_send_pdu.max(4096) as usize);
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: true,
                data: bytes,
            }],
        };
        assoc
            .send(&pdu)
            .await
            .map_err(|e| End::Closed(format!("sending response: {e}")))?;
        // dicom-ul's send is a `write_all` without a flush: over TLS the
        // response can sit in the TLS layer's buffer while the peer waits
        // for it (a plain socket has no such buffer; the flush is then free).
        let flush = tokio::time::timeout(self.scp.cfg.idle_timeout(), assoc.inner_stream().flush());
        match flush.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::Closed(format!("sending response: {e}"))),
            Err(_) => Err(End::Closed("sending response: write timeout".into())),
        }
    }
}

/// Index while the file is being made durable; the index commits only
/// once the file is durable (see `Index::store_when_durable`).
async fn index_instance(
    ing: &Ingest,
    req: &IngestRequest,
    inst: NewInstance,
    planned: Committed,
    durable: DurableGate,
) -> Result<StoreOutcome, StoreFailure> {
    let study = inst.study_uid.clone();
    let sop = inst.sop_instance_uid.clone();
    let t = Instant::now();
    match ing.index.store_when_durable(inst, planned, Some(durable)).await {
        Ok((o, committed)) => {
            ing.archive.settle(&committed, true);
            tracing::trace!(index_us = t.elapsed().as_micros() as u64, "indexed");
            debug!(study = %study, outcome = ?o, "instance stored");
            let version = match o {
                StoreOutcome::Stored => Some(1),
                StoreOutcome::NewVersion(v) => Some(v),
                StoreOutcome::Duplicate => None,
            };
            if let (Some(tell), Some(version)) = (&ing.on_stored, version) {
                tell(Stored {
                    sop_instance_uid: sop,
                    version,
                    rel_path: committed.rel_path,
                });
            }
            Ok(o)
        }
        Err(StoreError::NotDurable(e)) => Err(match StoreFailure::from(e) {
            StoreFailure::Internal(m) if ing.low_space() => StoreFailure::Resources(m),
            f => f,
        }),
        Err(e) => {
            // Keep archive and index consistent: no file without an index row.
            if let StoreError::Index { file: Some(c), .. } = &e {
                let (archive, c) = (ing.archive.clone(), c.clone());
                let _ = tokio::task::spawn_blocking(move || archive.settle(&c, false)).await;
            }
            if let StoreError::Index {
                source: IndexError::Conflict(c),
                ..
            } = &e
            {
                refused(ing, req, c).await;
                return Err(StoreFailure::NotAuthorized(c.to_string()));
            }
            // SQLite reports a full disk in several ways (SQLITE_FULL,
            // various I/O errors); the free space says what happened.
            if e.is_out_of_resources() || ing.low_space() {
                Err(StoreFailure::Resources(format!("index: {e}")))
            } else if matches!(&e, StoreError::Index { source, .. } if source.is_unavailable()) {
                Err(StoreFailure::IndexUnavailable(format!("index: {e}")))
            } else {
                Err(StoreFailure::Internal(format!("index: {e}")))
            }
        }
    }
}

/// Audits an instance refused for colliding with stored data it does
/// not belong to: who (the calling AE and its clinic), which level,
/// whose data; UIDs only, no patient attributes.
async fn refused(ing: &Ingest, req: &IngestRequest, c: &Conflict) {
    warn!(
        calling = %req.calling,
        clinic = %req.route.clinic_id,
        level = c.level.token(),
        reason = c.reason_token(),
        study_uid = %c.study_uid,
        "instance refused: its UIDs belong elsewhere"
    );
    crate::reading::audit::record_ingest_refusal(
        ing.index.pool(),
        now_ms(),
        &req.calling,
        req.via,
        &req.route.clinic_id,
        c,
        &req.remote,
    )
    .await;
}

/// A C-STORE stage that took long enough to worry a modality (whose DIMSE
/// timeout is often 30-60 s): logged with the stage, so a stall seen from
/// the outside can be placed.
fn slow_stage(stage: &'static str, since: Instant) {
    let took = since.elapsed();
    if took > Duration::from_secs(5) {
        warn!(stage, ms = took.as_millis() as u64, "slow C-STORE stage");
    }
}

struct ReceiveParams {
    archive: Archive,
    sop_class: String,
    sop_instance: String,
    ts: String,
    calling: String,
    route: ClinicRoute,
    study: Option<String>,
}

/// Blocking: stream chunks to a temp file, validate, fsync, commit. Runs on a
/// `spawn_blocking` thread; returns what the index needs.
fn receive_instance(
    p: ReceiveParams,
    rx: mpsc::Receiver<Chunk>,
    ready: oneshot::Sender<Result<(NewInstance, Committed), StoreFailure>>,
    durable: oneshot::Sender<Result<Committed, ArchiveError>>,
) {
    match receive_and_check(&p, rx) {
        Ok((inst, written)) => {
            tracing::trace!("dataset written and validated");
            let _ = ready.send(Ok((inst, p.archive.planned(&written))));
            let t = std::time::Instant::now();
            let r = p.archive.commit(written);
            tracing::trace!(durable_us = t.elapsed().as_micros() as u64, "instance durable");
            // Nobody waits for it (the index writer failed the request
            // before its gate): no index row will refer to the file.
            if let Err(Ok(c)) = durable.send(r) {
                p.archive.settle(&c, false);
            }
        }
        Err(f) => {
            let _ = ready.send(Err(f));
        }
    }
}

/// Blocking: stream chunks to a temp file, validating the dataset as it
/// passes. Runs on a `spawn_blocking` thread.
fn receive_and_check(
    p: &ReceiveParams,
    mut rx: mpsc::Receiver<Chunk>,
) -> Result<(NewInstance, crate::archive::files::Written), StoreFailure> {
    let header = file_meta(&p.sop_class, &p.sop_instance, &p.ts, &p.calling);
    let mut tmp: Result<_, StoreFailure> = p.archive.begin(&header, p.ts.as_bytes()).map_err(StoreFailure::from);
    let enc = Encoding::for_transfer_syntax(&p.ts);
    let mut tee = Tee {
        rx: &mut rx,
        tmp: &mut tmp,
        buf: Vec::new(),
        pos: 0,
        ended: None,
    };
    let walked = walk::walk(&mut tee, enc, attrs::WANTED);
    // The walk stops at the end of the data or at the first malformed
    // element; either way the association must stay in step, so whatever
    // is still coming is consumed (and written, though a walk error
    // already decides the outcome).
    while tee.ended.is_none() {
        tee.next_chunk();
    }
    let complete = tee.ended == Some(true);
    let tmp = tmp?;
    if !complete {
        return Err(StoreFailure::Internal("association ended mid-dataset".into()));
    }
    let summary = walked.map_err(|e| StoreFailure::Unreadable(e.to_string()))?;
    let inst = describe(p, &summary, enc, now_ms())?;
    Ok((inst, tmp.finish()?))
}

/// The dataset as the walk reads it, straight from the association's
/// chunks, each written to the archive file as it passes: validation
/// happens while the data arrives instead of reading the file back after
/// the last byte (which sat on every acknowledgement).
struct Tee<'a> {
    rx: &'a mut mpsc::Receiver<Chunk>,
    tmp: &'a mut Result<crate::archive::files::TmpInstance, StoreFailure>,
    buf: Vec<u8>,
    pos: usize,
    /// Some(true) after the last chunk, Some(false) if the association
    /// went away before it.
    ended: Option<bool>,
}

impl Tee<'_> {
    fn next_chunk(&mut self) {
        match self.rx.blocking_recv() {
            Some(Chunk::Data(bytes)) => {
                if let Ok(t) = &mut *self.tmp
                    && let Err(e) = t.write(&bytes)
                {
                    // The temp file is removed when it is dropped; the
                    // failure is reported once the dataset has ended.
                    *self.tmp = Err(e.into());
                }
                self.buf = bytes;
                self.pos = 0;
            }
            Some(Chunk::End) => self.ended = Some(true),
            None => self.ended = Some(false),
        }
    }
}

impl std::io::Read for Tee<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.ended.is_some() {
                return Ok(0);
            }
            self.next_chunk();
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Check the dataset against the command and extract the index attributes.
fn describe(
    p: &ReceiveParams,
    summary: &walk::Summary,
    enc: Encoding,
    now_ms: i64,
) -> Result<NewInstance, StoreFailure> {
    let a = Attrs::new(summary, enc);
    let ds_class = a.text(attrs::SOP_CLASS_UID);
    if ds_class != p.sop_class {
        return Err(StoreFailure::Mismatch(format!(
            "dataset SOP Class UID {ds_class:?} does not match the request's {}",
            p.sop_class
        )));
    }
    let ds_instance = a.text(attrs::SOP_INSTANCE_UID);
    if ds_instance != p.sop_instance {
        return Err(StoreFailure::Mismatch(
            "dataset SOP Instance UID differs from the request's".into(),
        ));
    }
    let study_uid = a.text(attrs::STUDY_UID);
    let series_uid = a.text(attrs::SERIES_UID);
    if !is_valid_uid(&study_uid) || !is_valid_uid(&series_uid) {
        return Err(StoreFailure::Mismatch(
            "missing or invalid Study/Series Instance UID".into(),
        ));
    }
    if p.study.as_ref().is_some_and(|s| *s != study_uid) {
        return Err(StoreFailure::Mismatch(
            "the instance belongs to another study than the request's".into(),
        ));
    }
    // Every "...Image Storage..." class (incl. For Presentation/Processing)
    // requires a pixel data element; presentation states and documents do not.
    let is_image = STORAGE_SOP_CLASSES
        .iter()
        .any(|(uid, alias)| *uid == p.sop_class && alias.contains("ImageStorage"));
    if is_image && !summary.has_pixel_data {
        return Err(StoreFailure::Mismatch("image SOP class without Pixel Data".into()));
    }
    Ok(NewInstance {
        sop_instance_uid: p.sop_instance.clone(),
        sop_class_uid: p.sop_class.clone(),
        transfer_syntax: p.ts.clone(),
        study_uid,
        series_uid,
        patient_id: a.text(attrs::PATIENT_ID),
        patient_name: a.person_name(attrs::PATIENT_NAME),
        birth_date: a.text(attrs::BIRTH_DATE),
        sex: a.text(attrs::SEX),
        study_date: a.text(attrs::STUDY_DATE),
        study_time: a.text(attrs::STUDY_TIME),
        accession_number: a.text(attrs::ACCESSION_NUMBER),
        study_id: a.text(attrs::STUDY_ID),
        study_description: a.text(attrs::STUDY_DESCRIPTION),
        referring_physician: a.person_name(attrs::REFERRING_PHYSICIAN),
        modality: a.text(attrs::MODALITY),
        series_number: a.int(attrs::SERIES_NUMBER),
        series_description: a.text(attrs::SERIES_DESCRIPTION),
        body_part: a.text(attrs::BODY_PART),
        instance_number: a.int(attrs::INSTANCE_NUMBER),
        rows: a.us(attrs::ROWS),
        columns: a.us(attrs::COLUMNS),
        frames: a.int(attrs::NUMBER_OF_FRAMES),
        calling_ae: p.calling.clone(),
        clinic_id: p.route.clinic_id.clone(),
        stable_after_ms: p.route.stable_after_ms,
        received_ms: now_ms,
    })
}

/// Bind a listener whose accepted sockets inherit a large receive buffer:
/// SO_RCVBUF must be set before the handshake for window scaling to use it.
pub fn bind_listener(addr: SocketAddr, recv_buffer: usize) -> std::io::Result<TcpListener> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_recv_buffer_size(recv_buffer)?;
    sock.set_tcp_nodelay(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dicom::walk::Summary;

    fn params() -> ReceiveParams {
        let dir = std::env::temp_dir();
        ReceiveParams {
            archive: Archive::open(&dir.join("medrelay-unit-archive"), 0).expect("archive"),
            sop_class: "1.2.840.10008.5.1.4.1.1.2".into(),
            sop_instance: "1.2.3".into(),
            ts: "1.2.840.10008.1.2.1".into(),
            calling: "CT01".into(),
            route: ClinicRoute {
                clinic_id: "c1".into(),
                stable_after_ms: 1000,
            },
            study: None,
        }
    }

    fn summary(class: &str, inst: &str, pixels: bool) -> Summary {
        let mut s = Summary {
            has_pixel_data: pixels,
            top_level_elements: 5,
            ..Default::default()
        };
        s.values.insert(attrs::SOP_CLASS_UID, class.as_bytes().to_vec());
        s.values.insert(attrs::SOP_INSTANCE_UID, inst.as_bytes().to_vec());
        s.values.insert(attrs::STUDY_UID, b"1.2.9".to_vec());
        s.values.insert(attrs::SERIES_UID, b"1.2.9.1".to_vec());
        s
    }

    #[test]
    fn describe_maps_mismatches_to_a900() {
        let enc = Encoding::for_transfer_syntax("1.2.840.10008.1.2.1");
        let p = params();
        let ok = describe(&p, &summary("1.2.840.10008.5.1.4.1.1.2", "1.2.3", true), enc, 5).expect("ok");
        assert_eq!((ok.clinic_id.as_str(), ok.received_ms), ("c1", 5));
        let e = describe(&p, &summary("1.2.840.10008.5.1.4.1.1.4", "1.2.3", true), enc, 5).expect_err("class");
        assert_eq!(e.status(), 0xA900);
        let e = describe(&p, &summary("1.2.840.10008.5.1.4.1.1.2", "1.2.4", true), enc, 5).expect_err("inst");
        assert_eq!(e.status(), 0xA900);
        let e = describe(&p, &summary("1.2.840.10008.5.1.4.1.1.2", "1.2.3", false), enc, 5).expect_err("pixels");
        assert!(e.to_string().contains("Pixel Data"));
        // "For Presentation" image classes need pixels too; presentation states do not
        let dx = ReceiveParams {
            sop_class: "1.2.840.10008.5.1.4.1.1.1.1".into(),
            ..params()
        };
        assert!(describe(&dx, &summary("1.2.840.10008.5.1.4.1.1.1.1", "1.2.3", false), enc, 5).is_err());
        let gsps = ReceiveParams {
            sop_class: "1.2.840.10008.5.1.4.1.1.11.1".into(),
            ..params()
        };
        assert!(describe(&gsps, &summary("1.2.840.10008.5.1.4.1.1.11.1", "1.2.3", false), enc, 5).is_ok());
    }

    #[test]
    fn index_unavailable_is_a_processing_failure_for_c_store() {
        let (a, b) = (
            StoreFailure::Internal("index: x".into()),
            StoreFailure::IndexUnavailable("index: x".into()),
        );
        assert_eq!((a.status(), a.to_string()), (b.status(), b.to_string()));
        assert_eq!(b.status(), 0x0110);
    }

    #[test]
    fn ae_control_reasons() {
        let c = AeControl {
            allowed: Some(Arc::new(["CT01".to_string()].into())),
            check_called: true,
            tls_slot: None,
        };
        assert_eq!(c.check_access("MEDRELAY", "CT01", "MEDRELAY", None), Ok(()));
        assert_eq!(
            c.check_access("MEDRELAY", "EVIL", "MEDRELAY", None),
            Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized)
        );
        assert_eq!(
            c.check_access("MEDRELAY", "CT01", "OTHER", None),
            Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized)
        );
        let open = AeControl {
            allowed: None,
            check_called: false,
            tls_slot: None,
        };
        assert_eq!(open.check_access("MEDRELAY", "ANY", "X", None), Ok(()));
        // TLS: the slot taken at accept counts against the calling AE.
        let slots = Slots::new(4, 1);
        let _held = slots.acquire(Some("PACS")).expect("slot");
        let tls = |slot| AeControl {
            allowed: None,
            check_called: false,
            tls_slot: Some(Arc::new(std::sync::Mutex::new(Some(slot)))),
        };
        let full = tls(slots.acquire(None).expect("slot"));
        assert_eq!(
            full.check_access("MEDRELAY", "PACS", "MEDRELAY", None),
            Err(AssociationRJServiceUserReason::NoReasonGiven)
        );
        let other = tls(slots.acquire(None).expect("slot"));
        assert_eq!(other.check_access("MEDRELAY", "CT01 ", "MEDRELAY", None), Ok(()));
        assert_eq!(slots.held_by("CT01"), 1);
    }
}
