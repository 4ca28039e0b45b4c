//! Blobs in an S3-compatible object store (AWS S3, Garage, MinIO, Ceph RGW),
//! through Apache `object_store`.
//!
//! Why `object_store`: measured against aws-sdk-s3 and rust-s3 on this
//! machine (docs/storage.md, `benches/s3_clients/run.sh`): the same
//! throughput as aws-sdk-s3 with 24 MiB peak RSS for a 200 MiB streaming
//! multipart upload (rust-s3 buffered the whole object: 166 MiB), and half
//! the new crates of aws-sdk-s3. Its interface is the small one this
//! boundary needs (multipart, ranged get, list, delete).
//!
//! Writing: a new object is spooled to a local file while it arrives (the
//! SCP must walk the dataset before it may acknowledge it, and the content
//! address is only known after the last byte). `commit(key)` then uploads
//! it straight to its content-addressed key: one PUT up to `PART` bytes,
//! else a streaming multipart upload of `PART`-sized parts with at most
//! `PARTS_IN_FLIGHT` in flight (memory: about three parts, whatever the
//! size). An S3 object becomes visible only when its PUT or its multipart
//! completion succeeds, so no staging key and no copy are needed: a key
//! either holds all the bytes or does not exist, and an interrupted
//! multipart upload is aborted (and left to the bucket's lifecycle rule for
//! incomplete uploads if even the abort fails). A key that already exists
//! holds the same bytes (content addressing): it is not uploaded again.
//!
//! Every request has a timeout and a bounded number of retries, so a store
//! that goes away turns into `BlobError::Unavailable` within seconds (the
//! SCP answers 0xA7xx and the modality retries), never a hang.
//!
//! The async client runs on a runtime of its own (two threads), driven with
//! `block_on` from the blocking threads that call this boundary.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};

use super::{BlobError, BlobWriter, Blobs, Spooled, file::check_key};

/// Part size of multipart uploads; objects up to this size go in one PUT.
/// S3's smallest allowed part (5 MiB): the parts in flight are most of the
/// gateway's memory while it uploads a large instance, and 8 MiB parts put
/// a 1 GiB multi-frame's store-and-render peak over the 64 MB budget
/// (benches/s3_multiframe.sh); 205 parts for 1 GiB is far from S3's 10 000.
pub const PART: usize = 5 << 20;
/// Parts uploading at once (each holds `PART` bytes of memory).
pub const PARTS_IN_FLIGHT: usize = 2;
/// One request (connect to last byte) may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of one failed request (connection refused, 5xx, timeout), and
/// the most time spent retrying it.
const RETRIES: usize = 3;
const RETRY_BUDGET: Duration = Duration::from_secs(10);

/// `s3://bucket/prefix?endpoint=http://host:port&region=R`, plus the
/// credentials (from the config or `AWS_ACCESS_KEY_ID` /
/// `AWS_SECRET_ACCESS_KEY`). Debug never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// Key prefix without a trailing slash ("" for the bucket root).
    pub prefix: String,
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl fmt::Debug for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)?;
        if let Some(e) = &self.endpoint {
            write!(f, " at {e}")?;
        }
        write!(f, " ({})", self.region)
    }
}

impl S3Url {
    pub fn parse(url: &str) -> Result<S3Url, String> {
        let rest = url.strip_prefix("s3://").ok_or("an s3 url starts with s3://")?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid_bucket {
            return Err(format!("s3 url: {bucket:?} is not a bucket name"));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            check_key(&prefix).map_err(|_| format!("s3 url: bad key prefix {prefix:?}"))?;
        }
        let mut u = S3Url {
            bucket: bucket.to_string(),
            prefix,
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: None,
            secret_access_key: None,
        };
        for kv in query.split('&').filter(|s| !s.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            match k {
                "endpoint" => {
                    if !(v.starts_with("http://") || v.starts_with("https://")) {
                        return Err(format!("s3 url: endpoint {v:?} must start with http:// or https://"));
                    }
                    u.endpoint = Some(v.trim_end_matches('/').to_string());
                }
                "region" if !v.is_empty() => u.region = v.to_string(),
                other => return Err(format!("s3 url: unknown parameter {other:?} (endpoint, region)")),
            }
        }
        Ok(u)
    }

