//! One S3 client against a real S3 server (s3s-fs, Garage, …): the workload
//! issue 18 cares about, measured the same way for every candidate crate.
//!
//! 1. a request signed with a wrong secret must be refused (SigV4 checked);
//! 2. upload a `SIZE_MIB` object as a streaming multipart upload in
//!    `PART_MIB` parts, at most two parts in flight, the bytes generated as
//!    they go (never the whole object in memory);
//! 3. ten ranged 1 MiB reads at spread offsets, each compared with the
//!    generator (so a client that ignores the range fails, not just runs);
//! 4. print one `RESULT` line: seconds, MiB/s, peak RSS (VmHWM).
//!
//! Built with exactly one of the features `object_store`, `aws`, `rust_s3`
//! (run.sh builds each into its own target dir to time the build).
//!
//! Usage: s3-clients-bench ENDPOINT BUCKET ACCESS_KEY SECRET [SIZE_MIB] [PART_MIB]

use std::time::Instant;

const MIB: usize = 1 << 20;
const RANGES: usize = 10;
const RANGE_LEN: usize = MIB;
const IN_FLIGHT: usize = 2;

/// Deterministic content: 8-byte words of a hash of their offset, so any
/// 8-aligned range can be checked without keeping the object.
fn fill(buf: &mut [u8], offset: u64) {
    assert!(offset % 8 == 0 && buf.len() % 8 == 0);
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        let mut x = (offset / 8 + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 29;
        w.copy_from_slice(&x.to_le_bytes());
    }
}

fn part(offset: u64, len: usize) -> bytes::Bytes {
    let mut v = vec![0u8; len];
    fill(&mut v, offset);
    v.into()
}

