//! `medrelay migrate-storage` (issue 18, item 4): a live archive on the
//! embedded defaults (SQLite + files) of 1 000 instances is copied to a
//! throwaway PostgreSQL cluster and a real S3 server (s3s-fs, SigV4) while
//! it keeps receiving; after a stop and a final pass, the gateway runs on
//! the copy: every instance indexed, every object present and matching its
//! recorded hash, the API serving the studies, and new instances landing
//! in PostgreSQL + S3.
//!
//! Run: `nice -n 19 cargo test --test storage_migration` (after `bash tests/support/setup.sh`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::pg::PgCluster;
use support::s3::{self, S3Server};
use support::*;

/// `n` small CT slices of a study of their own (fixtures/gen_ct.py).
fn gen_series(dir: &Path, n: u32, side: u32, seed: u32) -> PathBuf {
    let out = dir.join(format!("gen{seed}"));
    let o = run({
        let mut c = Command::new(python());
        c.arg(repo().join("fixtures/gen_ct.py"))
            .args(["--n", &n.to_string(), "--seed", &seed.to_string()])
            .args(["--rows", &side.to_string(), "--cols", &side.to_string()])
            .args(["--patient-id", &format!("MIG{seed}"), "--out"])
            .arg(&out);
        c
    });
    assert!(o.status.success(), "{}", text(&o));
    out
}

fn push(s: &Server, dir: &Path) -> std::process::Output {
    let mut c = s.storescu("MIGRATE");
    c.arg("+sd").arg(dir);
    run(c)
}

fn migrate_storage(s: &Server, to_index: &str, to_storage: &str) -> std::process::Output {
    run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_medrelay"));
        c.args([
            "migrate-storage",
            "--to-index",
            to_index,
            "--to-storage",
            to_storage,
            "--data-dir",
        ])
        .arg(&s.data_dir)
        .env("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY)
        .env_remove("MEDRELAY_INDEX_URL")
        .env_remove("MEDRELAY_STORAGE_URL");
        c
    })
}

/// SHA-256 of an instance file as the index records it: transfer syntax,
/// a zero byte, then the dataset after the Part 10 header.
fn content_hash(file: &[u8], ts: &str) -> String {
    use sha2::Digest;
    let g = u32::from_le_bytes(file[140..144].try_into().expect("group length")) as usize;
    let mut d = sha2::Sha256::new();
    d.update(ts.as_bytes());
    d.update(b"\0");
    d.update(&file[144 + g..]);
    hex::encode(d.finalize())
}

#[test]
fn a_live_archive_moves_to_postgresql_and_s3_verified_and_runs_there() {
    // The source is the embedded default, whatever knobs the run has.
    let work = tempfile::tempdir().expect("tmp");
    let mut s = Server::start(ServerOpts::default());
    assert!(
        !s.index_on_pg() && !storage_is_s3(),
        "the source archive is on the embedded defaults (run without the backend knobs)"
    );
    let extra = gen_series(work.path(), 700, 64, 21);
    let during = gen_series(work.path(), 200, 256, 22);
    for dir in [ct300(), extra] {
        let o = push(&s, &dir);
        assert!(o.status.success(), "{}", text(&o));
    }
    assert_eq!(s.sqlite("SELECT COUNT(*) FROM instances"), "1000");

    let pg = PgCluster::start();
    let s3 = S3Server::start();
    let to_index = pg.fresh_db("migrated");
    let to_storage = s3.url("alliance");

    // First pass while the gateway keeps receiving another study.
    let receiving = std::thread::scope(|scope| {
        let pushing = scope.spawn(|| push(&s, &during));
        let first = migrate_storage(&s, &to_index, &to_storage);
        (first, pushing.join().expect("push thread"))
    });
    let (first, pushed) = receiving;
    assert!(first.status.success(), "first pass: {}", text(&first));
    assert!(pushed.status.success(), "push during the copy: {}", text(&pushed));
    assert!(text(&first).contains("verified by SHA-256"), "{}", text(&first));

    // Stop, final pass: only what arrived since is sent, everything verified.
    assert!(s.terminate(), "clean stop");
    let total: usize = s.sqlite("SELECT COUNT(*) FROM instances").parse().expect("count");
    assert_eq!(total, 1200);
    let last = migrate_storage(&s, &to_index, &to_storage);
    assert!(last.status.success(), "final pass: {}", text(&last));
    let out = text(&last);
    let number = |line: &str, at: usize| -> usize {
        line.split_whitespace()
            .nth(at)
            .and_then(|n| n.parse().ok())
            .unwrap_or(usize::MAX)
    };
    let mut lines = out.lines().filter(|l| l.starts_with("objects:"));
    let (objects_line, final_line) = (lines.next().unwrap_or_default(), lines.next().unwrap_or_default());
    // "objects: N at the source, C copied (...)", "objects: C2 copied since, V verified by SHA-256 in all"
    let (at_source, resent, verified) = (number(objects_line, 1), number(objects_line, 5), number(final_line, 4));
    assert_eq!(verified, at_source, "every object verified at the destination: {out}");
    assert!(
        at_source > total,
        "the instances and the previews rendered so far: {out}"
    );
    assert!(
        resent < at_source,
        "a resumed run does not resend what it verified before: {out}"
    );

    // The gateway on the copy: same data directory, new URLs.
    let s2 = Server::start(ServerOpts {
        data_dir: Some(s.data_dir.clone()),
        index_url: Some(to_index.clone()),
        config_toml: format!(
            "[storage]\nurl = \"{to_storage}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
            s3::ACCESS_KEY,
            s3::SECRET_KEY
        ),
        ..ServerOpts::default()
    });
    assert!(s2.index_on_pg());
    assert_eq!(s2.sqlite("SELECT COUNT(*) FROM instances"), total.to_string());
    // Every indexed object is in the bucket with the bytes its hash names.
    let objects = s3.data_dir().join(s3::BUCKET).join("alliance");
    let rows = s2.sqlite("SELECT path, transfer_syntax, sha256 FROM instances");
    let mut checked = 0;
    for row in rows.lines() {
        let f: Vec<&str> = row.split('|').collect();
        let key = f[0].strip_prefix("instances/").unwrap_or(f[0]);
        let bytes = std::fs::read(objects.join(key)).unwrap_or_else(|e| panic!("{key} not in S3: {e}"));
        assert_eq!(content_hash(&bytes, f[1]), f[2], "{key} does not match its hash");
        checked += 1;
    }
    assert_eq!(checked, total);
    // The API serves what was migrated (the admin account came along).
    let studies = s2.get_json("/api/studies?limit=50");
    assert_eq!(studies["total"].as_i64(), Some(3), "{studies}");
    // New instances land in PostgreSQL + S3.
    let fresh = gen_series(work.path(), 1, 64, 23);
    let o = push(&s2, &fresh);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(s2.sqlite("SELECT COUNT(*) FROM instances"), (total + 1).to_string());
    let path = s2.sqlite("SELECT path FROM instances WHERE study_uid NOT IN (SELECT study_uid FROM instances GROUP BY study_uid HAVING COUNT(*) > 1)");
    let key = path
        .trim()
        .strip_prefix("instances/")
        .unwrap_or(path.trim())
        .to_string();
    assert!(objects.join(&key).is_file(), "the new instance {key} is in S3");
    drop(s2);
    drop(s);
}
