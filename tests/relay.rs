//! The edge-to-hub relay link against real peers: DCMTK `storescu` pushes
//! to an edge, the edge relays over QUIC through a user-space UDP link
//! emulator (tests/support/udp_impair.py: delay, loss) to a hub, and a DCMTK
//! `storescp` stands in for the clinic PACS on the way back.
//!
//! Shown here: the study arrives complete and byte-identical, previews
//! first; a 30 s link cut, kill -9 of the edge and kill -9 of the hub all
//! end with every instance exactly once; forged and revoked edge
//! certificates are refused; a report signed at the hub reaches the PACS
//! behind the edge as an SR.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::{Pacs, Server, ServerOpts, dcmtk, free_udp_port, python, run, script, text};

const STUDY_INSTANCES: usize = 60;

/// One hub+edge pair at a time: each test moves tens of MB through a Python
/// link emulator, and three at once on a 2-core runner starve each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The UDP link emulator between edge and hub; killed when dropped.
struct Link {
    child: Child,
    port: u16,
    upstream: u16,
    args: Vec<String>,
}

impl Link {
    fn start(port: u16, upstream: u16, args: &[&str]) -> Link {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut child = Command::new(python())
            .arg(script("udp_impair.py"))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--upstream", &format!("127.0.0.1:{upstream}")])
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("udp_impair");
        let out = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line).expect("READY");
        let port: u16 = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("udp_impair said {line:?}"));
        Link {
            child,
            port,
            upstream,
            args,
        }
    }

    fn cut(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new emulator on the same port: the hub sees a new source address.
    fn restore(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        *self = Link::start(self.port, self.upstream, &args);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cut();
    }
}

fn hub_config(relay_port: u16) -> String {
    format!(
        "[relay]\nlisten = \"127.0.0.1:{relay_port}\"\nname = \"medrelay-hub\"\n\n\
         [[clinic]]\nid = \"clinic-a\"\nname = \"Township clinic A\"\nae_titles = [\"HUBDIRECT\"]\n"
    )
}

/// `medrelay relay ...` against the hub's data and certificate directories.
fn relay_cli(hub: &Server, args: &[&str]) -> std::process::Output {
    run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_medrelay"));
        c.arg("relay")
            .args(args)
            .args(["--config", &hub.dir.join("medrelay.toml").display().to_string()])
            .args(["--data-dir", &hub.data_dir.display().to_string()])
            .args(["--cert-dir", &hub.dir.join("certs").display().to_string()])
            .envs(hub.index_env());
        c
    })
}

fn issue_edge(hub: &Server, name: &str, out: &Path) {
    let o = relay_cli(
        hub,
        &[
            "issue-edge",
            "--name",
            name,
            "--clinic",
            "clinic-a",
            "--out",
            &out.display().to_string(),
        ],
    );
    assert!(o.status.success(), "issue-edge: {}", text(&o));
}

fn edge_config(link_port: u16, certs: &Path, rate_mbit: f64, pacs: Option<u16>) -> String {
    let pacs = pacs
        .map(|p| format!("pacs = \"CLINICPACS@127.0.0.1:{p}\"\n"))
        .unwrap_or_default();
    format!(
        "role = \"edge\"\n\n[edge]\nhub = \"127.0.0.1:{link_port}\"\nhub_name = \"medrelay-hub\"\n\
         cert = \"{c}/edge-cert.pem\"\nkey = \"{c}/edge-key.pem\"\nhub_ca = \"{c}/hub-ca.pem\"\n\
         rate_mbit = {rate_mbit}\nstreams = 4\nbundle_mb = 2\n\n\
         [[clinic]]\nid = \"clinic-a\"\nname = \"Township clinic A\"\nae_titles = [\"MODALITY\"]\n{pacs}",
        c = certs.display()
    )
}

fn ct_files(n: usize) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(support::ct300())
        .expect("ct300")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    v.sort();
    v.truncate(n);
    v
}

fn push(edge: &Server, files: &[PathBuf]) {
    let o = run({
        let mut c = edge.storescu("MODALITY");
        c.args(files);
        c
    });
    assert!(o.status.success(), "storescu to the edge: {}", text(&o));
}

fn study_uid(s: &Server) -> String {
    s.sqlite("SELECT study_uid FROM studies LIMIT 1")
}

