//! The Query/Retrieve side of an association: C-FIND (Patient Root and
//! Study Root, every level), answered from the index within the calling
//! AE's scope.
//!
//! The identifier is collected like a C-STORE dataset (bounded by
//! [`MAX_IDENTIFIER_BYTES`]), read into a [`Query`] (pure), and answered a
//! page of index records at a time ([`Index::find_page`]). Between pages
//! the association is polled, without waiting, for a C-CANCEL: the peer's
//! "stop" is honoured within a page, with the final status 0xFE00. A query
//! matching more than `dicom.max_find_results` records ends with 0xA700
//! after that many, so one careless "every study" cannot hold the index.

use std::time::Duration;

use dicom_ul::association::AsyncServerAssociation;
use dicom_ul::pdu::{AbortRQServiceProviderReason, PDataValue, PDataValueType, Pdu};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info};

use super::super::assembly::{PdvKind, Step};
use super::super::dimse::{Command, field, tag};
use super::super::qr::find::{self, Query, QueryError};
use super::super::qr::identifier::{self, MAX_IDENTIFIER_BYTES};
use super::super::qr::{Model, Op};
use super::super::walk::Encoding;
use super::{End, Reception, Session, StoreFailure};
use crate::archive::query::After;
use crate::clock::now_ms;
use crate::reading::audit::{self, Actor};

/// Index candidates read per page (and the most responses sent between
/// two looks for a C-CANCEL).
const PAGE: i64 = 200;

/// PS3.4 C.4.1.1.4 statuses.
const PENDING: u16 = 0xFF00;
const CANCELLED: u16 = 0xFE00;
const OUT_OF_RESOURCES: u16 = 0xA700;

/// A Q/R request whose identifier is arriving.
pub(super) struct QueryJob {
    rq: Command,
    pc: u8,
    model: Model,
    op: Op,
    /// The transfer syntax of the request's presentation context.
    ts: String,
    buf: Vec<u8>,
    too_long: bool,
}

impl QueryJob {
    pub(super) fn rq(&self) -> &Command {
        &self.rq
    }
    pub(super) fn pc(&self) -> u8 {
        self.pc
    }
    pub(super) fn op(&self) -> Op {
        self.op
    }
    pub(super) fn ts(&self) -> &str {
        &self.ts
    }
}

impl Session {
    /// A C-FIND / C-MOVE / C-GET request: checked against its presentation
    /// context; its identifier follows.
    pub(super) fn start_query(&self, pc: u8, cmd: Command, op: Op) -> Reception {
        let Some((abstract_syntax, ts)) = self.contexts.get(&pc) else {
            let failure = StoreFailure::Refused(format!("presentation context {pc} was not accepted"));
            return Reception::Discard { rq: cmd, pc, failure };
        };
        match super::super::qr::sop_class(abstract_syntax) {
            Some((model, o)) if o == op => Reception::Query(QueryJob {
                rq: cmd,
                pc,
                model,
                op,
                ts: ts.clone(),
                buf: Vec::new(),
                too_long: false,
            }),
            _ => {
                let failure = StoreFailure::Refused(format!("{op:?} request on the context of {abstract_syntax}"));
                Reception::Discard { rq: cmd, pc, failure }
            }
        }
    }

    /// Identifier bytes; beyond the bound they are drained and the
    /// request answered 0xC000.
    pub(super) fn query_data(job: &mut QueryJob, data: &[u8]) {
        if job.buf.len() + data.len() > MAX_IDENTIFIER_BYTES {
            job.too_long = true;
            job.buf = Vec::new();
        }
        if !job.too_long {
            job.buf.extend_from_slice(data);
        }
    }

    pub(super) async fn finish_query<S>(
        &mut self,
        assoc: &mut AsyncServerAssociation<S>,
        job: QueryJob,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let enc = Encoding::for_transfer_syntax(&job.ts);
        let parsed = if job.too_long {
            Err(QueryError::Identifier(identifier::IdentifierError::TooLong))
        } else {
            identifier::parse(&job.buf, enc)
                .map_err(QueryError::from)
                .and_then(|id| find::parse(job.model, &id))
        };
        let q = match parsed {
            Ok(q) => q,
            Err(e) => {
                info!(calling = %self.calling, error = %e, "Q/R request refused");
                let mut rsp = Command::response_to(&job.rq, e.status(), Some(&e.to_string()));
                if let Some(t) = e.offending() {
                    let mut at = Vec::with_capacity(4);
                    at.extend_from_slice(&((t >> 16) as u16).to_le_bytes());
                    at.extend_from_slice(&(t as u16).to_le_bytes());
                    rsp.set_raw(tag::OFFENDING_ELEMENT, at);
                }
                return self.respond(assoc, job.pc, &rsp).await;
            }
        };
        match job.op {
            Op::Find => self.find(assoc, &job, &q, enc).await,
            Op::Move | Op::Get => self.retrieve(assoc, &job, &q).await,
        }
    }

