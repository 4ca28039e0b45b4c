//! Query/Retrieve service user: `medrelay find`, `medrelay move`,
//! `medrelay get` against any PACS (and the priors fetch, later).
//!
//! Identifiers are written with [`qr::identifier`] in Implicit VR Little
//! Endian, which every SCP accepts and which needs no VR per key, with
//! Specific Character Set `ISO_IR 192` so Chinese names go out as typed.
//! Responses are decoded with their own character set. C-GET writes what
//! arrives, as it arrived, under a fresh Part 10 header (`<SOP UID>.dcm`),
//! after checking the UID is one (no path from the network otherwise).

use std::path::{Path, PathBuf};

use dicom_ul::association::AsyncClientAssociation;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu, PresentationContextResultReason};
use tokio::net::TcpStream;

use super::charset::Charset;
use super::dimse::{Command, NO_DATASET, field, tag};
use super::meta::{file_meta, is_valid_uid};
use super::qr::identifier::{self, Identifier, Out};
use super::qr::keys::{self, QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET};
use super::qr::retrieve::{COMPLETED, FAILED, MOVE_DESTINATION, REMAINING, WARNING};
use super::qr::{self, Model};
use super::scu::{ScuError, Target};
use super::sop_classes::STORAGE_SOP_CLASSES;
use super::walk::Encoding;

const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
/// Responses one `find` keeps at most (the rest are counted, not kept).
pub const MAX_KEPT: usize = 100_000;

/// One `-k KEY[=VALUE]` of the command line, resolved to a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryKey {
    pub tag: u32,
    pub value: String,
}

impl QueryKey {
    /// `PatientName=王*`, `StudyInstanceUID`, `0010,0020=123`.
    pub fn parse(s: &str) -> Result<QueryKey, String> {
        let (k, v) = s.split_once('=').unwrap_or((s, ""));
        let k = k.trim();
        let tag = if k == "QueryRetrieveLevel" {
            QUERY_RETRIEVE_LEVEL
        } else if let Some(key) = keys::KEYS.iter().find(|x| x.keyword == k) {
            key.tag
        } else if let Some((g, e)) = k.split_once(',') {
            let g = u16::from_str_radix(g.trim(), 16).map_err(|_| format!("bad tag {k:?}"))?;
            let e = u16::from_str_radix(e.trim(), 16).map_err(|_| format!("bad tag {k:?}"))?;
            (u32::from(g) << 16) | u32::from(e)
        } else {
            let known: Vec<&str> = keys::KEYS.iter().map(|x| x.keyword).collect();
            return Err(format!(
                "unknown key {k:?}; known: QueryRetrieveLevel, {}",
                known.join(", ")
            ));
        };
        Ok(QueryKey {
            tag,
            value: v.to_string(),
        })
    }
}

/// The name of a tag for printing: its keyword where medrelay knows it.
pub fn tag_name(tag: u32) -> String {
    match tag {
        QUERY_RETRIEVE_LEVEL => "QueryRetrieveLevel".into(),
        SPECIFIC_CHARACTER_SET => "SpecificCharacterSet".into(),
        t => keys::by_tag(t)
            .map(|k| k.keyword.to_string())
            .unwrap_or_else(|| format!("({:04X},{:04X})", t >> 16, t & 0xFFFF)),
    }
}

fn request_identifier(level: &str, keys: &[QueryKey]) -> Vec<u8> {
    let mut out = vec![
        Out {
            tag: SPECIFIC_CHARACTER_SET,
            vr: *b"CS",
            value: b"ISO_IR 192".to_vec(),
        },
        Out {
            tag: QUERY_RETRIEVE_LEVEL,
            vr: *b"CS",
            value: level.as_bytes().to_vec(),
        },
    ];
    for k in keys {
        if k.tag == QUERY_RETRIEVE_LEVEL || k.tag == SPECIFIC_CHARACTER_SET {
            continue;
        }
        out.push(Out {
            tag: k.tag,
            // Implicit VR: the VR is not written; UI pads with NUL.
            vr: if keys::by_tag(k.tag).is_some_and(|x| x.vr == qr::matching::Vr::Ui) {
                *b"UI"
            } else {
                *b"LO"
            },
            value: k.value.as_bytes().to_vec(),
        });
    }
    identifier::encode(out, Encoding::for_transfer_syntax(IMPLICIT_LE))
}