fn staged_instances(hub: &Server, uid: &str) -> usize {
    hub.sqlite(&format!(
        "SELECT COUNT(*) FROM relay_staged WHERE study_uid = '{uid}' AND kind = 'instance'"
    ))
    .parse()
    .unwrap_or(0)
}

fn committed(hub: &Server, uid: &str) -> bool {
    hub.sqlite(&format!("SELECT state FROM relay_inbound WHERE study_uid = '{uid}'")) == "committed"
}

/// Every instance exactly once at the hub, each file byte-identical to the
/// edge's, the study complete and on the worklist.
fn assert_identical(edge: &Server, hub: &Server, uid: &str, n: usize) {
    let counts = hub.sqlite(&format!(
        "SELECT COUNT(*), COUNT(DISTINCT sop_instance_uid), MAX(version) FROM instances WHERE study_uid = '{uid}'"
    ));
    assert_eq!(
        counts,
        format!("{n}|{n}|1"),
        "instances at the hub (count|distinct|max version)"
    );
    assert_eq!(
        hub.sqlite(&format!(
            "SELECT num_instances, status FROM studies WHERE study_uid = '{uid}'"
        )),
        format!("{n}|complete")
    );
    assert_eq!(
        hub.sqlite(&format!("SELECT COUNT(*) FROM worklist WHERE study_uid = '{uid}'")),
        "1"
    );
    let edge_files = edge.sqlite(&format!(
        "SELECT sop_instance_uid, path FROM instances WHERE study_uid = '{uid}' ORDER BY sop_instance_uid"
    ));
    let hub_files = hub.sqlite(&format!(
        "SELECT sop_instance_uid, path FROM instances WHERE study_uid = '{uid}' ORDER BY sop_instance_uid"
    ));
    let e: Vec<&str> = edge_files.lines().collect();
    let h: Vec<&str> = hub_files.lines().collect();
    assert_eq!(e.len(), n);
    assert_eq!(e.len(), h.len());
    for (a, b) in e.iter().zip(&h) {
        let (sa, pa) = a.split_once('|').expect("row");
        let (sb, pb) = b.split_once('|').expect("row");
        assert_eq!(sa, sb);
        let fa = std::fs::read(support::stored_path(edge, pa)).expect("edge file");
        let fb = std::fs::read(support::stored_path(hub, pb)).expect("hub file");
        assert!(fa == fb, "instance {sa} differs between edge and hub");
    }
    // Nothing left in staging.
    assert_eq!(
        hub.sqlite(&format!("SELECT COUNT(*) FROM relay_staged WHERE study_uid = '{uid}'")),
        "0"
    );
}

struct Pair {
    hub: Server,
    edge: Server,
    link: Link,
    _certs: tempfile::TempDir,
}

fn pair(link_args: &[&str], rate_mbit: f64, pacs: Option<u16>) -> Pair {
    let (hub, certs, relay_port) = hub_with_edge("clinic-a-edge");
    let link = Link::start(0, relay_port, link_args);
    let edge = Server::start(ServerOpts {
        stable_after_secs: 1.0,
        config_toml: edge_config(link.port, certs.path(), rate_mbit, pacs),
        ..ServerOpts::default()
    });
    Pair {
        hub,
        edge,
        link,
        _certs: certs,
    }
}

