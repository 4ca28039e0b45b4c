//! C-MOVE and C-GET: the instances a retrieve names (within the calling
//! AE's scope) sent as C-STORE sub-operations — to a configured
//! destination over a new association (C-MOVE), or back on the requester's
//! own association (C-GET) — each as stored, or re-encoded to a native
//! transfer syntax only when the receiver accepts nothing else.
//!
//! After every sub-operation a pending response reports the counts, and
//! the association is looked at for a C-CANCEL; the final status goes out
//! only when every sub-operation has answered, with the Failed SOP
//! Instance UID List when some failed. Instances stream from the storage
//! boundary through a bounded channel fed by a blocking reader, so a 1 GB
//! multi-frame costs a few PDUs of memory, on local files or S3 alike.

use std::io::{Read, Seek, SeekFrom};

use dicom_ul::association::{AsyncAssociation, AsyncServerAssociation};
use dicom_ul::pdu::{AbortRQServiceProviderReason, PDataValue, PDataValueType, Pdu, PresentationContextResultReason};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::super::assembly::Step;
use super::super::dimse::{Command, field, tag};
use super::super::qr::find::Query;
use super::super::qr::identifier::{self, Out};
use super::super::qr::retrieve::{
    self as rules, CANNOT_COUNT, Carry, DESTINATION_UNKNOWN, FAILED_SOP_INSTANCE_UID_LIST, MOVE_DESTINATION, Outcome,
    PENDING, Progress,
};
use super::super::qr::{Op, matching::Matcher};
use super::super::scu;
use super::super::walk::Encoding;
use super::qr::QueryJob;
use super::{End, Session};
use crate::archive::files::Archive;
use crate::archive::index::InstanceRow;
use crate::clock::now_ms;
use crate::reading::audit::{self, Actor};

/// Instances one retrieve may name at most: a patient's whole history is
/// far below it; a request for "everything" is refused (0xA701) rather
/// than queued for hours.
pub const MAX_RETRIEVE: usize = 50_000;

/// Dataset chunks in flight between the blocking reader and the socket.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Why a sub-operation could not be carried out.
#[derive(Debug, thiserror::Error)]
enum SubError {
    /// This instance failed; the association is still usable.
    #[error("{0}")]
    Instance(String),
    /// The sub-association is gone (or, for C-GET, the requester's own).
    #[error("association lost: {0}")]
    Association(String),
}