fn sop_class_of(model: Model, op: qr::Op) -> &'static str {
    match (model, op) {
        (Model::PatientRoot, qr::Op::Find) => qr::PATIENT_ROOT_FIND,
        (Model::PatientRoot, qr::Op::Move) => qr::PATIENT_ROOT_MOVE,
        (Model::PatientRoot, qr::Op::Get) => qr::PATIENT_ROOT_GET,
        (Model::StudyRoot, qr::Op::Find) => qr::STUDY_ROOT_FIND,
        (Model::StudyRoot, qr::Op::Move) => qr::STUDY_ROOT_MOVE,
        (Model::StudyRoot, qr::Op::Get) => qr::STUDY_ROOT_GET,
    }
}

async fn associate(
    target: &Target,
    calling: &str,
    sop: &str,
    storage_scp: bool,
) -> Result<(AsyncClientAssociation<TcpStream>, u8), ScuError> {
    let mut contexts = vec![(sop.to_string(), vec![IMPLICIT_LE.to_string()])];
    let mut roles: Vec<&str> = Vec::new();
    if storage_scp {
        // C-GET brings instances back on this association: propose the
        // storage classes with the SCP role for ourselves, uncompressed
        // (PS3.8 limits an association to 128 contexts).
        for (uid, _) in STORAGE_SOP_CLASSES.iter().take(120) {
            contexts.push((uid.to_string(), vec![EXPLICIT_LE.to_string(), IMPLICIT_LE.to_string()]));
            roles.push(uid);
        }
    }
    let a = super::scu::associate(target, calling, &contexts, &roles).await?;
    let pc = a
        .presentation_contexts()
        .iter()
        .find(|p| p.reason == PresentationContextResultReason::Acceptance && p.abstract_syntax == sop)
        .map(|p| p.id)
        .ok_or_else(|| ScuError::Protocol(format!("the peer does not provide {sop}")))?;
    Ok((a, pc))
}

async fn send(
    a: &mut AsyncClientAssociation<TcpStream>,
    pc: u8,
    kind: PDataValueType,
    data: Vec<u8>,
) -> Result<(), ScuError> {
    a.send(&Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc,
            value_type: kind,
            is_last: true,
            data,
        }],
    })
    .await
    .map_err(|e| ScuError::Protocol(e.to_string()))
}

/// One message from the peer: its command and dataset bytes, and the
/// context it came on.
struct Message {
    pc: u8,
    cmd: Command,
    data: Vec<u8>,
}

/// Datasets larger than this are refused (a C-GET instance is written
/// through, not held: see [`get`]).
const MAX_MESSAGE_DATA: usize = 64 << 20;

async fn receive(a: &mut AsyncClientAssociation<TcpStream>) -> Result<Message, ScuError> {
    let (mut cmd_bytes, mut data) = (Vec::new(), Vec::new());
    let mut cmd: Option<Command> = None;
    loop {
        match a.receive().await.map_err(|e| ScuError::Protocol(e.to_string()))? {
            Pdu::PData { data: pdvs } => {
                for pdv in pdvs {
                    let pc = pdv.presentation_context_id;
                    match pdv.value_type {
                        PDataValueType::Command => {
                            cmd_bytes.extend_from_slice(&pdv.data);
                            if pdv.is_last {
                                let c = Command::decode(&cmd_bytes).map_err(|e| ScuError::Protocol(e.to_string()))?;
                                if !c.has_dataset() {
                                    return Ok(Message { pc, cmd: c, data });
                                }
                                cmd = Some(c);
                            }
                        }
                        PDataValueType::Data => {
                            if data.len() + pdv.data.len() > MAX_MESSAGE_DATA {
                                return Err(ScuError::Protocol("dataset larger than 64 MiB".into()));
                            }
                            data.extend_from_slice(&pdv.data);
                            if pdv.is_last {
                                let cmd = cmd
                                    .take()
                                    .ok_or_else(|| ScuError::Protocol("dataset before its command".into()))?;
                                return Ok(Message { pc, cmd, data });
                            }
                        }
                    }
                }
            }
            Pdu::AbortRQ { source } => return Err(ScuError::Protocol(format!("peer aborted: {source:?}"))),
            other => return Err(ScuError::Protocol(format!("unexpected {}", other.short_description()))),
        }
    }
}