#[test]
fn study_arrives_byte_identical_previews_first_and_the_report_comes_back() {
    let _serial = serial();
    let pacs = Pacs::start();
    let p = pair(
        &["--delay-ms", "40", "--loss", "0.01", "--seed", "7"],
        0.0,
        Some(pacs.port),
    );
    let files = ct_files(STUDY_INSTANCES);
    push(&p.edge, &files);
    let uid = study_uid(&p.edge);
    p.hub
        .wait_for(180, "the study committed at the hub", || committed(&p.hub, &uid));
    assert_identical(&p.edge, &p.hub, &uid, STUDY_INSTANCES);

    // Previews reached the hub before the first instance did, and came
    // along (no re-rendering at the hub for what the edge rendered).
    let t = p.hub.sqlite(&format!(
        "SELECT first_preview_ms, first_instance_ms, committed_ms FROM relay_inbound WHERE study_uid = '{uid}'"
    ));
    let v: Vec<i64> = t.split('|').map(|x| x.parse().expect("ms")).collect();
    assert!(
        v[0] <= v[1] && v[1] <= v[2],
        "first preview, first instance, commit: {t}"
    );
    let with_previews: usize = p
        .hub
        .sqlite(&format!(
            "SELECT COUNT(*) FROM instances WHERE study_uid = '{uid}' AND preview_status = 'ok'"
        ))
        .parse()
        .expect("count");
    p.hub.wait_for(60, "previews at the hub", || {
        p.hub.sqlite(&format!(
            "SELECT COUNT(*) FROM instances WHERE study_uid = '{uid}' AND preview_status = 'ok'"
        )) == STUDY_INSTANCES.to_string()
    });
    assert!(with_previews > 0, "no preview travelled with the study");
    // The hub's own thumbnail endpoint serves a relayed preview.
    let sop = p.hub.sqlite(&format!(
        "SELECT sop_instance_uid FROM instances WHERE study_uid = '{uid}' LIMIT 1"
    ));
    let (code, jpeg) = p.hub.get(&format!("/api/instances/{sop}/thumbnail"));
    assert_eq!(code, 200);
    assert_eq!(&jpeg[..2], &[0xff, 0xd8]);

    // The edge's outbox is drained and the study marked sent; link figures
    // on /metrics at both ends; the admin views answer.
    p.edge.wait_for(10, "outbox drained", || {
        p.edge.metric("medrelay_relay_outbox_depth") == 0.0
    });
    assert_eq!(p.edge.metric("medrelay_relay_connected{peer=\"hub\"}"), 1.0);
    assert!(
        p.edge.metric("medrelay_relay_rtt_ms{peer=\"hub\"}") >= 70.0,
        "emulated RTT is 80 ms"
    );
    assert_eq!(
        p.hub.metric("medrelay_relay_studies_total{peer=\"clinic-a-edge\"}"),
        1.0
    );
    let a = p.hub.get_json("/api/admin/relay");
    assert_eq!(a["edges"][0]["name"], "clinic-a-edge");
    assert_eq!(a["arriving"][0]["state"], "committed");
    let e = p.edge.get_json("/api/admin/relay");
    assert_eq!(e["outbox_stats"]["depth"], 0);

    // The way back: an expert signs at the hub; the SR travels to the edge
    // and on to the clinic PACS.
    p.hub.add_user("dr-li", "expert", "expert-pass-1", &[]);
    let exp = p.hub.login("dr-li", "expert-pass-1").expect("login");
    let (code, body) = p
        .hub
        .req(Some(&exp), "POST", &format!("/api/worklist/{uid}/claim"), None);
    assert_eq!(code, 200, "claim: {body}");
    let (code, body) = p.hub.req(
        Some(&exp),
        "POST",
        &format!("/api/studies/{uid}/report/sign"),
        Some(json!({ "findings": "No acute findings.", "impression": "Normal CT." })),
    );
    assert_eq!(code, 200, "sign: {body}");
    assert_eq!(body["delivery_queued"], true, "{body}");
    p.edge
        .wait_for(90, "the SR at the clinic PACS", || !pacs.files().is_empty());
    let sr = &pacs.files()[0];
    let o = run({
        let mut c = dcmtk("dsrdump");
        c.arg(sr);
        c
    });
    assert!(o.status.success(), "dsrdump: {}", text(&o));
    assert!(text(&o).contains("Normal CT."), "{}", text(&o));
    // The hub hears that the edge has it; the clinic's notification is at the edge.
    p.hub.wait_for(30, "delivery marked sent at the hub", || {
        p.hub
            .sqlite(&format!("SELECT state FROM deliveries WHERE study_uid = '{uid}'"))
            == "sent"
    });
    p.edge.wait_for(30, "notification at the edge", || {
        p.edge
            .sqlite("SELECT COUNT(*) FROM notifications WHERE kind = 'report'")
            != "0"
    });
}

