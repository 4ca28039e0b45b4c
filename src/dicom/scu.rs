//! C-ECHO and C-STORE service user: the `echo` and `store` CLI tools, and
//! later the forwarding of reports to clinic PACS.
//!
//! Datasets are sent exactly as stored (no transcoding) when the peer accepts
//! the file's transfer syntax; otherwise a native (uncompressed) file is
//! re-encoded to an accepted native syntax. Files are streamed PDU by PDU.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_ul::association::{AsyncClientAssociation, ClientAssociationOptions};
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu, PresentationContextResultReason};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::dimse::{Command, field, is_success_or_warning, tag};

#[derive(Debug, thiserror::Error)]
pub enum ScuError {
    #[error("target {0:?}: expected AE@HOST:PORT")]
    BadTarget(String),
    #[error("association with {addr} failed: {source}")]
    Associate {
        addr: String,
        source: Box<dicom_ul::association::Error>,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone)]
pub struct Target {
    pub called_ae: String,
    pub addr: String,
}

impl Target {
    /// `AE@HOST:PORT`, or `HOST:PORT` with `default_ae`.
    pub fn parse(s: &str, default_ae: &str) -> Result<Target, ScuError> {
        let (ae, addr) = match s.split_once('@') {
            Some((ae, addr)) => (ae.to_string(), addr.to_string()),
            None => (default_ae.to_string(), s.to_string()),
        };
        if !super::ae::valid_ae(&ae) || !addr.contains(':') {
            return Err(ScuError::BadTarget(s.to_string()));
        }
        Ok(Target { called_ae: ae, addr })
    }
}

const NATIVE: [&str; 3] = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"];

/// An association with `target` proposing `contexts`; for the SOP
/// classes in `scp_roles` we also offer to take the SCP role (C-GET brings
/// instances back on the association).
pub(crate) async fn associate(
    target: &Target,
    calling: &str,
    contexts: &[(String, Vec<String>)],
    scp_roles: &[&str],
) -> Result<AsyncClientAssociation<TcpStream>, ScuError> {
    let mut o = ClientAssociationOptions::new()
        .calling_ae_title(calling.to_string())
        .called_ae_title(target.called_ae.clone())
        .max_pdu_length(1 << 20)
        .read_timeout(Duration::from_secs(120))
        .write_timeout(Duration::from_secs(120))
        .connection_timeout(Duration::from_secs(15));
    for (abs, ts) in contexts {
        o = o.with_presentation_context(abs.clone(), ts.clone());
    }
    for sop in scp_roles {
        o = o.with_role_selection(sop.to_string(), false, true);
    }
    let mut a = o
        .establish_async(target.addr.as_str())
        .await
        .map_err(|source| ScuError::Associate {
            addr: target.addr.clone(),
            source: Box::new(source),
        })?;
    let _ = a.inner_stream().set_nodelay(true);
    Ok(a)
}

async fn send_command(a: &mut AsyncClientAssociation<TcpStream>, pc: u8, cmd: &Command) -> Result<(), ScuError> {
    let pdu = Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc,
            value_type: PDataValueType::Command,
            is_last: true,
            data: cmd.encode(),
        }],
    };
    a.send(&pdu).await.map_err(|e| ScuError::Protocol(e.to_string()))
}

pub(crate) async fn receive_response(a: &mut AsyncClientAssociation<TcpStream>) -> Result<Command, ScuError> {
    let mut buf = Vec::new();
    loop {
        match a.receive().await.map_err(|e| ScuError::Protocol(e.to_string()))? {
            Pdu::PData { data } => {
                for pdv in data {
                    if pdv.value_type == PDataValueType::Command {
                        buf.extend_from_slice(&pdv.data);
                        if pdv.is_last {
                            return Command::decode(&buf).map_err(|e| ScuError::Protocol(e.to_string()));
                        }
                    }
                }
            }
            Pdu::AbortRQ { source } => return Err(ScuError::Protocol(format!("peer aborted: {source:?}"))),
            other => return Err(ScuError::Protocol(format!("unexpected {}", other.short_description()))),
        }
    }
}

/// C-ECHO; returns the round-trip time.
pub async fn echo(target: &Target, calling: &str) -> Result<Duration, ScuError> {
    let ctx = vec![(
        super::dimse::VERIFICATION_SOP_CLASS.to_string(),
        vec![NATIVE[1].to_string()],
    )];
    let mut a = associate(target, calling, &ctx, &[]).await?;
    let pc = a
        .presentation_contexts()
        .iter()
        .find(|p| p.reason == PresentationContextResultReason::Acceptance)
        .map(|p| p.id)
        .ok_or_else(|| ScuError::Protocol("peer rejected the Verification SOP class".into()))?;
    let t = Instant::now();
    send_command(&mut a, pc, &Command::c_echo_rq(1)).await?;
    let rsp = receive_response(&mut a).await?;
    let rtt = t.elapsed();
    let _ = a.release().await;
    match rsp.u16(tag::STATUS) {
        Ok(0) => Ok(rtt),
        Ok(s) => Err(ScuError::Protocol(format!("C-ECHO status {s:#06x}"))),
        Err(e) => Err(ScuError::Protocol(e.to_string())),
    }
}