impl Session {
    pub(super) async fn retrieve<S>(
        &mut self,
        assoc: &mut AsyncServerAssociation<S>,
        job: &QueryJob,
        q: &Query,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (rq, pc, op) = (job.rq(), job.pc(), job.op());
        let destination = if op == Op::Move {
            let asked = rq.str(MOVE_DESTINATION).unwrap_or("").trim().to_string();
            match self
                .scp
                .cfg
                .dicom
                .destinations
                .iter()
                .find(|d| d.ae_title.trim() == asked)
            {
                Some(d) => Some(d.clone()),
                None => {
                    info!(calling = %self.calling, destination = %asked, "C-MOVE to an unknown destination refused");
                    let rsp = Command::response_to(rq, DESTINATION_UNKNOWN, Some("move destination unknown"));
                    return self.respond(assoc, pc, &rsp).await;
                }
            }
        } else {
            None
        };
        let list = match self
            .scp
            .index
            .retrieve_list(q, self.scope.clinics(), MAX_RETRIEVE)
            .await
        {
            Ok(Some(l)) => l,
            Ok(None) => {
                let note = format!("more than {MAX_RETRIEVE} instances: retrieve less at once");
                return self
                    .respond(assoc, pc, &Command::response_to(rq, CANNOT_COUNT, Some(&note)))
                    .await;
            }
            Err(e) => {
                info!(error = %e, "retrieve: index unavailable");
                let rsp = Command::response_to(rq, CANNOT_COUNT, Some("index unavailable"));
                return self.respond(assoc, pc, &rsp).await;
            }
        };
        let mut p = Progress::new(list.len());
        let cancelled = match (&destination, op) {
            (Some(d), _) => self.move_to(assoc, job, d, &list, &mut p).await?,
            (None, _) => self.get_back(assoc, job, &list, &mut p).await?,
        };
        let status = p.final_status(cancelled);
        let action = if op == Op::Move { "dicom_move" } else { "dicom_get" };
        let study = match q.filter(0x0020_000D) {
            Some(Matcher::Single(u)) => Some(u.clone()),
            _ => None,
        };
        let detail = format!(
            "level={} to={} instances={} completed={} warning={} failed={} status={status:#06x}",
            q.level.as_str(),
            destination.as_ref().map(|d| d.ae_title.as_str()).unwrap_or("requester"),
            p.total,
            p.completed,
            p.warning,
            p.failed
        );
        audit::record_raw(
            self.scp.index.pool(),
            now_ms(),
            &self.calling,
            Actor::Dicom,
            action,
            study.as_deref(),
            Some(&detail),
            &self.peer.to_string(),
        )
        .await;
        info!(calling = %self.calling, action, completed = p.completed, failed = p.failed, status = format!("{status:#06x}"), "retrieve finished");
        let mut rsp = Command::response_to(rq, status, None);
        p.stamp(&mut rsp, false);
        if p.failed_uids.is_empty() {
            return self.respond(assoc, pc, &rsp).await;
        }
        rsp.set_u16(tag::COMMAND_DATA_SET_TYPE, 0x0000);
        let enc = Encoding::for_transfer_syntax(job.ts());
        let data = identifier::encode(
            vec![Out {
                tag: FAILED_SOP_INSTANCE_UID_LIST,
                vr: *b"UI",
                value: p.failed_uids.join("\\").into_bytes(),
            }],
            enc,
        );
        self.send_message(assoc, pc, &rsp, &data).await
    }