#[test]
fn link_cut_and_kill9_of_edge_and_hub_resume_without_duplicates() {
    let _serial = serial();
    // 8 Mbit/s cap so the study takes long enough to interrupt it three
    // times; 1 % loss on a 100 ms RTT link.
    let mut p = pair(&["--delay-ms", "50", "--loss", "0.01", "--seed", "11"], 8.0, None);
    let files = ct_files(STUDY_INSTANCES);
    push(&p.edge, &files);
    let uid = study_uid(&p.edge);
    let progress = |hub: &Server, at_least: usize| {
        hub.wait_for(120, &format!("{at_least} instances staged"), || {
            staged_instances(hub, &uid) >= at_least || committed(hub, &uid)
        });
    };

    // 0. The clinic's address changes (a new NAT mapping on 4G): the same
    //    connection carries on from the new address.
    progress(&p.hub, 4);
    p.link.cut();
    p.link.restore();
    p.hub.wait_for(30, "the connection migrated", || {
        p.hub.log().contains("connection migrated")
    });

    // 1. The link goes away for 30 s (longer than QUIC's idle timeout: the
    //    edge reconnects and resumes).
    progress(&p.hub, 8);
    assert!(
        !committed(&p.hub, &uid),
        "the study finished before the link cut; slow the link"
    );
    p.link.cut();
    std::thread::sleep(Duration::from_secs(30));
    let before = staged_instances(&p.hub, &uid);
    p.link.restore();

    // 2. kill -9 of the edge mid-study.
    progress(&p.hub, before + 8);
    assert!(!committed(&p.hub, &uid), "finished before the edge kill");
    p.edge.kill9();
    std::thread::sleep(Duration::from_secs(1));
    p.edge.restart();

    // 3. kill -9 of the hub mid-study.
    let before = staged_instances(&p.hub, &uid);
    progress(&p.hub, before + 6);
    assert!(!committed(&p.hub, &uid), "finished before the hub kill");
    p.hub.restart();

    p.hub.wait_for(240, "the study committed after all interruptions", || {
        committed(&p.hub, &uid)
    });
    assert_identical(&p.edge, &p.hub, &uid, STUDY_INSTANCES);
    p.edge.wait_for(30, "outbox drained", || {
        p.edge
            .sqlite("SELECT COUNT(*) FROM relay_outbox WHERE sent_completed_ms = completed_ms")
            == "1"
    });
    // Resumed, not restarted: the edge's log shows more than one link-up and
    // the hub accepted the committed instances exactly once (checked above).
    assert!(p.edge.log().contains("relay link up"), "{}", p.edge.log());
}

#[test]
fn forged_and_revoked_edge_certificates_are_refused() {
    let _serial = serial();
    let mut p = pair(&[], 0.0, None);
    // Forged: a certificate with the right name from another CA (another
    // hub's), pointed at this hub.
    let other = Server::start(ServerOpts {
        config_toml: hub_config(free_udp_port()),
        ..ServerOpts::default()
    });
    let forged = tempfile::tempdir().expect("tmp");
    issue_edge(&other, "clinic-a-edge", forged.path());
    // It trusts this hub's CA, so only the client certificate is wrong.
    std::fs::copy(p.hub.dir.join("certs/relay-ca.pem"), forged.path().join("hub-ca.pem")).expect("ca");
    let forger = Server::start(ServerOpts {
        stable_after_secs: 1.0,
        config_toml: edge_config(p.link.port, forged.path(), 0.0, None),
        ..ServerOpts::default()
    });
    push(&forger, &ct_files(3));
    p.hub.wait_for(30, "the forged handshake refused", || {
        p.hub.log().contains("relay handshake refused")
    });
    forger.wait_for(30, "the forger told why", || {
        forger.log().contains("invalid peer certificate")
    });
    assert_eq!(p.hub.sqlite("SELECT COUNT(*) FROM relay_inbound"), "0");

    // The genuine edge works...
    push(&p.edge, &ct_files(3));
    let uid = study_uid(&p.edge);
    p.hub
        .wait_for(60, "genuine study committed", || committed(&p.hub, &uid));
    // ...until revoked: the live link is closed and reconnecting is refused.
    let o = relay_cli(&p.hub, &["revoke", "clinic-a-edge"]);
    assert!(o.status.success(), "revoke: {}", text(&o));
    p.hub.wait_for(30, "revoked edge disconnected", || {
        p.hub.log().contains("edge revoked while connected")
    });
    p.edge
        .wait_for(60, "edge sees the revocation", || p.edge.log().contains("revoked"));
    let list = relay_cli(&p.hub, &["list"]);
    assert!(text(&list).contains("REVOKED"), "{}", text(&list));
    // Restarted, the revoked edge is refused at once; its new study does
    // not arrive.
    p.edge.restart();
    p.hub.wait_for(30, "revoked edge refused on reconnect", || {
        p.hub.log().contains("refused a revoked edge certificate")
    });
    let gen_dir = tempfile::tempdir().expect("tmp");
    let o = run({
        let mut c = Command::new(python());
        c.arg(support::repo().join("fixtures/gen_ct.py"))
            .args(["--n", "2", "--rows", "64", "--cols", "64", "--seed", "99", "--out"])
            .arg(gen_dir.path());
        c
    });
    assert!(o.status.success(), "gen_ct: {}", text(&o));
    let new_files: Vec<PathBuf> = std::fs::read_dir(gen_dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .collect();
    push(&p.edge, &new_files);
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        p.hub.sqlite("SELECT COUNT(*) FROM relay_inbound"),
        "1",
        "only the study sent before revocation"
    );
}