fn request(op: qr::Op, sop: &str, msg_id: u16) -> Command {
    let f = match op {
        qr::Op::Find => field::C_FIND_RQ,
        qr::Op::Move => field::C_MOVE_RQ,
        qr::Op::Get => field::C_GET_RQ,
    };
    let mut c = Command::default();
    c.set_str(tag::AFFECTED_SOP_CLASS_UID, sop)
        .set_u16(tag::COMMAND_FIELD, f)
        .set_u16(tag::MESSAGE_ID, msg_id)
        .set_u16(tag::PRIORITY, 0)
        .set_u16(tag::COMMAND_DATA_SET_TYPE, 0x0000);
    c
}

/// What a find returned: the matches (decoded to Unicode), and the final
/// status with its comment.
#[derive(Debug, Clone, Default)]
pub struct FindResult {
    pub matches: Vec<Vec<(u32, String)>>,
    pub status: u16,
    pub comment: String,
}

fn decode(id: &Identifier) -> Vec<(u32, String)> {
    let cs = Charset::from_raw(id.get(SPECIFIC_CHARACTER_SET).map(|e| e.value.as_slice()));
    id.elements
        .iter()
        .filter(|e| !e.sequence && e.tag != SPECIFIC_CHARACTER_SET)
        .map(|e| {
            let pn = keys::by_tag(e.tag).is_some_and(|k| k.vr == qr::matching::Vr::Pn);
            let v = if pn {
                cs.decode_pn(&e.value)
            } else {
                cs.decode(&e.value)
            };
            (e.tag, v.trim_matches(|c: char| c == '\0' || c == ' ').to_string())
        })
        .collect()
}

/// C-FIND at `level`.
pub async fn find(
    target: &Target,
    calling: &str,
    model: Model,
    level: &str,
    keys: &[QueryKey],
) -> Result<FindResult, ScuError> {
    let sop = sop_class_of(model, qr::Op::Find);
    let (mut a, pc) = associate(target, calling, sop, false).await?;
    send(
        &mut a,
        pc,
        PDataValueType::Command,
        request(qr::Op::Find, sop, 1).encode(),
    )
    .await?;
    send(&mut a, pc, PDataValueType::Data, request_identifier(level, keys)).await?;
    let mut out = FindResult::default();
    loop {
        let m = receive(&mut a).await?;
        let status = m.cmd.u16(tag::STATUS).map_err(|e| ScuError::Protocol(e.to_string()))?;
        if matches!(status, 0xFF00 | 0xFF01) {
            if out.matches.len() < MAX_KEPT {
                let id = identifier::parse(&m.data, Encoding::for_transfer_syntax(IMPLICIT_LE))
                    .map_err(|e| ScuError::Protocol(format!("response identifier: {e}")))?;
                out.matches.push(decode(&id));
            }
            continue;
        }
        out.status = status;
        out.comment = m.cmd.str(tag::ERROR_COMMENT).unwrap_or("").to_string();
        let _ = a.release().await;
        return Ok(out);
    }
}

/// The counts and status of a C-MOVE or C-GET, as the last response gave them.
#[derive(Debug, Clone, Default)]
pub struct RetrieveResult {
    pub status: u16,
    pub completed: u16,
    pub failed: u16,
    pub warning: u16,
    pub comment: String,
    /// C-GET: files written.
    pub written: Vec<PathBuf>,
}

/// C-MOVE to `destination` (an AE title the peer knows). `progress` is
/// told each pending response's (remaining, completed, failed, warning).
pub async fn move_to(
    target: &Target,
    calling: &str,
    model: Model,
    level: &str,
    keys: &[QueryKey],
    destination: &str,
    progress: &(dyn Fn(u16, u16, u16, u16) + Send + Sync),
) -> Result<RetrieveResult, ScuError> {
    let sop = sop_class_of(model, qr::Op::Move);
    let (mut a, pc) = associate(target, calling, sop, false).await?;
    let mut rq = request(qr::Op::Move, sop, 1);
    rq.set_str(MOVE_DESTINATION, destination);
    send(&mut a, pc, PDataValueType::Command, rq.encode()).await?;
    send(&mut a, pc, PDataValueType::Data, request_identifier(level, keys)).await?;
    loop {
        let m = receive(&mut a).await?;
        let r = counts(&m.cmd)?;
        if matches!(r.status, 0xFF00 | 0xFF01) {
            progress(m.cmd.u16(REMAINING).unwrap_or(0), r.completed, r.failed, r.warning);
            continue;
        }
        let _ = a.release().await;
        return Ok(r);
    }
}