/// What the file's Part 10 header says, and where its dataset starts.
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub path: PathBuf,
    pub sop_class: String,
    pub sop_instance: String,
    pub ts: String,
    pub dataset_offset: u64,
}

pub fn inspect(path: &Path) -> Result<FileInfo, ScuError> {
    let err = |msg: String| ScuError::File {
        path: path.to_path_buf(),
        msg,
    };
    let f = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut r = BufReader::new(f);
    let mut pre = [0u8; 132];
    r.read_exact(&mut pre)
        .map_err(|_| err("too short to be a DICOM file".into()))?;
    if &pre[128..132] != b"DICM" {
        return Err(err("not a DICOM Part 10 file (no DICM prefix)".into()));
    }
    // The meta reader wants to see the magic code itself.
    let mut r = std::io::Read::chain(&b"DICM"[..], r);
    let meta = dicom_object::FileMetaTable::from_reader(&mut r).map_err(|e| err(format!("bad file meta: {e}")))?;
    let group_len = meta.information_group_length;
    Ok(FileInfo {
        path: path.to_path_buf(),
        sop_class: meta.media_storage_sop_class_uid().to_string(),
        sop_instance: meta.media_storage_sop_instance_uid().to_string(),
        ts: meta.transfer_syntax().to_string(),
        // preamble + magic + group length element (12 bytes) + group
        dataset_offset: 132 + 12 + u64::from(group_len),
    })
}

/// Expand directories recursively, sorted for a stable order.
pub fn collect_files(inputs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if p.is_dir() {
            if let Ok(rd) = std::fs::read_dir(p) {
                let mut v: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
                v.sort();
                for e in v {
                    walk(&e, out);
                }
            }
        } else {
            out.push(p.to_path_buf());
        }
    }
    for i in inputs {
        walk(i, &mut out);
    }
    out
}

#[derive(Debug, Clone)]
pub struct FileResult {
    pub path: PathBuf,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub latency: Duration,
    pub bytes: u64,
}

impl FileResult {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.status.is_some_and(is_success_or_warning)
    }
}

/// The presentation contexts to propose for a set of files: one per SOP class
/// and transfer syntax, with native fallbacks for native files.
fn contexts_for(files: &[FileInfo]) -> Vec<(String, Vec<String>)> {
    let mut pairs = BTreeSet::new();
    for f in files {
        pairs.insert((f.sop_class.clone(), f.ts.clone()));
    }
    let mut out = Vec::new();
    for (sop, ts) in pairs {
        let mut list = vec![ts.clone()];
        if NATIVE.contains(&ts.as_str()) {
            list.extend(NATIVE.iter().filter(|t| **t != ts).map(|t| t.to_string()));
        }
        out.push((sop, list));
    }
    out.truncate(128);
    out
}

/// Send `files` over `parallel` associations; `progress` is called per file.
pub async fn store(
    files: Vec<PathBuf>,
    target: &Target,
    calling: &str,
    parallel: usize,
    progress: Arc<dyn Fn(&FileResult) + Send + Sync>,
) -> Vec<FileResult> {
    let mut results = Vec::new();
    let mut infos = Vec::new();
    for p in files {
        match tokio::task::spawn_blocking({
            let p = p.clone();
            move || inspect(&p)
        })
        .await
        {
            Ok(Ok(i)) => infos.push(i),
            Ok(Err(e)) => results.push(FileResult {
                path: p,
                status: None,
                error: Some(e.to_string()),
                latency: Duration::ZERO,
                bytes: 0,
            }),
            Err(e) => results.push(FileResult {
                path: p,
                status: None,
                error: Some(e.to_string()),
                latency: Duration::ZERO,
                bytes: 0,
            }),
        }
    }
    for r in &results {
        progress(r);
    }
    let contexts = Arc::new(contexts_for(&infos));
    let queue = Arc::new(Mutex::new(infos.into_iter().collect::<std::collections::VecDeque<_>>()));
    let mut tasks = Vec::new();
    for _ in 0..parallel.max(1) {
        let (queue, contexts, target, calling, progress) = (
            queue.clone(),
            contexts.clone(),
            target.clone(),
            calling.to_string(),
            progress.clone(),
        );
        tasks.push(tokio::spawn(async move {
            store_worker(queue, &contexts, &target, &calling, progress).await
        }));
    }
    for t in tasks {
        if let Ok(mut r) = t.await {
            results.append(&mut r);
        }
    }
    results
}