/// A registered edge speaking the relay protocol by hand over the real QUIC
/// link (its issued certificate, the hub's CA): the requests a compromised
/// or buggy edge could send.
struct CraftedEdge {
    conn: quinn::Connection,
    _endpoint: quinn::Endpoint,
}

impl CraftedEdge {
    async fn connect(certs: &Path, relay_port: u16) -> CraftedEdge {
        let cc = medrelay::relay::pki::edge_client_config(
            &certs.join("edge-cert.pem"),
            &certs.join("edge-key.pem"),
            &certs.join("hub-ca.pem"),
        )
        .expect("edge client config");
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
        endpoint.set_default_client_config(cc);
        let addr = format!("127.0.0.1:{relay_port}").parse().expect("addr");
        let conn = endpoint
            .connect(addr, "medrelay-hub")
            .expect("connect")
            .await
            .expect("QUIC handshake with the hub");
        CraftedEdge {
            conn,
            _endpoint: endpoint,
        }
    }

    async fn ask(&self, req: &medrelay::relay::wire::Request, body: &[u8]) -> medrelay::relay::wire::Response {
        let (mut send, mut recv) = self.conn.open_bi().await.expect("stream");
        send.write_all(&medrelay::relay::wire::encode(req))
            .await
            .expect("write");
        // A request refused on its header is answered without its body
        // being read: the hub stops the stream (as the edge expects).
        match send.write_all(body).await {
            Ok(()) => send.finish().expect("finish"),
            Err(quinn::WriteError::Stopped(_)) => {}
            Err(e) => panic!("write body: {e}"),
        }
        medrelay::relay::link::read_frame(&mut recv).await.expect("answer")
    }
}

fn crafted_manifest(study: &str, sop: &str) -> medrelay::relay::wire::Manifest {
    use medrelay::archive::index::NewInstance;
    use medrelay::relay::wire::{Manifest, ManifestInstance};
    Manifest {
        study_uid: study.into(),
        priority: "routine".into(),
        clinical_question: None,
        instances: vec![ManifestInstance {
            meta: NewInstance {
                sop_instance_uid: sop.into(),
                study_uid: study.into(),
                series_uid: "1.2.826.0.1.3680043.10.545.1.1".into(),
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                transfer_syntax: "1.2.840.10008.1.2.1".into(),
                patient_name: "EDGE^PATIENT".into(),
                patient_id: "E1".into(),
                modality: "CT".into(),
                ..Default::default()
            },
            sha256: "ab".repeat(32),
            file_size: 1000,
            cine_frames: None,
        }],
    }
}

/// A hub and the certificate of one clinic-A edge: (hub, the edge's
/// certificates, the hub's relay port).
fn hub_with_edge(name: &str) -> (Server, tempfile::TempDir, u16) {
    let relay_port = free_udp_port();
    let hub = Server::start(ServerOpts {
        config_toml: hub_config(relay_port),
        ..ServerOpts::default()
    });
    let certs = tempfile::tempdir().expect("tmp");
    issue_edge(&hub, name, certs.path());
    (hub, certs, relay_port)
}

/// One real CT file as an edge announces and sends it: (study UID, a
/// manifest of that one instance, its bundle member, the file's bytes).
fn crafted_study(
    file: &Path,
) -> (
    String,
    medrelay::relay::wire::Manifest,
    medrelay::relay::wire::Member,
    Vec<u8>,
) {
    use sha2::Digest;
    let study = dcm_value(file, "0020,000D");
    let bytes = std::fs::read(file).expect("file");
    let sop = dcm_value(file, "0008,0018");
    let ts = "1.2.840.10008.1.2.1";
    let mut m = crafted_manifest(&study, &sop);
    m.instances[0].meta.series_uid = dcm_value(file, "0020,000E");
    m.instances[0].meta.transfer_syntax = ts.into();
    m.instances[0].sha256 = medrelay::relay::wire::content_sha256(&bytes, ts).expect("content hash");
    m.instances[0].file_size = bytes.len() as u64;
    let member = medrelay::relay::wire::Member {
        sop_uid: sop,
        sha256: m.instances[0].sha256.clone(),
        file_sha256: hex::encode(sha2::Sha256::digest(&bytes)),
        size: bytes.len() as u64,
    };
    (study, m, member, bytes)
}