fn counts(cmd: &Command) -> Result<RetrieveResult, ScuError> {
    Ok(RetrieveResult {
        status: cmd.u16(tag::STATUS).map_err(|e| ScuError::Protocol(e.to_string()))?,
        completed: cmd.u16(COMPLETED).unwrap_or(0),
        failed: cmd.u16(FAILED).unwrap_or(0),
        warning: cmd.u16(WARNING).unwrap_or(0),
        comment: cmd.str(tag::ERROR_COMMENT).unwrap_or("").to_string(),
        written: Vec::new(),
    })
}

/// C-GET into `out_dir`: each instance the peer sends is written as
/// `<SOP Instance UID>.dcm` and acknowledged once on disk.
pub async fn get(
    target: &Target,
    calling: &str,
    model: Model,
    level: &str,
    keys: &[QueryKey],
    out_dir: &Path,
) -> Result<RetrieveResult, ScuError> {
    let sop = sop_class_of(model, qr::Op::Get);
    let (mut a, pc) = associate(target, calling, sop, true).await?;
    let contexts: std::collections::HashMap<u8, (String, String)> = a
        .presentation_contexts()
        .iter()
        .filter(|p| p.reason == PresentationContextResultReason::Acceptance)
        .map(|p| (p.id, (p.abstract_syntax.clone(), p.transfer_syntax.clone())))
        .collect();
    send(
        &mut a,
        pc,
        PDataValueType::Command,
        request(qr::Op::Get, sop, 1).encode(),
    )
    .await?;
    send(&mut a, pc, PDataValueType::Data, request_identifier(level, keys)).await?;
    let mut written = Vec::new();
    loop {
        let m = receive(&mut a).await?;
        if m.cmd.command_field().ok() == Some(field::C_STORE_RQ) {
            let status = match store_incoming(&m, &contexts, out_dir, &target.called_ae).await {
                Ok(p) => {
                    written.push(p);
                    0x0000
                }
                Err(e) => {
                    tracing::warn!(error = %e, "instance not written");
                    0xA700
                }
            };
            let mut rsp = Command::response_to(&m.cmd, status, None);
            rsp.set_u16(tag::COMMAND_DATA_SET_TYPE, NO_DATASET);
            send(&mut a, m.pc, PDataValueType::Command, rsp.encode()).await?;
            continue;
        }
        let mut r = counts(&m.cmd)?;
        if matches!(r.status, 0xFF00 | 0xFF01) {
            continue;
        }
        let _ = a.release().await;
        r.written = written;
        return Ok(r);
    }
}

async fn store_incoming(
    m: &Message,
    contexts: &std::collections::HashMap<u8, (String, String)>,
    out_dir: &Path,
    source_ae: &str,
) -> Result<PathBuf, String> {
    let (sop_class, ts) = contexts.get(&m.pc).ok_or("instance on an unknown context")?;
    let sop = m
        .cmd
        .str(tag::AFFECTED_SOP_INSTANCE_UID)
        .map_err(|e| e.to_string())?
        .to_string();
    if !is_valid_uid(&sop) {
        return Err("the instance's SOP Instance UID is not a UID".into());
    }
    let mut bytes = file_meta(sop_class, &sop, ts, source_ae);
    bytes.extend_from_slice(&m.data);
    let path = out_dir.join(format!("{sop}.dcm"));
    let p = path.clone();
    tokio::task::spawn_blocking(move || std::fs::write(&p, &bytes))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_by_keyword_or_tag() {
        assert_eq!(
            QueryKey::parse("PatientName=王*"),
            Ok(QueryKey {
                tag: 0x0010_0010,
                value: "王*".into()
            })
        );
        assert_eq!(QueryKey::parse("StudyInstanceUID").map(|k| k.tag), Ok(0x0020_000D));
        assert_eq!(QueryKey::parse("0010,0020=X").map(|k| k.tag), Ok(0x0010_0020));
        assert!(QueryKey::parse("NoSuchKey=1").is_err());
        assert_eq!(tag_name(0x0008_0020), "StudyDate");
        assert_eq!(tag_name(0x0009_0010), "(0009,0010)");
    }

    #[test]
    fn request_identifiers_are_read_back_by_the_scp_parser() {
        let keys = [
            QueryKey::parse("PatientName=王*").expect("k"),
            QueryKey::parse("StudyInstanceUID").expect("k"),
        ];
        let bytes = request_identifier("STUDY", &keys);
        let id = identifier::parse(&bytes, Encoding::for_transfer_syntax(IMPLICIT_LE)).expect("parse");
        let q = qr::find::parse(Model::StudyRoot, &id).expect("query");
        assert_eq!(q.level, qr::Level::Study);
        assert_eq!(q.filters.len(), 1);
    }
}