async fn store_worker(
    queue: Arc<Mutex<std::collections::VecDeque<FileInfo>>>,
    contexts: &[(String, Vec<String>)],
    target: &Target,
    calling: &str,
    progress: Arc<dyn Fn(&FileResult) + Send + Sync>,
) -> Vec<FileResult> {
    let mut results = Vec::new();
    let mut assoc: Option<AsyncClientAssociation<TcpStream>> = None;
    let mut failures_in_a_row = 0;
    let mut msg_id: u16 = 0;
    loop {
        let Some(info) = queue.lock().await.pop_front() else {
            break;
        };
        if assoc.is_none() {
            match associate(target, calling, contexts, &[]).await {
                Ok(a) => assoc = Some(a),
                Err(e) => {
                    failures_in_a_row += 1;
                    let r = FileResult {
                        path: info.path,
                        status: None,
                        error: Some(e.to_string()),
                        latency: Duration::ZERO,
                        bytes: 0,
                    };
                    progress(&r);
                    results.push(r);
                    if failures_in_a_row >= 3 {
                        break;
                    }
                    continue;
                }
            }
        }
        let Some(a) = assoc.as_mut() else { break };
        msg_id = msg_id.wrapping_add(1).max(1);
        let t = Instant::now();
        let r = store_one(a, &info, msg_id).await;
        let result = match r {
            Ok((status, comment, bytes)) => {
                failures_in_a_row = 0;
                FileResult {
                    path: info.path.clone(),
                    status: Some(status),
                    error: (!is_success_or_warning(status)).then(|| format!("status {status:#06x}: {comment}")),
                    latency: t.elapsed(),
                    bytes,
                }
            }
            Err((e, fatal)) => {
                if fatal {
                    // The association is unusable; the next file gets a new one.
                    assoc = None;
                    failures_in_a_row += 1;
                }
                FileResult {
                    path: info.path.clone(),
                    status: None,
                    error: Some(e.to_string()),
                    latency: t.elapsed(),
                    bytes: 0,
                }
            }
        };
        progress(&result);
        results.push(result);
        if failures_in_a_row >= 3 {
            break;
        }
    }
    if let Some(a) = assoc {
        let _ = a.release().await;
    }
    // Whatever this worker could not reach stays in the queue for others; if
    // none are left to take it, report it.
    if failures_in_a_row >= 3 {
        while let Some(info) = queue.lock().await.pop_front() {
            let r = FileResult {
                path: info.path,
                status: None,
                error: Some("not sent: peer unreachable".into()),
                latency: Duration::ZERO,
                bytes: 0,
            };
            progress(&r);
            results.push(r);
        }
    }
    results
}