/// Every file under the hub's data directory that the relay could have
/// written: previews (.jpg) and staged instances (.dcm, .tmp) outside the
/// archive.
fn relay_written_files(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, p: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.extension().is_some_and(|x| x == "jpg" || x == "tmp" || x == "dcm")
                && !p.starts_with(root.join("instances"))
            {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn crafted_requests_with_unsafe_uids_or_oversized_fields_are_refused() {
    use medrelay::relay::wire::{PreviewItem, Request, Response};
    let _serial = serial();
    let (hub, certs, relay_port) = hub_with_edge("clinic-a-edge");
    let staging = hub.data_dir.join("relay-staging");
    let good = "1.2.826.0.1.3680043.10.545.1";
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let edge = CraftedEdge::connect(certs.path(), relay_port).await;
        let refused = |r: Response, what: &str| match r {
            Response::Error { message, retry } => {
                assert!(message.contains(what), "{what}: {message}");
                assert!(!retry, "resending cannot help: {message}");
            }
            other => panic!("{what}: accepted: {other:?}"),
        };
        // A study UID that is a path: announced, previews, bundles, commit.
        for bad in ["..", "../x", "...", "1.2/../../3", ""] {
            let r = edge
                .ask(
                    &Request::Begin {
                        manifest: crafted_manifest(bad, &format!("{good}.1.1")),
                    },
                    &[],
                )
                .await;
            refused(r, "study_uid");
            let r = edge
                .ask(
                    &Request::Previews {
                        study_uid: bad.into(),
                        items: vec![PreviewItem {
                            sop_uid: format!("{good}.1.1"),
                            kind: "thumb".into(),
                            len: 4,
                        }],
                    },
                    b"\xff\xd8\xff\xd9",
                )
                .await;
            refused(r, "study_uid");
            refused(
                edge.ask(&Request::Commit { study_uid: bad.into() }, &[]).await,
                "study_uid",
            );
        }
        // A series or SOP Instance UID that is a path; a hash that is one.
        let mut m = crafted_manifest(good, &format!("{good}.1.1"));
        m.instances[0].meta.series_uid = "1.2/../../../x".into();
        refused(edge.ask(&Request::Begin { manifest: m }, &[]).await, "series_uid");
        refused(
            edge.ask(
                &Request::Begin {
                    manifest: crafted_manifest(good, ".."),
                },
                &[],
            )
            .await,
            "sop_instance_uid",
        );
        let mut m = crafted_manifest(good, &format!("{good}.1.1"));
        m.instances[0].sha256 = format!("../../{}", "a".repeat(58));
        refused(edge.ask(&Request::Begin { manifest: m }, &[]).await, "sha256");
        // Oversized patient fields.
        let mut m = crafted_manifest(good, &format!("{good}.1.1"));
        m.instances[0].meta.patient_name = "N".repeat(100_000);
        refused(
            edge.ask(&Request::Begin { manifest: m }, &[]).await,
            "patient_name of 100000 bytes",
        );
        let mut m = crafted_manifest(good, &format!("{good}.1.1"));
        m.instances[0].meta.patient_id = "9".repeat(1 << 20);
        refused(edge.ask(&Request::Begin { manifest: m }, &[]).await, "patient_id");

        // A well-formed study is still welcome, and its previews are staged
        // in its own folder; a preview named by a path is not.
        match edge
            .ask(
                &Request::Begin {
                    manifest: crafted_manifest(good, &format!("{good}.1.1")),
                },
                &[],
            )
            .await
        {
            Response::Begun { .. } => {}
            other => panic!("a valid manifest: {other:?}"),
        }
        let r = edge
            .ask(
                &Request::Previews {
                    study_uid: good.into(),
                    items: vec![PreviewItem {
                        sop_uid: "..".into(),
                        kind: "thumb".into(),
                        len: 4,
                    }],
                },
                b"\xff\xd8\xff\xd9",
            )
            .await;
        refused(r, "sop_uid");
        match edge
            .ask(
                &Request::Previews {
                    study_uid: good.into(),
                    items: vec![PreviewItem {
                        sop_uid: format!("{good}.1.1"),
                        kind: "thumb".into(),
                        len: 4,
                    }],
                },
                b"\xff\xd8\xff\xd9",
            )
            .await
        {
            Response::Stored { count: 1 } => {}
            other => panic!("a valid preview: {other:?}"),
        }
    });

    // Only the valid study was recorded, and every file the relay wrote is
    // in that study's staging folder.
    assert_eq!(
        hub.sqlite("SELECT study_uid, state FROM relay_inbound"),
        format!("{good}|arriving")
    );
    let files = relay_written_files(&hub.data_dir);
    assert_eq!(
        files,
        vec![
            staging
                .join("clinic-a-edge")
                .join(good)
                .join(format!("{good}.1.1.thumb.jpg"))
        ],
        "files written by the relay"
    );
    assert!(hub.log().contains("relay request refused"), "{}", hub.log());
    assert!(!hub.log().contains("NNNNNNNNNN"), "a field's content in the log");
}