fn range_offsets(size: u64) -> Vec<u64> {
    (0..RANGES as u64)
        .map(|k| ((size - RANGE_LEN as u64) / (RANGES as u64 - 1) * k) & !7)
        .collect()
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[cfg(feature = "object_store")]
mod client {
    use super::*;
    use object_store::aws::{AmazonS3, AmazonS3Builder};
    use object_store::path::Path;
    use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

    pub const NAME: &str = "object_store";
    pub struct C(AmazonS3);

    pub fn new(endpoint: &str, bucket: &str, ak: &str, sk: &str) -> Res<C> {
        Ok(C(AmazonS3Builder::new()
            .with_endpoint(endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(bucket)
            .with_access_key_id(ak)
            .with_secret_access_key(sk)
            .build()?))
    }
    impl C {
        pub async fn put_small(&self, key: &str, body: bytes::Bytes) -> Res<()> {
            self.0.put(&Path::from(key), body.into()).await?;
            Ok(())
        }
        pub async fn put_multipart(&self, key: &str, size: u64, part_len: usize) -> Res<()> {
            let up = self.0.put_multipart(&Path::from(key)).await?;
            let mut w = WriteMultipart::new_with_chunk_size(up, part_len);
            let mut off = 0u64;
            while off < size {
                let n = part_len.min((size - off) as usize);
                w.wait_for_capacity(IN_FLIGHT).await?;
                w.put(part(off, n));
                off += n as u64;
            }
            w.finish().await?;
            Ok(())
        }
        pub async fn get_range(&self, key: &str, start: u64, len: usize) -> Res<bytes::Bytes> {
            Ok(self.0.get_range(&Path::from(key), start..start + len as u64).await?)
        }
        pub async fn delete(&self, key: &str) -> Res<()> {
            self.0.delete(&Path::from(key)).await?;
            Ok(())
        }
    }
}

#[cfg(feature = "aws")]
mod client {
    use super::*;
    use aws_sdk_s3::config::{Credentials, Region};
    use aws_sdk_s3::primitives::ByteStream;
    use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
    use futures::StreamExt;

    pub const NAME: &str = "aws-sdk-s3";
    pub struct C(aws_sdk_s3::Client, String);

    pub fn new(endpoint: &str, bucket: &str, ak: &str, sk: &str) -> Res<C> {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version_latest()
            .endpoint_url(endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(ak, sk, None, None, "bench"))
            .force_path_style(true)
            .build();
        Ok(C(aws_sdk_s3::Client::from_conf(conf), bucket.to_string()))
    }
    impl C {
        pub async fn put_small(&self, key: &str, body: bytes::Bytes) -> Res<()> {
            self.0
                .put_object()
                .bucket(&self.1)
                .key(key)
                .body(ByteStream::from(body))
                .send()
                .await?;
            Ok(())
        }
        pub async fn put_multipart(&self, key: &str, size: u64, part_len: usize) -> Res<()> {
            let up = self.0.create_multipart_upload().bucket(&self.1).key(key).send().await?;
            let id = up.upload_id().ok_or("no upload id")?.to_string();
            let n_parts = size.div_ceil(part_len as u64);
            let parts: Vec<CompletedPart> = futures::stream::iter(0..n_parts)
                .map(|i| {
                    let off = i * part_len as u64;
                    let n = part_len.min((size - off) as usize);
                    let req = self
                        .0
                        .upload_part()
                        .bucket(&self.1)
                        .key(key)
                        .upload_id(&id)
                        .part_number(i as i32 + 1);
                    async move {
                        let r = req.body(ByteStream::from(part(off, n))).send().await?;
                        Res::Ok(
                            CompletedPart::builder()
                                .part_number(i as i32 + 1)
                                .set_e_tag(r.e_tag().map(str::to_string))
                                .build(),
                        )
                    }
                })
                .buffered(IN_FLIGHT)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Res<_>>()?;
            self.0
                .complete_multipart_upload()
                .bucket(&self.1)
                .key(key)
                .upload_id(&id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await?;
            Ok(())
        }
        pub async fn get_range(&self, key: &str, start: u64, len: usize) -> Res<bytes::Bytes> {
            let r = self
                .0
                .get_object()
                .bucket(&self.1)
                .key(key)
                .range(format!("bytes={}-{}", start, start + len as u64 - 1))
                .send()
                .await?;
            Ok(r.body.collect().await?.into_bytes())
        }
        pub async fn delete(&self, key: &str) -> Res<()> {
            self.0.delete_object().bucket(&self.1).key(key).send().await?;
            Ok(())
        }
    }
}

#[cfg(feature = "rust_s3")]
mod client {
    use super::*;
    use s3::creds::Credentials;
    use s3::{Bucket, Region};
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub const NAME: &str = "rust-s3";
    pub struct C(Box<Bucket>);

    pub fn new(endpoint: &str, bucket: &str, ak: &str, sk: &str) -> Res<C> {
        let region = Region::Custom { region: "us-east-1".into(), endpoint: endpoint.into() };
        let creds = Credentials::new(Some(ak), Some(sk), None, None, None)?;
        Ok(C(Bucket::new(bucket, region, creds)?.with_path_style()))
    }

    /// The object as an `AsyncRead`, generated on the fly: rust-s3's
    /// streaming upload reads from one.
    struct Gen {
        off: u64,
        size: u64,
    }
    impl tokio::io::AsyncRead for Gen {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = (buf.remaining().min(64 * 1024) as u64).min(self.size - self.off) as usize & !7;
            let mut tmp = vec![0u8; n];
            fill(&mut tmp, self.off);
            buf.put_slice(&tmp);
            self.off += n as u64;
            Poll::Ready(Ok(()))
        }
    }

    impl C {
        pub async fn put_small(&self, key: &str, body: bytes::Bytes) -> Res<()> {
            let r = self.0.put_object(key, &body).await?;
            if r.status_code() / 100 != 2 {
                return Err(format!("status {}", r.status_code()).into());
            }
            Ok(())
        }
        pub async fn put_multipart(&self, key: &str, size: u64, _part_len: usize) -> Res<()> {
            // rust-s3 picks its own part size (8 MiB) and concurrency.
            let mut g = Gen { off: 0, size };
            self.0.put_object_stream(&mut g, key).await?;
            Ok(())
        }
        pub async fn get_range(&self, key: &str, start: u64, len: usize) -> Res<bytes::Bytes> {
            let r = self.0.get_object_range(key, start, Some(start + len as u64 - 1)).await?;
            Ok(r.bytes().clone())
        }
        pub async fn delete(&self, key: &str) -> Res<()> {
            self.0.delete_object(key).await?;
            Ok(())
        }
    }
}

/// No client: the baseline build (tokio, bytes, futures) that run.sh
/// subtracts to get each client's added compile time.
#[cfg(not(any(feature = "object_store", feature = "aws", feature = "rust_s3")))]
mod client {
    use super::*;
    pub const NAME: &str = "none";
    pub struct C;
    pub fn new(_: &str, _: &str, _: &str, _: &str) -> Res<C> {
        Err("built without a client feature (baseline build only)".into())
    }
    impl C {
        pub async fn put_small(&self, _: &str, _: bytes::Bytes) -> Res<()> {
            Ok(())
        }
        pub async fn put_multipart(&self, _: &str, _: u64, _: usize) -> Res<()> {
            Ok(())
        }
        pub async fn get_range(&self, _: &str, _: u64, _: usize) -> Res<bytes::Bytes> {
            Ok(part(0, 8))
        }
        pub async fn delete(&self, _: &str) -> Res<()> {
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> Res<()> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        return Err("usage: s3-clients-bench ENDPOINT BUCKET ACCESS_KEY SECRET [SIZE_MIB] [PART_MIB]".into());
    }
    let (ep, bucket, ak, sk) = (&a[1], &a[2], &a[3], &a[4]);
    let size = a.get(5).map_or(Ok(200), |s| s.parse::<u64>())? * MIB as u64;
    let part_len = a.get(6).map_or(Ok(8), |s| s.parse::<usize>())? * MIB;

    // SigV4: the same request with a wrong secret must be refused.
    let bad = client::new(ep, bucket, ak, "not-the-secret")?;
    let sig_checked = bad.put_small("bench/wrong-secret", part(0, 1024)).await.is_err();
    let c = client::new(ep, bucket, ak, sk)?;
    c.put_small("bench/small", part(0, 1024)).await?;

    let key = format!("bench/{}-{}", client::NAME, std::process::id());
    let t0 = Instant::now();
    c.put_multipart(&key, size, part_len).await?;
    let up_s = t0.elapsed().as_secs_f64();
    let hwm_up = vm_hwm_kib();

    let t1 = Instant::now();
    let mut want = vec![0u8; RANGE_LEN];
    for off in range_offsets(size) {
        let got = c.get_range(&key, off, RANGE_LEN).await?;
        fill(&mut want, off);
        if got[..] != want[..] {
            return Err(format!("range at {off}: {} bytes, content differs", got.len()).into());
        }
    }
    let rd_ms = t1.elapsed().as_secs_f64() * 1000.0;
    c.delete(&key).await?;
    c.delete("bench/small").await?;
    println!(
        "RESULT client={} sigv4_checked={} size_mib={} part_mib={} upload_s={:.2} upload_mib_s={:.0} ranged_10x1mib_ms={:.0} peak_rss_after_upload_mib={:.0} peak_rss_mib={:.0}",
        client::NAME,
        sig_checked,
        size / MIB as u64,
        part_len / MIB,
        up_s,
        size as f64 / MIB as f64 / up_s,
        rd_ms,
        hwm_up as f64 / 1024.0,
        vm_hwm_kib() as f64 / 1024.0
    );
    Ok(())
}
