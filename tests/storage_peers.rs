//! The real storage peers issue 18's tests stand on behave like the real
//! thing: a throwaway PostgreSQL cluster (tests/support/pg.rs) that keeps
//! committed rows across a stop, refuses connections while down and takes
//! row locks; an S3 server (s3s-fs, tests/support/s3.rs) that checks SigV4
//! signatures, serves ranges and multipart uploads, and keeps objects across
//! a restart. Driven with the crates medrelay uses for them (sqlx, and the
//! S3 client chosen in docs/storage.md), so a peer that only pretends would
//! fail here before it could make a backend test pass.
//!
//! Run: `nice -n 19 cargo test --test storage_peers` (after `bash tests/support/setup.sh`).

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use support::pg::PgCluster;
use support::rt;
use support::s3::{self, S3Server};

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .expect("connect to the test cluster")
}

#[test]
fn postgres_keeps_committed_rows_across_a_stop_and_refuses_while_down() {
    let mut pg = PgCluster::start();
    // Not root: PostgreSQL refuses to, and the cluster must be a real one.
    let pid = pg.pid().expect("running");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("postmaster status");
    let uid = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid line");
    assert!(
        !uid.split_whitespace().skip(1).any(|u| u == "0"),
        "postmaster runs as root: {uid}"
    );
    assert!(pg.url().starts_with("postgres://medrelay:") && pg.url().ends_with(&format!(":{}/medrelay", pg.port())));

    let rt = rt();
    let db = rt.block_on(async {
        let db = pool(&pg.url()).await;
        let fsync: String = sqlx::query_scalar("SHOW fsync")
            .fetch_one(&db)
            .await
            .expect("SHOW fsync");
        assert_eq!(fsync, "on", "the tests are about durability");
        sqlx::query("CREATE TABLE instances (sop TEXT PRIMARY KEY, size BIGINT NOT NULL)")
            .execute(&db)
            .await
            .expect("create table (the password user owns its database)");
        sqlx::query("INSERT INTO instances VALUES ($1, $2)")
            .bind("1.2.3.4")
            .bind(525_312_i64)
            .execute(&db)
            .await
            .expect("insert");
        db
    });

    pg.stop();
    assert!(!pg.is_running());
    let err = rt
        .block_on(sqlx::query("SELECT count(*) FROM instances").fetch_one(&db))
        .expect_err("a query while the server is down must fail");
    // The pool's idle connection is closed by the shutdown; a new one is refused.
    assert!(
        matches!(
            err,
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Database(_) | sqlx::Error::Protocol(_)
        ),
        "unexpected error kind while down: {err:?}"
    );

    pg.start_again();
    rt.block_on(async {
        // The same pool recovers by itself once the server is back.
        let row = sqlx::query("SELECT sop, size FROM instances")
            .fetch_one(&db)
            .await
            .expect("query after restart");
        assert_eq!(row.get::<String, _>("sop"), "1.2.3.4");
        assert_eq!(row.get::<i64, _>("size"), 525_312);
    });
}

#[test]
fn postgres_for_update_skip_locked_hands_each_row_to_one_claimer() {
    let pg = PgCluster::start();
    let rt = rt();
    rt.block_on(async {
        let db = pool(&pg.url()).await;
        sqlx::query("CREATE TABLE jobs (id BIGINT PRIMARY KEY)")
            .execute(&db)
            .await
            .expect("create");
        sqlx::query("INSERT INTO jobs VALUES (1), (2)")
            .execute(&db)
            .await
            .expect("insert");
        const CLAIM: &str = "SELECT id FROM jobs ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED";

        let mut t1 = db.begin().await.expect("t1");
        let mut t2 = db.begin().await.expect("t2");
        let mut t3 = db.begin().await.expect("t3");
        let a: Option<i64> = sqlx::query_scalar(CLAIM)
            .fetch_optional(&mut *t1)
            .await
            .expect("t1 claim");
        let b: Option<i64> = sqlx::query_scalar(CLAIM)
            .fetch_optional(&mut *t2)
            .await
            .expect("t2 claim");
        let c: Option<i64> = sqlx::query_scalar(CLAIM)
            .fetch_optional(&mut *t3)
            .await
            .expect("t3 claim");
        assert_eq!((a, b, c), (Some(1), Some(2), None), "each row to exactly one claimer");
        // The lock is real: without SKIP LOCKED the third one cannot have row 1.
        let err = sqlx::query("SELECT id FROM jobs WHERE id = 1 FOR UPDATE NOWAIT")
            .fetch_optional(&mut *t3)
            .await
            .expect_err("row 1 is locked by t1");
        let code = err.as_database_error().and_then(|e| e.code()).map(|c| c.to_string());
        assert_eq!(code.as_deref(), Some("55P03"), "lock_not_available: {err:?}");
        t3.rollback().await.expect("t3 rollback");

        // t1 finishes its job; t2 gives its row back: row 2 is claimable again.
        sqlx::query("DELETE FROM jobs WHERE id = 1")
            .execute(&mut *t1)
            .await
            .expect("delete");
        t1.commit().await.expect("t1 commit");
        t2.rollback().await.expect("t2 rollback");
        let mut t4 = db.begin().await.expect("t4");
        let d: Option<i64> = sqlx::query_scalar(CLAIM)
            .fetch_optional(&mut *t4)
            .await
            .expect("t4 claim");
        assert_eq!(d, Some(2));
        t4.commit().await.expect("t4 commit");
    });
}