/// An edge of clinic B relaying instances of a study that clinic A pushes
/// to the hub directly: announced before A's study existed, the commit is
/// refused (not retryable) and what the edge staged stays staged (a retry
/// does not resend it); announced after, it is refused at once, before any
/// byte crosses the WAN. Clinic A's study is untouched, and the refusals
/// are audited as coming over the relay.
#[test]
fn an_edge_cannot_commit_into_another_clinics_study() {
    use medrelay::relay::wire::{Request, Response};
    let _serial = serial();
    let relay_port = free_udp_port();
    let hub = Server::start(ServerOpts {
        config_toml: format!(
            "{}\n[[clinic]]\nid = \"clinic-b\"\nname = \"Township clinic B\"\nae_titles = [\"BDIRECT\"]\n",
            hub_config(relay_port)
        ),
        ..ServerOpts::default()
    });
    let certs = tempfile::tempdir().expect("tmp");
    let o = relay_cli(
        &hub,
        &[
            "issue-edge",
            "--name",
            "clinic-b-edge",
            "--clinic",
            "clinic-b",
            "--out",
            &certs.path().display().to_string(),
        ],
    );
    assert!(o.status.success(), "issue-edge: {}", text(&o));
    let files = ct_files(2);
    // The second slice of the study, relayed as clinic B's.
    let (study, m, member, bytes) = crafted_study(&files[1]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let edge = rt.block_on(CraftedEdge::connect(certs.path(), relay_port));
    rt.block_on(async {
        assert!(matches!(
            edge.ask(&Request::Begin { manifest: m.clone() }, &[]).await,
            Response::Begun { .. }
        ));
        let r = edge
            .ask(
                &Request::Bundle {
                    study_uid: study.clone(),
                    part_id: "p1".into(),
                    compressed: false,
                    shuffled: false,
                    body_len: bytes.len() as u64,
                    members: vec![member],
                },
                &bytes,
            )
            .await;
        assert!(matches!(r, Response::Stored { count: 1 }), "{r:?}");
    });
    // Meanwhile clinic A pushes its study to the hub directly.
    let o = run({
        let mut c = hub.storescu("HUBDIRECT");
        c.arg(&files[0]);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    let before = hub.sqlite("SELECT study_uid, clinic_id, num_instances, status FROM studies");
    assert_eq!(before, format!("{study}|clinic-a|1|receiving"));
    let refused = |r: Response, what: &str| match r {
        Response::Error { message, retry } => {
            assert!(
                message.contains("Study Instance UID belongs to another clinic") && !retry,
                "{what}: {message}"
            );
        }
        other => panic!("{what}: accepted into clinic A's study: {other:?}"),
    };
    rt.block_on(async {
        for _ in 0..2 {
            refused(
                edge.ask(
                    &Request::Commit {
                        study_uid: study.clone(),
                    },
                    &[],
                )
                .await,
                "commit",
            );
        }
    });
    assert_eq!(
        hub.sqlite(&format!(
            "SELECT COUNT(*) FROM relay_staged WHERE study_uid = '{study}' AND kind = 'instance'"
        )),
        "1",
        "the staged instance is kept (no resend on retry)"
    );
    // Announced now, it is refused before anything is sent.
    rt.block_on(async { refused(edge.ask(&Request::Begin { manifest: m }, &[]).await, "begin") });
    assert_eq!(
        hub.sqlite("SELECT study_uid, clinic_id, num_instances, status FROM studies"),
        before
    );
    assert_eq!(hub.sqlite("SELECT COUNT(*) FROM instances"), "1");
    let listed = hub.get_json("/api/admin/ingest-refusals");
    let all = listed["refusals"].as_array().expect("refusals");
    assert_eq!(all.len(), 3, "{listed}");
    for r in all {
        assert_eq!(
            (
                &r["calling_ae"],
                &r["via"],
                &r["clinic_id"],
                &r["owner_clinic"],
                &r["level"]
            ),
            (
                &"clinic-b-edge".into(),
                &"relay".into(),
                &"clinic-b".into(),
                &"clinic-a".into(),
                &"study".into()
            ),
            "{listed}"
        );
    }
}

/// One element's value from a Part 10 file (dcmdump).
fn dcm_value(path: &Path, tag: &str) -> String {
    let o = run({
        let mut c = Command::new("dcmdump");
        c.args(["-q", "+P", tag, "-s"]).arg(path);
        c
    });
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    t.split('[')
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap_or_default()
        .to_string()
}

/// A study the edge sends again carries the clinic's priority again. At the
/// hub it may raise the priority only while the study waits to be read, and
/// the raise is in the study's history; a study cancelled at the hub keeps
/// its priority. (The old code raised it whatever the state, unrecorded.)
#[test]
fn a_resent_study_raises_a_waiting_ones_priority_not_a_cancelled_ones() {
    use medrelay::relay::wire::{Request, Response};
    let _serial = serial();
    let (hub, certs, relay_port) = hub_with_edge("edge-a");
    let pw = "correct-horse-battery";
    hub.add_user("doca", "clinic", pw, &["--clinic", "clinic-a"]);
    let doc = hub.login("doca", pw).expect("login");
    let (study, mut m, member, bytes) = crafted_study(&ct_files(1)[0]);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let edge = rt.block_on(CraftedEdge::connect(certs.path(), relay_port));
    let send = |m: &medrelay::relay::wire::Manifest, with_file: bool| {
        rt.block_on(async {
            let r = edge.ask(&Request::Begin { manifest: m.clone() }, &[]).await;
            assert!(matches!(r, Response::Begun { .. }), "{r:?}");
            if with_file {
                let bundle = Request::Bundle {
                    study_uid: study.clone(),
                    part_id: "p1".into(),
                    compressed: false,
                    shuffled: false,
                    body_len: bytes.len() as u64,
                    members: vec![member.clone()],
                };
                let r = edge.ask(&bundle, &bytes).await;
                assert!(matches!(r, Response::Stored { count: 1 }), "{r:?}");
            }
            let r = edge
                .ask(
                    &Request::Commit {
                        study_uid: study.clone(),
                    },
                    &[],
                )
                .await;
            assert!(matches!(r, Response::Committed { .. }), "{r:?}");
        })
    };
    let row = || {
        hub.sqlite(&format!(
            "SELECT state, priority, COALESCE(clinical_question, '-') FROM worklist WHERE study_uid = '{study}'"
        ))
    };
    let history = || {
        let (code, h) = hub.req(Some(&doc), "GET", &format!("/api/worklist/{study}/history"), None);
        assert_eq!(code, 200, "{h}");
        h["transitions"].as_array().expect("transitions").clone()
    };
    send(&m, true);
    assert_eq!(row(), "new|routine|-");
    assert!(history().is_empty(), "entering the worklist is not a transition");

    // Waiting: the clinic's URGENT from the edge raises it, recorded.
    m.priority = "urgent".into();
    send(&m, false);
    assert_eq!(row(), "new|urgent|-");
    let h = history();
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(
        (&h[0]["actor"], &h[0]["detail"]),
        (&json!("system"), &json!("priority urgent"))
    );

    // Cancelled at the hub: a re-sent STAT leaves it alone.
    let (code, body) = hub.req(
        Some(&doc),
        "POST",
        &format!("/api/worklist/{study}/cancel"),
        Some(json!({ "reason": "sent to the wrong hospital" })),
    );
    assert_eq!(code, 200, "{body}");
    m.priority = "stat".into();
    m.clinical_question = Some("resent".into());
    send(&m, false);
    assert_eq!(row(), "cancelled|urgent|-");
    assert_eq!(history().len(), 2);
}