    /// C-MOVE sub-operations over a new association to `d`. Returns
    /// whether the requester cancelled.
    async fn move_to<S>(
        &mut self,
        assoc: &mut AsyncServerAssociation<S>,
        job: &QueryJob,
        d: &crate::config::DestinationConfig,
        list: &[InstanceRow],
        p: &mut Progress,
    ) -> Result<bool, End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        if list.is_empty() {
            return Ok(false);
        }
        let pairs = list
            .iter()
            .map(|i| (i.sop_class_uid.clone(), i.transfer_syntax.clone()))
            .collect();
        let target = scu::Target {
            called_ae: d.ae_title.trim().to_string(),
            addr: format!("{}:{}", d.host.trim(), d.port),
        };
        let mut sub = match scu::associate(&target, &self.scp.cfg.dicom.ae_title, &rules::proposals(&pairs), &[]).await
        {
            Ok(a) => a,
            Err(e) => {
                warn!(destination = %d.ae_title, error = %e, "C-MOVE destination unreachable");
                for i in list {
                    p.record(&i.sop_instance_uid, Outcome::Failed);
                }
                return Ok(false);
            }
        };
        let accepted: Vec<(u8, String, String)> = sub
            .presentation_contexts()
            .iter()
            .filter(|c| c.reason == PresentationContextResultReason::Acceptance)
            .map(|c| (c.id, c.abstract_syntax.clone(), c.transfer_syntax.clone()))
            .collect();
        let max_pdu = sub.acceptor_max_pdu_length();
        let msg_id = job.rq().message_id().unwrap_or(0);
        let origin = (self.calling.clone(), msg_id);
        let mut lost = false;
        for (n, inst) in list.iter().enumerate() {
            let outcome = if lost {
                Outcome::Failed
            } else {
                let sub_id = (n % 0xFFFF) as u16 + 1;
                match self
                    .store_sub(&mut sub, &accepted, max_pdu, inst, sub_id, Some(&origin))
                    .await
                {
                    Ok(status) => Outcome::of_status(status),
                    Err(SubError::Instance(e)) => {
                        info!(error = %e, "C-MOVE sub-operation failed");
                        Outcome::Failed
                    }
                    Err(SubError::Association(e)) => {
                        warn!(destination = %d.ae_title, error = %e, "C-MOVE destination lost");
                        lost = true;
                        Outcome::Failed
                    }
                }
            };
            p.record(&inst.sop_instance_uid, outcome);
            if p.remaining() > 0 {
                let mut rsp = Command::response_to(job.rq(), PENDING, None);
                p.stamp(&mut rsp, true);
                self.respond(assoc, job.pc(), &rsp).await?;
                if self.cancelled(assoc, msg_id).await? {
                    let _ = sub.release().await;
                    return Ok(true);
                }
            }
        }
        if !lost {
            let _ = sub.release().await;
        }
        Ok(false)
    }

    /// C-GET sub-operations on the requester's own association, on the
    /// storage contexts it proposed (with the SCP role for itself).
    async fn get_back<S>(
        &mut self,
        assoc: &mut AsyncServerAssociation<S>,
        job: &QueryJob,
        list: &[InstanceRow],
        p: &mut Progress,
    ) -> Result<bool, End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let accepted: Vec<(u8, String, String)> = self
            .contexts
            .iter()
            .filter(|(_, (a, _))| self.storage_role_granted(assoc, a))
            .map(|(pc, (a, t))| (*pc, a.clone(), t.clone()))
            .collect();
        let msg_id = job.rq().message_id().unwrap_or(0);
        let max_pdu = self.max_send_pdu;
        let mut cancelled = false;
        for (n, inst) in list.iter().enumerate() {
            if cancelled {
                break;
            }
            let sub_id = (n % 0xFFFF) as u16 + 1;
            let outcome = match carry(inst, &accepted) {
                None => Outcome::Failed,
                Some(c) => {
                    match send_instance(assoc, &self.scp.archive, c, max_pdu, inst, sub_id, None).await {
                        Ok(()) => {}
                        Err(SubError::Association(e)) => return Err(End::Closed(format!("C-GET: {e}"))),
                        Err(SubError::Instance(e)) => {
                            info!(error = %e, "C-GET sub-operation failed before sending");
                            p.record(&inst.sop_instance_uid, Outcome::Failed);
                            continue;
                        }
                    }
                    let (status, cancel) = self.store_response(assoc, sub_id, msg_id).await?;
                    cancelled = cancel;
                    Outcome::of_status(status)
                }
            };
            p.record(&inst.sop_instance_uid, outcome);
            if p.remaining() > 0 && !cancelled {
                let mut rsp = Command::response_to(job.rq(), PENDING, None);
                p.stamp(&mut rsp, true);
                self.respond(assoc, job.pc(), &rsp).await?;
                cancelled = self.cancelled(assoc, msg_id).await?;
            }
        }
        Ok(cancelled)
    }

    /// Whether the requester may receive C-STOREs for this SOP class on
    /// its association: it proposed the SCP role (PS3.7 D.3.3.4).
    fn storage_role_granted<S>(&self, assoc: &AsyncServerAssociation<S>, abstract_syntax: &str) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        super::super::qr::sop_class(abstract_syntax).is_none()
            && abstract_syntax != super::super::dimse::VERIFICATION_SOP_CLASS
            && dicom_ul::association::Association::requestor_roles_for(assoc, abstract_syntax).scp
    }

    /// Waits for the C-STORE-RSP of sub-operation `sub_id` on the
    /// requester's association; notes a C-CANCEL of the C-GET meanwhile.
    async fn store_response<S>(
        &mut self,
        assoc: &mut AsyncServerAssociation<S>,
        sub_id: u16,
        get_id: u16,
    ) -> Result<(u16, bool), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut cancel = false;
        loop {
            let pdu = assoc.receive().await.map_err(|e| self.classify_error(e))?;
            let Pdu::PData { data } = pdu else {
                return Err(match pdu {
                    Pdu::AbortRQ { .. } => End::PeerAborted,
                    other => End::Abort(
                        AbortRQServiceProviderReason::UnexpectedPdu,
                        format!("unexpected PDU {} during C-GET", other.short_description()),
                    ),
                });
            };
            for pdv in data {
                let Step::Command { cmd, .. } = self.feed_pdv(&pdv)? else {
                    continue;
                };
                let responded = cmd.u16(tag::MESSAGE_ID_BEING_RESPONDED_TO).ok();
                match cmd.command_field().ok() {
                    Some(field::C_STORE_RSP) if responded == Some(sub_id) => {
                        return Ok((cmd.u16(tag::STATUS).unwrap_or(0xC000), cancel));
                    }
                    Some(field::C_CANCEL_RQ) if responded == Some(get_id) => cancel = true,
                    _ => {
                        return Err(End::Abort(
                            AbortRQServiceProviderReason::UnexpectedPdu,
                            "unexpected message while waiting for a C-STORE response".into(),
                        ));
                    }
                }
            }
        }
    }

    /// One C-MOVE sub-operation on the destination association.
    async fn store_sub(
        &self,
        sub: &mut dicom_ul::association::AsyncClientAssociation<tokio::net::TcpStream>,
        accepted: &[(u8, String, String)],
        max_pdu: u32,
        inst: &InstanceRow,
        sub_id: u16,
        origin: Option<&(String, u16)>,
    ) -> Result<u16, SubError> {
        let c = carry(inst, accepted).ok_or_else(|| {
            SubError::Instance(format!(
                "destination accepted no context for {} in {}",
                inst.sop_class_uid, inst.transfer_syntax
            ))
        })?;
        send_instance(sub, &self.scp.archive, c, max_pdu, inst, sub_id, origin).await?;
        let rsp = scu::receive_response(sub)
            .await
            .map_err(|e| SubError::Association(e.to_string()))?;
        if rsp.command_field().ok() != Some(field::C_STORE_RSP) {
            return Err(SubError::Association("response is not a C-STORE-RSP".into()));
        }
        rsp.u16(tag::STATUS).map_err(|e| SubError::Association(e.to_string()))
    }
}