    /// Credentials given in the config win; else the standard variables.
    pub fn with_credentials(mut self, key_id: Option<String>, secret: Option<String>) -> S3Url {
        self.access_key_id = key_id.or_else(|| std::env::var("AWS_ACCESS_KEY_ID").ok());
        self.secret_access_key = secret.or_else(|| std::env::var("AWS_SECRET_ACCESS_KEY").ok());
        self
    }
}

/// Cheap to share: writers hold the store until they commit.
pub struct S3Blobs(Arc<Inner>);

pub struct Inner {
    client: Arc<AmazonS3>,
    url: S3Url,
    spool: PathBuf,
    rt: Option<tokio::runtime::Runtime>,
}

impl std::ops::Deref for S3Blobs {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl fmt::Debug for S3Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S3Blobs({:?})", self.url)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last archive handle may go on an async thread at shutdown,
        // where a blocking runtime drop would panic.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn classify(e: object_store::Error, key: &str) -> BlobError {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => BlobError::NotFound(key.to_string()),
        E::PermissionDenied { source, .. } | E::Unauthenticated { source, .. } => BlobError::Denied(source.to_string()),
        other => BlobError::Unavailable(other.to_string()),
    }
}

impl S3Blobs {
    pub fn open(url: &S3Url, spool: &Path) -> Result<S3Blobs, BlobError> {
        fs::create_dir_all(spool).map_err(|e| BlobError::from_io(e, ""))?;
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&url.bucket)
            .with_region(&url.region)
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(REQUEST_TIMEOUT)
                    .with_connect_timeout(CONNECT_TIMEOUT)
                    .with_allow_http(url.endpoint.as_deref().is_some_and(|e| e.starts_with("http://"))),
            )
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: RETRIES,
                retry_timeout: RETRY_BUDGET,
            });
        if let Some(e) = &url.endpoint {
            // Path-style addressing: what self-hosted stores serve.
            b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
        }
        if let (Some(k), Some(s)) = (&url.access_key_id, &url.secret_access_key) {
            b = b.with_access_key_id(k).with_secret_access_key(s);
        }
        let client = b.build().map_err(|e| BlobError::Other(format!("s3 client: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-io")
            .enable_all()
            .build()
            .map_err(|e| BlobError::Other(format!("s3 runtime: {e}")))?;
        Ok(S3Blobs(Arc::new(Inner {
            client: Arc::new(client),
            url: url.clone(),
            spool: spool.to_path_buf(),
            rt: Some(rt),
        })))
    }
}

impl Inner {
    fn obj(&self, key: &str) -> Result<ObjPath, BlobError> {
        check_key(key)?;
        Ok(if self.url.prefix.is_empty() {
            ObjPath::from(key)
        } else {
            ObjPath::from(format!("{}/{key}", self.url.prefix))
        })
    }

    fn block_on<T>(&self, f: impl Future<Output = T>) -> T {
        match &self.rt {
            Some(rt) => rt.block_on(f),
            None => unreachable!("runtime present until drop"),
        }
    }