/// The client as the backend will build it from the storage URL: path-style,
/// plain HTTP to the local server, few retries (a test must see a refusal
/// quickly instead of the client's default three minutes of backoff).
fn s3_client(s: &S3Server, secret: &str) -> Arc<AmazonS3> {
    Arc::new(
        AmazonS3Builder::new()
            .with_endpoint(s.endpoint())
            .with_allow_http(true)
            .with_region(s3::REGION)
            .with_bucket_name(s3::BUCKET)
            .with_access_key_id(s3::ACCESS_KEY)
            .with_secret_access_key(secret)
            .with_retry(RetryConfig {
                max_retries: 1,
                retry_timeout: Duration::from_secs(2),
                ..Default::default()
            })
            .build()
            .expect("S3 client"),
    )
}

/// Deterministic, position-dependent content, so a wrong range or a part in
/// the wrong place shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
        .collect()
}

#[test]
fn s3_server_checks_signatures_and_serves_ranges_multipart_and_lists() {
    let s = S3Server::start();
    assert_eq!(
        s.url("archive"),
        format!(
            "s3://medrelay/archive?endpoint=http://127.0.0.1:{}&region=us-east-1",
            s.port()
        )
    );
    let rt = rt();
    let c = s3_client(&s, s3::SECRET_KEY);
    let bad = s3_client(&s, "not-the-secret");
    rt.block_on(async {
        // SigV4 is checked: a wrong secret is refused with 403, and nothing is stored.
        let err = bad
            .put(&ObjPath::from("archive/forged"), PutPayload::from_static(b"x"))
            .await
            .expect_err("a request signed with a wrong secret must be refused");
        assert!(
            matches!(err, object_store::Error::PermissionDenied { .. }),
            "want 403: {err:?}"
        );
        let err = bad
            .get(&ObjPath::from("archive/forged"))
            .await
            .expect_err("wrong secret, GET");
        assert!(
            matches!(err, object_store::Error::PermissionDenied { .. }),
            "want 403: {err:?}"
        );

        // put / get
        let small = Bytes::from(pattern(4096));
        c.put(&ObjPath::from("archive/a/small"), small.clone().into())
            .await
            .expect("put");
        let got = c
            .get(&ObjPath::from("archive/a/small"))
            .await
            .expect("get")
            .bytes()
            .await
            .expect("body");
        assert_eq!(got, small);

        // streaming multipart upload of 20 MiB in 5 MiB parts, two in flight
        let big = Bytes::from(pattern(20 << 20));
        let key = ObjPath::from("archive/b/big");
        let mut w = WriteMultipart::new_with_chunk_size(c.put_multipart(&key).await.expect("create upload"), 5 << 20);
        for chunk in big.chunks(1 << 20) {
            w.wait_for_capacity(2).await.expect("part upload");
            w.write(chunk);
        }
        w.finish().await.expect("complete upload");
        let meta = c.head(&key).await.expect("head");
        assert_eq!(meta.size, big.len() as u64);
        // the multipart ETag names its part count: it really was multipart
        assert!(
            meta.e_tag
                .as_deref()
                .is_some_and(|e| e.trim_matches('"').ends_with("-4")),
            "etag {:?}",
            meta.e_tag
        );

        // ranged reads, across a part boundary and at the end
        for (start, len) in [
            (0u64, 1u64),
            ((5 << 20) - 100, 200),
            (12_345_678, 1 << 20),
            ((20 << 20) - 10, 10),
        ] {
            let r = c.get_range(&key, start..start + len).await.expect("ranged get");
            assert_eq!(
                &r[..],
                &big[start as usize..(start + len) as usize],
                "range {start}+{len}"
            );
        }

        // list by prefix
        let mut listed: Vec<String> = c
            .list(Some(&ObjPath::from("archive")))
            .map_ok(|m| m.location.to_string())
            .try_collect()
            .await
            .expect("list");
        listed.sort();
        assert_eq!(listed, ["archive/a/small", "archive/b/big"]);

        // delete
        c.delete(&ObjPath::from("archive/a/small")).await.expect("delete");
        let err = c.get(&ObjPath::from("archive/a/small")).await.expect_err("deleted");
        assert!(matches!(err, object_store::Error::NotFound { .. }), "{err:?}");
    });

    // Unsigned requests are refused too (no anonymous access).
    let r = ureq::get(&format!("{}/{}/archive/b/big", s.endpoint(), s3::BUCKET))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .expect("anonymous request answered");
    assert_eq!(r.status().as_u16(), 403);
}

#[test]
fn s3_server_refuses_while_stopped_and_keeps_objects_across_a_restart() {
    let mut s = S3Server::start();
    let rt = rt();
    let c = s3_client(&s, s3::SECRET_KEY);
    let body = Bytes::from(pattern(100_000));
    rt.block_on(async {
        c.put(&ObjPath::from("k/one"), body.clone().into()).await.expect("put");
    });
    let port = s.port();

    s.stop();
    rt.block_on(async {
        c.get(&ObjPath::from("k/one")).await.expect_err("the server is down");
    });

    s.start_again();
    assert_eq!(s.port(), port, "same port after a restart");
    rt.block_on(async {
        let got = c
            .get(&ObjPath::from("k/one"))
            .await
            .expect("get after restart")
            .bytes()
            .await
            .expect("body");
        assert_eq!(got, body);
    });
}