fn carry(inst: &InstanceRow, accepted: &[(u8, String, String)]) -> Option<Carry> {
    rules::carry(&inst.sop_class_uid, &inst.transfer_syntax, accepted)
}

/// Sends one stored instance as a C-STORE-RQ (with the move originator
/// for C-MOVE) on an association, its dataset streamed from storage.
async fn send_instance<A, S>(
    a: &mut A,
    archive: &Archive,
    carry: Carry,
    max_pdu: u32,
    inst: &InstanceRow,
    sub_id: u16,
    origin: Option<&(String, u16)>,
) -> Result<(), SubError>
where
    A: AsyncAssociation<S> + Send,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let chunk = match max_pdu {
        0 => 1 << 20,
        n => (n as usize).min(1 << 20),
    }
    .saturating_sub(6)
    .max(1024);
    let (pc, transcode) = match carry {
        Carry::AsStored(pc) => (pc, None),
        Carry::Transcoded(pc, ts) => (pc, Some(ts)),
    };
    let (tx, mut rx) = mpsc::channel::<Result<Vec<u8>, String>>(CHUNKS_IN_FLIGHT);
    let (archive, rel) = (archive.clone(), inst.path.clone());
    // The first chunk (or the error) arrives before anything is sent, so
    // an unreadable instance fails alone without breaking the association.
    tokio::task::spawn_blocking(move || read_dataset(&archive, &rel, transcode.as_deref(), chunk, &tx));
    let first = match rx.recv().await {
        Some(Ok(c)) => c,
        Some(Err(e)) => return Err(SubError::Instance(e)),
        None => return Err(SubError::Instance("reader ended early".into())),
    };
    let mut cmd = Command::c_store_rq(sub_id, &inst.sop_class_uid, &inst.sop_instance_uid);
    if let Some((ae, id)) = origin {
        cmd.set_str(tag::MOVE_ORIGINATOR_AE_TITLE, ae)
            .set_u16(tag::MOVE_ORIGINATOR_MESSAGE_ID, *id);
    }
    let lost = |e: dicom_ul::association::Error| SubError::Association(e.to_string());
    AsyncAssociation::send(
        a,
        &Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: true,
                data: cmd.encode(),
            }],
        },
    )
    .await
    .map_err(lost)?;
    let mut current = first;
    loop {
        let next = rx.recv().await;
        let last = next.is_none();
        AsyncAssociation::send(
            a,
            &Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc,
                    value_type: PDataValueType::Data,
                    is_last: last,
                    data: std::mem::take(&mut current),
                }],
            },
        )
        .await
        .map_err(lost)?;
        match next {
            None => break,
            Some(Ok(c)) => current = c,
            // Half an instance is on the wire: only an abort can take it
            // back, so the association is given up.
            Some(Err(e)) => return Err(SubError::Association(format!("storage read failed mid-instance: {e}"))),
        }
    }
    use tokio::io::AsyncWriteExt;
    tokio::time::timeout(std::time::Duration::from_secs(60), a.inner_stream().flush())
        .await
        .map_err(|_| SubError::Association("write timeout".into()))?
        .map_err(|e| SubError::Association(e.to_string()))
}