    fn head(&self, key: &str) -> Result<Option<u64>, BlobError> {
        let loc = self.obj(key)?;
        match self.block_on(self.client.head(&loc)) {
            Ok(m) => Ok(Some(m.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(classify(e, key)),
        }
    }

    /// Upload the local file at `local` to `key`: one PUT when small, a
    /// streaming multipart upload otherwise. False when `key` already
    /// exists (same content: nothing uploaded).
    fn upload(&self, key: &str, local: &Path) -> Result<bool, BlobError> {
        let loc = self.obj(key)?;
        if self.head(key)?.is_some() {
            return Ok(false);
        }
        let mut f = File::open(local).map_err(|e| BlobError::from_io(e, key))?;
        let len = f.metadata().map_err(|e| BlobError::from_io(e, key))?.len();
        let client = self.client.clone();
        if len <= PART as u64 {
            let mut buf = Vec::with_capacity(len as usize);
            f.read_to_end(&mut buf).map_err(|e| BlobError::from_io(e, key))?;
            self.block_on(client.put(&loc, PutPayload::from(buf)))
                .map_err(|e| classify(e, key))?;
            return Ok(true);
        }
        self.block_on(async move {
            let upload = client.put_multipart(&loc).await.map_err(|e| classify(e, key))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
            let mut buf = vec![0u8; 1 << 20];
            let sent: Result<(), BlobError> = async {
                loop {
                    // Blocking read of a local file from this runtime's
                    // thread: short (page cache), and this runtime only
                    // serves the blob store.
                    let n = f.read(&mut buf).map_err(|e| BlobError::from_io(e, key))?;
                    if n == 0 {
                        return Ok(());
                    }
                    w.wait_for_capacity(PARTS_IN_FLIGHT)
                        .await
                        .map_err(|e| classify(e, key))?;
                    w.write(&buf[..n]);
                }
            }
            .await;
            match sent {
                Ok(()) => w.finish().await.map(|_| true).map_err(|e| classify(e, key)),
                Err(e) => {
                    let _ = w.abort().await;
                    Err(e)
                }
            }
        })
    }
}

impl Blobs for S3Blobs {
    fn create(&self) -> Result<Box<dyn BlobWriter>, BlobError> {
        Ok(Box::new(S3Writer {
            store: self.0.clone(),
            spool: Spooled::create(&self.spool)?,
        }))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, BlobError> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let loc = self.obj(key)?;
        self.block_on(self.client.get_range(&loc, range))
            .map(|b| b.to_vec())
            .map_err(|e| classify(e, key))
    }

    fn head(&self, key: &str) -> Result<Option<u64>, BlobError> {
        self.0.head(key)
    }

    fn delete(&self, key: &str) -> Result<(), BlobError> {
        let loc = self.obj(key)?;
        match self.block_on(self.client.delete(&loc)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(classify(e, key)),
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let loc = self.obj(key)?;
        self.block_on(self.client.put(&loc, PutPayload::from(bytes.to_vec())))
            .map(|_| ())
            .map_err(|e| classify(e, key))
    }

    fn put_file(&self, key: &str, local: &Path) -> Result<bool, BlobError> {
        if !local.exists() {
            return Err(BlobError::NotFound(local.display().to_string()));
        }
        let created = self.upload(key, local)?;
        let _ = fs::remove_file(local);
        Ok(created)
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, u64)>, BlobError> {
        // Listing is by path segments: list the segment-aligned part of the
        // prefix and filter the rest here.
        let dir = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let base = match (self.url.prefix.is_empty(), dir.is_empty()) {
            (true, true) => None,
            (true, false) => Some(ObjPath::from(dir)),
            (false, true) => Some(ObjPath::from(self.url.prefix.as_str())),
            (false, false) => Some(ObjPath::from(format!("{}/{dir}", self.url.prefix))),
        };
        let strip = if self.url.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.url.prefix)
        };
        let metas: Vec<object_store::ObjectMeta> = self
            .block_on(self.client.list(base.as_ref()).try_collect())
            .map_err(|e| classify(e, prefix))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let k = m.location.as_ref().strip_prefix(strip.as_str())?.to_string();
                k.starts_with(prefix).then_some((k, m.size))
            })
            .collect())
    }

    fn clean_spool(&self) -> io::Result<usize> {
        Spooled::clean(&self.spool)
    }

    fn describe(&self) -> String {
        format!("{:?}", self.url)
    }
}

/// An object spooled locally, uploaded on commit. The spool file is
/// removed whatever happens: on failure the sender still holds the data and
/// will send it again.
struct S3Writer {
    store: Arc<Inner>,
    spool: Spooled,
}

impl BlobWriter for S3Writer {
    fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.spool.write(chunk)
    }

    fn spool_path(&self) -> &Path {
        self.spool.path()
    }

    fn commit(mut self: Box<Self>, key: &str) -> Result<bool, BlobError> {
        drop(self.spool.close());
        self.store.upload(key, self.spool.path())
    }
}