    async fn find<S>(
        &mut self,
        assoc: &mut AsyncServerAssociation<S>,
        job: &QueryJob,
        q: &Query,
        enc: Encoding,
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let msg_id = job.rq.message_id().unwrap_or(0);
        let cap = self.scp.cfg.dicom.max_find_results;
        let retrieve_ae = self.scp.cfg.dicom.ae_title.clone();
        let mut after = After::Start;
        let mut sent = 0usize;
        let (status, comment) = 'pages: loop {
            let page = self.scp.index.find_page(q, self.scope.clinics(), &after, PAGE).await;
            let (found, next) = match page {
                Ok(p) => p,
                Err(e) => {
                    info!(error = %e, "C-FIND: index unavailable");
                    break (OUT_OF_RESOURCES, Some("index unavailable".to_string()));
                }
            };
            for f in found {
                if sent == cap {
                    break 'pages (
                        OUT_OF_RESOURCES,
                        Some(format!("more than {cap} matches: narrow the query")),
                    );
                }
                let data = identifier::encode(q.response(&f.row, &retrieve_ae), enc);
                let mut rsp = Command::response_to(&job.rq, PENDING, None);
                rsp.set_u16(tag::COMMAND_DATA_SET_TYPE, 0x0000);
                self.send_message(assoc, job.pc, &rsp, &data).await?;
                sent += 1;
            }
            if self.cancelled(assoc, msg_id).await? {
                break (CANCELLED, None);
            }
            match next {
                Some(a) => after = a,
                None => break (0x0000, None),
            }
        };
        let detail = format!(
            "level={} model={:?} matches={sent} status={status:#06x}",
            q.level.as_str(),
            q.model
        );
        let study = match q.filter(0x0020_000D) {
            Some(super::super::qr::matching::Matcher::Single(u)) => Some(u.clone()),
            _ => None,
        };
        audit::record_raw(
            self.scp.index.pool(),
            now_ms(),
            &self.calling,
            Actor::Dicom,
            "dicom_find",
            study.as_deref(),
            Some(&detail),
            &self.peer.to_string(),
        )
        .await;
        debug!(matches = sent, status = format!("{status:#06x}"), "C-FIND answered");
        let rsp = Command::response_to(&job.rq, status, comment.as_deref());
        self.respond(assoc, job.pc, &rsp).await
    }

    /// Whether a C-CANCEL for `msg_id` has arrived, looking without
    /// waiting (dicom-ul's receive keeps partial PDUs in its buffer, so a
    /// look that finds half a PDU loses nothing).
    pub(super) async fn cancelled<S>(&mut self, assoc: &mut AsyncServerAssociation<S>, msg_id: u16) -> Result<bool, End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        loop {
            let pdu = match tokio::time::timeout(Duration::ZERO, assoc.receive()).await {
                Err(_) => return Ok(false),
                Ok(Err(e)) => return Err(self.classify_error(e)),
                Ok(Ok(p)) => p,
            };
            match pdu {
                Pdu::PData { data } => {
                    for pdv in data {
                        match self.feed_pdv(&pdv)? {
                            Step::Pending => {}
                            Step::Command { cmd, .. }
                                if cmd.command_field().ok() == Some(field::C_CANCEL_RQ)
                                    && cmd.u16(tag::MESSAGE_ID_BEING_RESPONDED_TO).ok() == Some(msg_id) =>
                            {
                                info!(calling = %self.calling, "C-CANCEL received");
                                return Ok(true);
                            }
                            // A cancel of another message: nothing of ours.
                            Step::Command { cmd, .. } if cmd.command_field().ok() == Some(field::C_CANCEL_RQ) => {}
                            _ => {
                                return Err(End::Abort(
                                    AbortRQServiceProviderReason::UnexpectedPdu,
                                    "a new request while a query is answered (asynchronous operations were not negotiated)"
                                        .into(),
                                ));
                            }
                        }
                    }
                }
                Pdu::AbortRQ { .. } => return Err(End::PeerAborted),
                other => {
                    return Err(End::Abort(
                        AbortRQServiceProviderReason::UnexpectedPdu,
                        format!("unexpected PDU {} during a query", other.short_description()),
                    ));
                }
            }
        }
    }

    /// One PDV into the association's message assembly; a malformed one
    /// aborts the association.
    pub(super) fn feed_pdv(&mut self, pdv: &PDataValue) -> Result<Step, End> {
        let kind = match pdv.value_type {
            PDataValueType::Command => PdvKind::Command,
            PDataValueType::Data => PdvKind::Data,
        };
        self.asm
            .feed(pdv.presentation_context_id, kind, pdv.is_last, &pdv.data)
            .map_err(|e| End::Abort(AbortRQServiceProviderReason::UnexpectedPduParameter, e.to_string()))
    }

    /// A response with a dataset: the command, then the dataset in PDVs
    /// that fit the peer's maximum PDU.
    pub(super) async fn send_message<S>(
        &mut self,
        assoc: &mut AsyncServerAssociation<S>,
        pc: u8,
        cmd: &Command,
        data: &[u8],
    ) -> Result<(), End>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let closed = |e: dicom_ul::association::Error| End::Closed(format!("sending a response: {e}"));
        assoc
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc,
                    value_type: PDataValueType::Command,
                    is_last: true,
                    data: cmd.encode(),
                }],
            })
            .await
            .map_err(closed)?;
        // PDU variable part = PDV item (4 length + 2 header bytes) + data.
        let max = match self.max_send_pdu {
            0 => 1 << 20,
            n => (n as usize).min(1 << 20),
        };
        let chunk = max.saturating_sub(6).max(1024);
        let mut parts: Vec<&[u8]> = data.chunks(chunk).collect();
        if parts.is_empty() {
            parts.push(&[]);
        }
        let mut parts = parts.into_iter().peekable();
        while let Some(p) = parts.next() {
            assoc
                .send(&Pdu::PData {
                    data: vec![PDataValue {
                        presentation_context_id: pc,
                        value_type: PDataValueType::Data,
                        is_last: parts.peek().is_none(),
                        data: p.to_vec(),
                    }],
                })
                .await
                .map_err(closed)?;
        }
        match tokio::time::timeout(self.scp.cfg.idle_timeout(), assoc.inner_stream().flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(End::Closed(format!("sending a response: {e}"))),
            Err(_) => Err(End::Closed("sending a response: write timeout".into())),
        }
    }
}