/// Reads a stored instance's dataset (after its Part 10 header) in
/// `chunk`-byte pieces into `tx`; or, to re-encode, the whole object. The
/// last chunk is followed by the channel closing; an error is sent as one.
fn read_dataset(
    archive: &Archive,
    rel: &str,
    transcode: Option<&str>,
    chunk: usize,
    tx: &mpsc::Sender<Result<Vec<u8>, String>>,
) {
    let send = |v: Result<Vec<u8>, String>| tx.blocking_send(v).is_ok();
    if let Some(ts) = transcode {
        match reencode(archive, rel, ts) {
            Ok(bytes) => {
                let mut parts = bytes.chunks(chunk).peekable();
                if parts.peek().is_none() {
                    send(Ok(Vec::new()));
                }
                for p in parts {
                    if !send(Ok(p.to_vec())) {
                        return;
                    }
                }
            }
            Err(e) => {
                send(Err(e));
            }
        }
        return;
    }
    let mut r = match archive.reader(rel) {
        Ok(r) => r,
        Err(e) => {
            send(Err(format!("cannot open the stored instance: {e}")));
            return;
        }
    };
    let offset = match dataset_offset(&mut r) {
        Ok(o) => o,
        Err(e) => {
            send(Err(e));
            return;
        }
    };
    if let Err(e) = r.seek(SeekFrom::Start(offset)) {
        send(Err(e.to_string()));
        return;
    }
    let mut first = true;
    loop {
        let mut buf = vec![0u8; chunk];
        let mut got = 0;
        while got < chunk {
            match r.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    send(Err(e.to_string()));
                    return;
                }
            }
        }
        buf.truncate(got);
        if got == 0 && !first {
            return;
        }
        if !send(Ok(buf)) || got < chunk {
            return;
        }
        first = false;
    }
}

/// Where the dataset of a stored Part 10 file starts: after the preamble,
/// `DICM` and the meta group (its length from (0002,0000)).
fn dataset_offset(r: &mut dyn Read) -> Result<u64, String> {
    let mut head = [0u8; 144];
    r.read_exact(&mut head)
        .map_err(|e| format!("stored instance too short: {e}"))?;
    if &head[128..132] != b"DICM" || head[132..136] != [0x02, 0x00, 0x00, 0x00] || &head[136..138] != b"UL" {
        return Err("stored instance has no Part 10 header".into());
    }
    let group = u32::from_le_bytes([head[140], head[141], head[142], head[143]]);
    Ok(144 + u64::from(group))
}

/// The whole stored object re-encoded to `ts` (a native syntax).
fn reencode(archive: &Archive, rel: &str, ts: &str) -> Result<Vec<u8>, String> {
    use dicom_encoding::TransferSyntaxIndex;
    let bytes = archive.read(rel).map_err(|e| e.to_string())?;
    let obj = dicom_object::OpenFileOptions::new()
        .read_preamble(dicom_object::file::ReadPreamble::Always)
        .from_reader(std::io::Cursor::new(bytes))
        .map_err(|e| format!("cannot parse the stored instance: {e}"))?;
    let syntax = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(ts)
        .ok_or_else(|| format!("unknown transfer syntax {ts}"))?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, syntax)
        .map_err(|e| format!("cannot re-encode: {e}"))?;
    Ok(out)
}