/// Returns (status, comment, bytes sent) or (error, association unusable).
async fn store_one(
    a: &mut AsyncClientAssociation<TcpStream>,
    info: &FileInfo,
    msg_id: u16,
) -> Result<(u16, String, u64), (ScuError, bool)> {
    let accepted: HashMap<(String, String), u8> = a
        .presentation_contexts()
        .iter()
        .filter(|p| p.reason == PresentationContextResultReason::Acceptance)
        .map(|p| ((p.abstract_syntax.clone(), p.transfer_syntax.clone()), p.id))
        .collect();
    let exact = accepted.get(&(info.sop_class.clone(), info.ts.clone())).copied();
    let (pc, payload) = match exact {
        Some(pc) => (pc, None),
        None => {
            let alt = NATIVE.iter().find_map(|t| {
                accepted
                    .get(&(info.sop_class.clone(), t.to_string()))
                    .map(|pc| (*pc, *t))
            });
            match alt {
                Some((pc, ts)) if NATIVE.contains(&info.ts.as_str()) => {
                    let bytes = transcode(&info.path, ts).map_err(|e| (e, false))?;
                    (pc, Some(bytes))
                }
                _ => {
                    return Err((
                        ScuError::Protocol(format!(
                            "peer accepted no presentation context for SOP class {} in transfer syntax {}",
                            info.sop_class, info.ts
                        )),
                        false,
                    ));
                }
            }
        }
    };
    let max = match a.acceptor_max_pdu_length() {
        0 => 1 << 20,
        n => n.min(1 << 20),
    } as usize;
    let chunk_len = max.saturating_sub(12).max(1024);
    send_command(a, pc, &Command::c_store_rq(msg_id, &info.sop_class, &info.sop_instance))
        .await
        .map_err(|e| (e, true))?;
    let mut sent = 0u64;
    let send_chunk = |data: Vec<u8>, last: bool| Pdu::PData {
        data: vec![PDataValue {
            presentation_context_id: pc,
            value_type: PDataValueType::Data,
            is_last: last,
            data,
        }],
    };
    match payload {
        Some(bytes) => {
            let n = bytes.len();
            let mut chunks = bytes.chunks(chunk_len).peekable();
            if n == 0 {
                a.send(&send_chunk(Vec::new(), true))
                    .await
                    .map_err(|e| (ScuError::Protocol(e.to_string()), true))?;
            }
            while let Some(c) = chunks.next() {
                let last = chunks.peek().is_none();
                a.send(&send_chunk(c.to_vec(), last))
                    .await
                    .map_err(|e| (ScuError::Protocol(e.to_string()), true))?;
                sent += c.len() as u64;
            }
        }
        None => {
            let mut f = tokio::fs::File::open(&info.path).await.map_err(|e| (e.into(), true))?;
            let total = f.metadata().await.map_err(|e| (e.into(), true))?.len();
            let mut remaining = total.saturating_sub(info.dataset_offset);
            tokio::io::AsyncSeekExt::seek(&mut f, std::io::SeekFrom::Start(info.dataset_offset))
                .await
                .map_err(|e| (e.into(), true))?;
            let mut buf = vec![0u8; chunk_len];
            loop {
                let want = (remaining as usize).min(chunk_len);
                let mut got = 0;
                while got < want {
                    let n = f.read(&mut buf[got..want]).await.map_err(|e| (e.into(), true))?;
                    if n == 0 {
                        // The file shrank under us: the dataset we promised is
                        // gone; abort rather than send a truncated instance.
                        return Err((ScuError::Protocol("file truncated while sending".into()), true));
                    }
                    got += n;
                }
                remaining -= want as u64;
                let last = remaining == 0;
                a.send(&send_chunk(buf[..want].to_vec(), last))
                    .await
                    .map_err(|e| (ScuError::Protocol(e.to_string()), true))?;
                sent += want as u64;
                if last {
                    break;
                }
            }
        }
    }
    let rsp = receive_response(a).await.map_err(|e| (e, true))?;
    if rsp.command_field().ok() != Some(field::C_STORE_RSP) {
        return Err((ScuError::Protocol("response is not a C-STORE-RSP".into()), true));
    }
    let status = rsp
        .u16(tag::STATUS)
        .map_err(|e| (ScuError::Protocol(e.to_string()), true))?;
    let comment = rsp.str(tag::ERROR_COMMENT).unwrap_or("").to_string();
    Ok((status, comment, sent))
}

fn transcode(path: &Path, ts_uid: &str) -> Result<Vec<u8>, ScuError> {
    let err = |msg: String| ScuError::File {
        path: path.to_path_buf(),
        msg,
    };
    let obj = dicom_object::open_file(path).map_err(|e| err(e.to_string()))?;
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(ts_uid)
        .ok_or_else(|| err(format!("unknown transfer syntax {ts_uid}")))?;
    let mut out = Vec::new();
    obj.write_dataset_with_ts(&mut out, ts)
        .map_err(|e| err(e.to_string()))?;
    Ok(out)
}

use dicom_encoding::TransferSyntaxIndex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_parsing() {
        let t = Target::parse("PACS@10.0.0.5:104", "ANY").expect("t");
        assert_eq!((t.called_ae.as_str(), t.addr.as_str()), ("PACS", "10.0.0.5:104"));
        let t = Target::parse("localhost:11112", "MEDRELAY").expect("t");
        assert_eq!(t.called_ae, "MEDRELAY");
        assert!(Target::parse("TOO_LONG_AE_TITLE_X@h:1", "A").is_err());
        assert!(Target::parse("PACS@nohost", "A").is_err());
    }

    #[test]
    fn native_files_offer_native_fallbacks_only() {
        let f = |sop: &str, ts: &str| FileInfo {
            path: PathBuf::new(),
            sop_class: sop.into(),
            sop_instance: "1".into(),
            ts: ts.into(),
            dataset_offset: 0,
        };
        let c = contexts_for(&[
            f("1.2.3", "1.2.840.10008.1.2.1"),
            f("1.2.3", "1.2.840.10008.1.2.4.90"),
            f("1.2.3", "1.2.840.10008.1.2.1"),
        ]);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].1.len(), 3);
        assert_eq!(c[1].1, vec!["1.2.840.10008.1.2.4.90".to_string()]);
    }
}
