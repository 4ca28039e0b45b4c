//! One `Config`, read from a TOML file, then environment, then flags, and
//! validated once at startup so the services never see an inconsistent value.
//! `medrelay.example.toml` documents every key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::dicom::ae::valid_ae;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// "hub" (default) or "edge".
    pub role: String,
    pub data_dir: PathBuf,
    pub cert_dir: PathBuf,
    /// Where the index lives (`[index] url`, `MEDRELAY_INDEX_URL`).
    pub index: IndexConfig,
    pub http: HttpConfig,
    /// The Prometheus listener (not on the API listener).
    pub metrics: MetricsConfig,
    pub dicom: DicomConfig,
    pub stability: StabilityConfig,
    pub render: RenderConfig,
    pub sfu: SfuConfig,
    /// Clinics and the AE titles their devices call from.
    #[serde(rename = "clinic")]
    pub clinics: Vec<ClinicConfig>,
    /// Expert hospitals and the clinics each one reads for.
    #[serde(rename = "hospital")]
    pub hospitals: Vec<HospitalConfig>,
    pub auth: AuthConfig,
    pub reading: ReadingConfig,
    /// Hub side of the WAN relay link (edges connect here).
    pub relay: RelayConfig,
    /// Edge side: where the hub is and who this edge is. Required when
    /// `role = "edge"`.
    pub edge: Option<EdgeConfig>,
    /// Seconds to let in-flight associations and requests finish on shutdown.
    pub shutdown_grace_secs: u64,
    pub log: String,
    /// Where instances and previews are stored (the blob boundary).
    pub storage: StorageConfig,
    /// The DICOMweb routes (`/dicom-web`).
    pub dicomweb: DicomWebConfig,
}

/// `[dicomweb]`: which browser origins may call `/dicom-web` (a viewer such
/// as OHIF served from another host). Empty (the default): no CORS headers
/// at all, so only same-origin pages and non-browser clients use it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DicomWebConfig {
    /// Exact origins, `https://viewer.example` or `http://host:port`
    /// (scheme, host, optional port; no path, no wildcard).
    pub cors_origins: Vec<String>,
    /// STOW-RS: the largest instance (one multipart part) accepted, in MB;
    /// a larger part ends the request with 413. Parts are streamed to
    /// disk, so this bounds disk use per part, not memory.
    pub max_stow_mb: u64,
}

impl Default for DicomWebConfig {
    fn default() -> Self {
        DicomWebConfig {
            cors_origins: Vec::new(),
            max_stow_mb: 2048,
        }
    }
}

/// Whether `o` is an origin as browsers send it: `scheme://host[:port]`,
/// nothing after, printable ASCII.
pub fn valid_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    let host = rest.rsplit_once(':').map_or(rest, |(h, port)| {
        if !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            ""
        }
    });
    matches!(scheme, "http" | "https")
        && !host.is_empty()
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
}

/// `[storage]`: `url` = `file://DIR` (default `file://<data_dir>/instances`)
/// or `s3://bucket/prefix?endpoint=http://host:port&region=R`; S3
/// credentials here or in `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
/// Debug never shows the secret.
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub url: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Parsed by `validate`.
    #[serde(skip)]
    parsed: Option<crate::store::blob::StorageUrl>,
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.parsed {
            Some(u) => write!(f, "StorageConfig({u:?})"),
            None => write!(
                f,
                "StorageConfig({:?})",
                self.url.as_deref().map(|u| u.split('?').next())
            ),
        }
    }
}

/// The index database: `sqlite://PATH` or `postgres://USER:PASS@HOST:PORT/DB`
/// (PostgreSQL 15 or newer). Unset: `sqlite://<data_dir>/index.db`, the
/// embedded default. Debug output hides the password (configs are logged).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    pub url: Option<String>,
}

impl std::fmt::Debug for IndexConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexConfig")
            .field("url", &self.url.as_deref().map(redact_url))
            .finish()
    }
}

/// `url` with the password of its `user:password@` part replaced by `***`,
/// for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..auth_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split_once(':').map_or(&rest[..at], |(u, _)| u);
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_string(),
    }
}

/// Checks an index URL once, at load: a supported scheme, and for
/// PostgreSQL a URL the driver accepts, naming a database. Errors never
/// repeat the password.
pub fn check_index_url(url: &str) -> Result<(), String> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err("index.url sqlite:// needs a path".into());
        }
        return Ok(());
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        use std::str::FromStr;
        let o = sqlx::postgres::PgConnectOptions::from_str(url)
            .map_err(|_| format!("index.url {}: not a valid PostgreSQL URL", redact_url(url)))?;
        if o.get_database().is_none_or(str::is_empty) {
            return Err(format!("index.url {}: no database name", redact_url(url)));
        }
        return Ok(());
    }
    Err(format!(
        "index.url {}: expected sqlite://PATH or postgres://USER:PASS@HOST:PORT/DB",
        redact_url(url)
    ))
}

#[cfg(test)]
mod index_url_tests {
    use super::*;

    #[test]
    fn index_urls_are_checked_and_passwords_never_shown() {
        assert!(check_index_url("sqlite:///var/lib/medrelay/index.db").is_ok());
        assert!(check_index_url("postgres://mr:s3cret@db.local:5432/medrelay").is_ok());
        let e = check_index_url("postgres://mr:s3cret@db.local:5432").expect_err("no db");
        assert!(e.contains("no database") && !e.contains("s3cret"), "{e}");
        let e = check_index_url("mysql://mr:s3cret@db/x").expect_err("scheme");
        assert!(!e.contains("s3cret"), "{e}");
        assert_eq!(
            redact_url("postgres://mr:s3cret@db.local:5432/medrelay"),
            "postgres://mr:***@db.local:5432/medrelay"
        );
        let cfg = IndexConfig {
            url: Some("postgres://mr:s3cret@h/db".into()),
        };
        assert!(!format!("{cfg:?}").contains("s3cret"));
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// Test builds only: lets the consultation page honour its test hooks
    /// (`#via=` rewriting media candidates, `#autojoin=1` starting camera
    /// and microphone without a click). Off: a link cannot do either.
    pub test_hooks: bool,
    /// A connection whose client takes no bytes for this long is closed
    /// (a download nobody reads, a stuck WebSocket).
    pub write_timeout_secs: u64,
    /// Study zips streaming at once, all accounts together (beyond: 503).
    pub max_zip_downloads: usize,
    /// Study zips streaming at once per account (beyond: 429).
    pub max_zip_downloads_per_account: usize,
}

/// `/metrics` and the detailed health check, on their own plain-HTTP
/// listener: loopback by default, as Prometheus exporters do, so that
/// figures about the alliance (edge names, queue depths, free disk) are not
/// on the hospital-facing API port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    /// When set, scrapers must send `Authorization: Bearer <token>`.
    /// Required when `listen` is not a loopback address.
    pub token: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            token: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DicomConfig {
    pub ae_title: String,
    pub listen: SocketAddr,
    /// Optional DICOM TLS port using the same certificate as HTTPS.
    pub tls_listen: Option<SocketAddr>,
    /// Reject associations whose called AE title is not ours.
    pub check_called_ae: bool,
    pub max_associations: usize,
    /// Max PDU length we accept (announced in A-ASSOCIATE-AC).
    pub max_pdu: u32,
    /// Seconds without a PDU before the association is aborted.
    pub idle_timeout_secs: u64,
    pub recv_buffer_bytes: usize,
    /// Refuse new instances (0xA700) when free disk space drops below this.
    pub min_free_bytes: u64,
    /// Extra (e.g. private) SOP classes to accept for storage.
    pub extra_sop_classes: Vec<String>,
    // -- Overload limits (issue 16): what one peer may hold, and how long.
    /// Concurrent associations of one calling AE title (default: a quarter
    /// of `max_associations`, at least 1), so one sender always leaves
    /// slots for the others; more are rejected (transient, local limit
    /// exceeded). See [`DicomConfig::per_ae_limit`].
    pub max_associations_per_ae: Option<usize>,
    /// Seconds from TCP accept (and TLS handshake) to a complete
    /// A-ASSOCIATE-RQ; a peer that sends nothing or trickles it is cut.
    pub association_request_timeout_secs: u64,
    /// Once a message (command and dataset) has been arriving for
    /// `idle_timeout_secs`, it must have averaged at least this many bytes
    /// per second since, or the association is aborted; a single PDU must
    /// arrive within `idle_timeout_secs`. 0 disables the rate check.
    pub min_receive_bytes_per_sec: u64,
    // -- Query/Retrieve (issue 19).
    /// Most records one C-FIND returns; a query matching more ends with
    /// 0xA700 after this many, asking the requester to narrow it (a PACS
    /// asking for "every study" must not pin an association and the index
    /// for minutes).
    pub max_find_results: usize,
    /// Where C-MOVE may send: a requester names a destination AE title,
    /// never an address, so only these hosts can receive.
    #[serde(rename = "destination")]
    pub destinations: Vec<DestinationConfig>,
}

/// A C-MOVE destination (`[[dicom.destination]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    pub ae_title: String,
    pub host: String,
    pub port: u16,
}

impl DicomConfig {
    /// The per-calling-AE association cap in force.
    pub fn per_ae_limit(&self) -> usize {
        self.max_associations_per_ae
            .unwrap_or(self.max_associations / 4)
            .clamp(1, self.max_associations.max(1))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SfuConfig {
    /// The one UDP socket all consultation media uses (ICE-lite, demultiplexed
    /// by ICE username fragment, then by address).
    pub udp_listen: SocketAddr,
    /// Addresses written into ICE candidates. Empty: the listen address, or,
    /// when that is unspecified (0.0.0.0), every non-loopback IPv4 address of
    /// this host. Set this to the public/NAT address browsers must reach.
    pub announce: Vec<SocketAddr>,
    pub max_rooms: usize,
    pub max_participants_per_room: usize,
    /// Participants of a teaching broadcast (presenters and viewers).
    pub max_viewers_per_broadcast: usize,
    /// Published tracks per participant (mic + camera + screen = 3).
    pub max_tracks_per_participant: usize,
    /// Default lifetime of a room and its join tokens.
    pub room_ttl_secs: u64,
    /// A participant whose media connection stays silent this long is
    /// removed even if its WebSocket looks alive (laptop lid closed, 4G gone).
    pub peer_timeout_secs: u64,
    /// Retransmission history per forwarded stream, by time; 800 ms RTT links
    /// need several NACK rounds to be repaired.
    pub history_ms: u64,
    /// Minimum spacing of keyframe requests towards a publisher.
    pub pli_interval_ms: u64,
    /// A room nobody is in (or nobody has joined yet) ends after this long;
    /// a request's room is opened again by the next join.
    pub empty_room_grace_secs: u64,
}

impl Default for SfuConfig {
    fn default() -> Self {
        SfuConfig {
            udp_listen: SocketAddr::from(([127, 0, 0, 1], 7882)),
            announce: Vec::new(),
            max_rooms: 200,
            max_participants_per_room: 8,
            max_viewers_per_broadcast: 500,
            max_tracks_per_participant: 3,
            room_ttl_secs: 4 * 3600,
            peer_timeout_secs: 20,
            history_ms: 3000,
            pli_interval_ms: 500,
            empty_room_grace_secs: 600,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RenderConfig {
    /// Render previews as instances arrive.
    pub enabled: bool,
    /// Concurrent render workers (CPU-bound); 0 = one less than the cores, at least 1.
    pub workers: usize,
    /// Bounded queue of instances waiting for previews; when full, they stay
    /// pending in the index and are picked up later.
    pub queue: usize,
}

impl Default for RenderConfig {
    fn default() -> Self {
        RenderConfig {
            enabled: true,
            workers: 0,
            queue: 1024,
        }
    }
}

impl RenderConfig {
    pub fn effective_workers(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        std::thread::available_parallelism()
            .map(|n| n.get().saturating_sub(1))
            .unwrap_or(1)
            .max(1)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StabilityConfig {
    /// A study receiving nothing for this long is complete.
    pub stable_after_secs: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClinicConfig {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub ae_titles: Vec<String>,
    #[serde(default)]
    pub stable_after_secs: Option<f64>,
    /// The clinic's PACS, `AE@HOST:PORT`: signed reports are sent back to it
    /// as DICOM Basic Text SR. None: reports stay on the clinic's page.
    #[serde(default)]
    pub pacs: Option<String>,
    /// Character set of the SRs sent to `pacs`: `"ISO_IR 192"` (UTF-8,
    /// the default) or `"GB18030"` for a PACS that does not read UTF-8.
    #[serde(default)]
    pub pacs_charset: PacsCharset,
}

/// Specific Character Set of the reports sent to a clinic's PACS. Both
/// hold every Unicode character, so nothing a report says is lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum PacsCharset {
    #[default]
    #[serde(rename = "ISO_IR 192")]
    Utf8,
    #[serde(rename = "GB18030")]
    Gb18030,
}

impl PacsCharset {
    /// The defined term written into (0008,0005).
    pub fn term(self) -> &'static str {
        match self {
            PacsCharset::Utf8 => "ISO_IR 192",
            PacsCharset::Gb18030 => "GB18030",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HospitalConfig {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// Clinic ids whose studies this hospital's experts read.
    #[serde(default)]
    pub serves: Vec<String>,
    /// Calling AE titles of this hospital's PACS and workstations: they may
    /// query and retrieve (C-FIND, C-MOVE, C-GET) what the hospital's
    /// experts see, and store nothing.
    #[serde(default)]
    pub ae_titles: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A session unused for this long must log in again.
    pub session_idle_secs: u64,
    /// A session ends this long after login whatever its use.
    pub session_max_secs: u64,
    /// Failed logins allowed per user and per address before a lockout.
    pub login_free_failures: u32,
    /// Threads verifying passwords (argon2id, ~19 MiB each); 0 = half the
    /// cores, at least 1.
    pub login_hash_threads: usize,
    /// Logins that may wait for a hashing thread; beyond, 503 + Retry-After.
    pub login_queue: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            session_idle_secs: 30 * 60,
            session_max_secs: 12 * 3600,
            login_free_failures: 5,
            login_hash_threads: 0,
            login_queue: 16,
        }
    }
}

impl AuthConfig {
    pub fn effective_hash_threads(&self) -> usize {
        if self.login_hash_threads > 0 {
            return self.login_hash_threads;
        }
        std::thread::available_parallelism()
            .map(|n| n.get() / 2)
            .unwrap_or(1)
            .max(1)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadingConfig {
    /// Length of a claim; the viewer renews it while the expert reads.
    pub claim_lease_secs: u64,
    /// Calling AE title used when sending reports back to clinic PACS.
    pub sr_calling_ae: String,
}

impl Default for ReadingConfig {
    fn default() -> Self {
        ReadingConfig {
            claim_lease_secs: 15 * 60,
            sr_calling_ae: "MEDRELAY".into(),
        }
    }
}

/// The hub's relay listener. Edges authenticate with certificates issued
/// by `medrelay relay issue-edge`; the relay CA lives in `cert_dir`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// UDP address of the QUIC relay listener; absent = no relay.
    pub listen: Option<SocketAddr>,
    /// TLS name in the hub's relay certificate (edges check it).
    pub name: String,
    /// Largest bundle the hub accepts, in MiB (bounds memory per stream).
    pub max_bundle_mb: u64,
    /// Concurrent bundles being verified and written, all edges together.
    pub max_inflight_bundles: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            listen: None,
            name: "medrelay-hub".into(),
            max_bundle_mb: 32,
            max_inflight_bundles: 16,
        }
    }
}

/// An edge box's link to its hub.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// The hub's relay address, `HOST:PORT` (UDP).
    pub hub: String,
    /// The name in the hub's relay certificate.
    #[serde(default = "default_hub_name")]
    pub hub_name: String,
    /// This edge's certificate and key, and the hub's relay CA, as written
    /// by `medrelay relay issue-edge` on the hub.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub hub_ca: PathBuf,
    /// Cap on the relay's send rate in Mbit/s (0 = none), so video calls on
    /// the same link keep their share.
    #[serde(default)]
    pub rate_mbit: f64,
    /// Bundles in flight at once (parallel QUIC streams).
    #[serde(default = "default_streams")]
    pub streams: usize,
    /// Target bundle size in MiB.
    #[serde(default = "default_bundle_mb")]
    pub bundle_mb: u64,
    /// zstd level for native (uncompressed) pixel data.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
}

fn default_hub_name() -> String {
    "medrelay-hub".into()
}
fn default_streams() -> usize {
    4
}
fn default_bundle_mb() -> u64 {
    4
}
fn default_zstd_level() -> i32 {
    3
}

impl Default for Config {
    fn default() -> Self {
        Config {
            role: "hub".into(),
            data_dir: PathBuf::from("data"),
            cert_dir: PathBuf::from("certs"),
            index: IndexConfig::default(),
            http: HttpConfig::default(),
            metrics: MetricsConfig::default(),
            dicom: DicomConfig::default(),
            stability: StabilityConfig::default(),
            render: RenderConfig::default(),
            sfu: SfuConfig::default(),
            clinics: Vec::new(),
            hospitals: Vec::new(),
            auth: AuthConfig::default(),
            reading: ReadingConfig::default(),
            relay: RelayConfig::default(),
            edge: None,
            shutdown_grace_secs: 30,
            log: "info".into(),
            storage: StorageConfig::default(),
            dicomweb: DicomWebConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        // Loopback until accounts and roles exist (reading-workflow issue).
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            test_hooks: false,
            write_timeout_secs: 60,
            max_zip_downloads: 8,
            max_zip_downloads_per_account: 2,
        }
    }
}

impl Default for DicomConfig {
    fn default() -> Self {
        DicomConfig {
            ae_title: "MEDRELAY".into(),
            listen: SocketAddr::from(([0, 0, 0, 0], 11112)),
            tls_listen: None,
            check_called_ae: true,
            max_associations: 64,
            max_pdu: 1 << 20,
            idle_timeout_secs: 60,
            recv_buffer_bytes: 4 << 20,
            min_free_bytes: 256 << 20,
            extra_sop_classes: Vec::new(),
            max_associations_per_ae: None,
            association_request_timeout_secs: 30,
            min_receive_bytes_per_sec: 1024,
            max_find_results: 10_000,
            destinations: Vec::new(),
        }
    }
}

impl Default for StabilityConfig {
    fn default() -> Self {
        StabilityConfig {
            stable_after_secs: 60.0,
        }
    }
}

/// Values given on the command line or in `MEDRELAY_*` variables (clap merges
/// the two); they override the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub cert_dir: Option<PathBuf>,
    pub http_listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub dicom_listen: Option<SocketAddr>,
    pub dicom_tls_listen: Option<SocketAddr>,
    pub ae_title: Option<String>,
    pub stable_after_secs: Option<f64>,
    pub min_free_bytes: Option<u64>,
    pub sfu_udp_listen: Option<SocketAddr>,
    pub storage_url: Option<String>,
    /// Wins over `MEDRELAY_INDEX_URL`, which wins over the file.
    pub index_url: Option<String>,
}

impl Config {
    pub fn load(file: Option<&Path>, o: &Overrides) -> Result<Config, ConfigError> {
        let mut cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.to_path_buf(),
                    source: Box::new(source),
                })?
            }
            None => Config::default(),
        };
        if let Some(v) = &o.data_dir {
            cfg.data_dir = v.clone();
        }
        if let Some(v) = &o.cert_dir {
            cfg.cert_dir = v.clone();
        }
        if let Some(v) = o.http_listen {
            cfg.http.listen = v;
        }
        if let Some(v) = o.metrics_listen {
            cfg.metrics.listen = v;
        }
        if let Some(v) = o.dicom_listen {
            cfg.dicom.listen = v;
        }
        if let Some(v) = o.dicom_tls_listen {
            cfg.dicom.tls_listen = Some(v);
        }
        if let Some(v) = &o.ae_title {
            cfg.dicom.ae_title = v.clone();
        }
        if let Some(v) = o.stable_after_secs {
            cfg.stability.stable_after_secs = v;
        }
        if let Some(v) = o.min_free_bytes {
            cfg.dicom.min_free_bytes = v;
        }
        if let Some(v) = o.sfu_udp_listen {
            cfg.sfu.udp_listen = v;
        }
        if let Some(v) = &o.storage_url {
            cfg.storage.url = Some(v.clone());
        }
        if let Some(v) = &o.index_url {
            cfg.index.url = Some(v.clone());
        } else if let Some(v) = std::env::var("MEDRELAY_INDEX_URL").ok().filter(|v| !v.is_empty()) {
            cfg.index.url = Some(v);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&mut self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Some(u) = &self.index.url
            && let Err(m) = check_index_url(u)
        {
            return bad(m);
        }
        if self.role != "hub" && self.role != "edge" {
            return bad(format!("role must be \"hub\" or \"edge\", not {:?}", self.role));
        }
        match (&self.edge, self.role.as_str()) {
            (None, "edge") => return bad("role = \"edge\" needs an [edge] section (hub, cert, key, hub_ca)".into()),
            (Some(_), "hub") => return bad("an [edge] section needs role = \"edge\"".into()),
            (Some(e), _) => {
                if e.hub
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
                {
                    return bad(format!("edge.hub {:?}: expected HOST:PORT", e.hub));
                }
                if !(e.rate_mbit >= 0.0 && e.rate_mbit.is_finite()) {
                    return bad("edge.rate_mbit must be 0 (no cap) or positive".into());
                }
                if e.streams == 0 || e.streams > 64 {
                    return bad("edge.streams must be between 1 and 64".into());
                }
                if e.bundle_mb == 0 || e.bundle_mb > 64 {
                    return bad("edge.bundle_mb must be between 1 and 64".into());
                }
                if !(1..=19).contains(&e.zstd_level) {
                    return bad("edge.zstd_level must be between 1 and 19".into());
                }
            }
            (None, _) => {}
        }
        if let Some(o) = self.dicomweb.cors_origins.iter().find(|o| !valid_origin(o)) {
            return bad(format!(
                "dicomweb.cors_origins: {o:?} is not an origin (scheme://host[:port], no path, no wildcard)"
            ));
        }
        if self.dicomweb.max_stow_mb == 0 {
            return bad("dicomweb.max_stow_mb must be at least 1".into());
        }
        if self.relay.max_bundle_mb == 0 || self.relay.max_inflight_bundles == 0 {
            return bad("relay.max_bundle_mb and relay.max_inflight_bundles must be at least 1".into());
        }
        if !valid_ae(&self.dicom.ae_title) {
            return bad(format!(
                "dicom.ae_title {:?}: 1-16 printable characters, no backslash",
                self.dicom.ae_title
            ));
        }
        if self.dicom.max_pdu < 16384 || self.dicom.max_pdu > (1 << 24) {
            return bad("dicom.max_pdu must be between 16384 and 16777216".into());
        }
        if self.dicom.max_associations == 0 {
            return bad("dicom.max_associations must be at least 1".into());
        }
        if self.dicom.idle_timeout_secs == 0 {
            return bad("dicom.idle_timeout_secs must be at least 1".into());
        }
        if let Some(n) = self.dicom.max_associations_per_ae
            && (n == 0 || n > self.dicom.max_associations)
        {
            return bad("dicom.max_associations_per_ae must be between 1 and max_associations".into());
        }
        if self.dicom.association_request_timeout_secs == 0 {
            return bad("dicom.association_request_timeout_secs must be at least 1".into());
        }
        if self.stability.stable_after_secs.is_nan() || self.stability.stable_after_secs <= 0.0 {
            return bad("stability.stable_after_secs must be positive".into());
        }
        if self.sfu.max_participants_per_room < 2 {
            return bad("sfu.max_participants_per_room must be at least 2".into());
        }
        if self.sfu.max_viewers_per_broadcast < 2 {
            return bad("sfu.max_viewers_per_broadcast must be at least 2".into());
        }
        if self.sfu.max_tracks_per_participant == 0 || self.sfu.max_tracks_per_participant > 8 {
            return bad("sfu.max_tracks_per_participant must be between 1 and 8".into());
        }
        if self.sfu.history_ms < 1000 || self.sfu.history_ms > 10_000 {
            return bad("sfu.history_ms must be between 1000 and 10000".into());
        }
        if self.sfu.peer_timeout_secs < 5 {
            return bad("sfu.peer_timeout_secs must be at least 5".into());
        }
        if self.sfu.room_ttl_secs < 60 {
            return bad("sfu.room_ttl_secs must be at least 60".into());
        }
        if self.sfu.empty_room_grace_secs == 0 || self.sfu.empty_room_grace_secs > self.sfu.room_ttl_secs {
            return bad("sfu.empty_room_grace_secs must be between 1 and sfu.room_ttl_secs".into());
        }
        if self
            .sfu
            .announce
            .iter()
            .any(|a| a.ip().is_unspecified() || a.port() == 0)
        {
            return bad("sfu.announce entries need a concrete IP and port".into());
        }
        let mut seen_ae: HashMap<String, String> = HashMap::new();
        for c in &self.clinics {
            if c.id.trim().is_empty() {
                return bad("every [[clinic]] needs an id".into());
            }
            if c.stable_after_secs.is_some_and(|s| s.is_nan() || s <= 0.0) {
                return bad(format!("clinic {}: stable_after_secs must be positive", c.id));
            }
            for ae in &c.ae_titles {
                if !valid_ae(ae) {
                    return bad(format!("clinic {}: invalid AE title {ae:?}", c.id));
                }
                if let Some(other) = seen_ae.insert(ae.trim().to_string(), c.id.clone()) {
                    return bad(format!(
                        "AE title {ae:?} is listed for both clinic {other} and {}",
                        c.id
                    ));
                }
            }
        }
        for c in &self.clinics {
            if let Some(p) = &c.pacs
                && crate::dicom::scu::Target::parse(p, "").is_err()
            {
                return bad(format!("clinic {}: pacs {p:?}: expected AE@HOST:PORT", c.id));
            }
        }
        for h in &self.hospitals {
            if h.id.trim().is_empty() {
                return bad("every [[hospital]] needs an id".into());
            }
            for c in &h.serves {
                if !self.clinics.iter().any(|k| &k.id == c) {
                    return bad(format!("hospital {}: serves unknown clinic {c:?}", h.id));
                }
            }
            for ae in &h.ae_titles {
                if !valid_ae(ae) {
                    return bad(format!("hospital {}: invalid AE title {ae:?}", h.id));
                }
                if let Some(other) = seen_ae.insert(ae.trim().to_string(), h.id.clone()) {
                    return bad(format!(
                        "AE title {ae:?} is listed for both {other} and hospital {}",
                        h.id
                    ));
                }
            }
        }
        if self.dicom.max_find_results == 0 {
            return bad("dicom.max_find_results must be at least 1".into());
        }
        let mut dests = std::collections::HashSet::new();
        for d in &self.dicom.destinations {
            if !valid_ae(&d.ae_title) || d.host.trim().is_empty() || d.port == 0 {
                return bad(format!(
                    "dicom.destination {:?}: needs a valid ae_title, a host and a port",
                    d.ae_title
                ));
            }
            if !dests.insert(d.ae_title.trim().to_string()) {
                return bad(format!("dicom.destination {:?} is listed twice", d.ae_title));
            }
        }
        if self.http.write_timeout_secs == 0 || self.http.write_timeout_secs > 3600 {
            return bad("http.write_timeout_secs must be between 1 and 3600".into());
        }
        if self.http.max_zip_downloads == 0 || self.http.max_zip_downloads_per_account == 0 {
            return bad("http.max_zip_downloads and max_zip_downloads_per_account must be at least 1".into());
        }
        if self.metrics.enabled && !self.metrics.listen.ip().is_loopback() && self.metrics.token.len() < 16 {
            return bad(format!(
                "metrics.listen {} is not a loopback address: set metrics.token (16+ characters) so scrapers must authenticate",
                self.metrics.listen
            ));
        }
        if self.auth.login_queue > 10_000 || self.auth.login_hash_threads > 256 {
            return bad("auth.login_queue at most 10000, auth.login_hash_threads at most 256".into());
        }
        if self.auth.session_idle_secs < 60 || self.auth.session_max_secs < self.auth.session_idle_secs {
            return bad("auth: session_idle_secs >= 60 and session_max_secs >= session_idle_secs".into());
        }
        if self.reading.claim_lease_secs < 60 || self.reading.claim_lease_secs > 4 * 3600 {
            return bad("reading.claim_lease_secs must be between 60 and 14400".into());
        }
        if !valid_ae(&self.reading.sr_calling_ae) {
            return bad("reading.sr_calling_ae is not a valid AE title".into());
        }
        for uid in &self.dicom.extra_sop_classes {
            if !crate::dicom::meta::is_valid_uid(uid) {
                return bad(format!("dicom.extra_sop_classes: {uid:?} is not a valid UID"));
            }
        }
        self.validate_storage()
    }

    /// Parse `[storage] url` once; S3 needs both credentials (from here or
    /// the standard AWS variables).
    fn validate_storage(&mut self) -> Result<(), ConfigError> {
        use crate::store::blob::StorageUrl;
        let url = match &self.storage.url {
            None => StorageUrl::File(self.data_dir.join("instances")),
            Some(u) => StorageUrl::parse(u).map_err(|e| ConfigError::Invalid(format!("storage.url: {e}")))?,
        };
        let url = match url {
            StorageUrl::S3(s3) => {
                let s3 = s3.with_credentials(
                    self.storage.access_key_id.clone(),
                    self.storage.secret_access_key.clone(),
                );
                if s3.access_key_id.is_none() || s3.secret_access_key.is_none() {
                    return Err(ConfigError::Invalid(
                        "storage.url is s3://: set storage.access_key_id and storage.secret_access_key, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
                    ));
                }
                StorageUrl::S3(s3)
            }
            f => f,
        };
        self.storage.parsed = Some(url);
        Ok(())
    }

    /// The validated storage location (the default when `validate` has not run).
    pub fn storage_url(&self) -> crate::store::blob::StorageUrl {
        self.storage
            .parsed
            .clone()
            .unwrap_or_else(|| crate::store::blob::StorageUrl::File(self.data_dir.join("instances")))
    }

    pub fn index_path(&self) -> PathBuf {
        self.data_dir.join("index.db")
    }

    /// The index's URL: `[index] url`, or the SQLite file in the data dir.
    pub fn index_url(&self) -> String {
        self.index
            .url
            .clone()
            .unwrap_or_else(|| crate::archive::index::sqlite_url(&self.index_path()))
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.dicom.idle_timeout_secs)
    }

    pub fn association_request_timeout(&self) -> Duration {
        Duration::from_secs(self.dicom.association_request_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins_must_be_origins() {
        for ok in [
            "https://ohif.example",
            "http://127.0.0.1:3000",
            "https://viewer.city-01.example:8443",
        ] {
            assert!(valid_origin(ok), "{ok}");
        }
        for bad in [
            "*",
            "ohif.example",
            "https://ohif.example/",
            "https://ohif.example/viewer",
            "ftp://x",
            "https://",
            "https://a b",
            "https://x:99999x",
        ] {
            assert!(!valid_origin(bad), "{bad}");
        }
        let mut cfg = Config::default();
        cfg.dicomweb.cors_origins = vec!["https://ohif.example/".into()];
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("dicomweb.cors_origins"), "{e}");
    }

    #[test]
    fn example_file_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("medrelay.example.toml");
        let cfg = Config::load(Some(&path), &Overrides::default()).expect("example config");
        assert_eq!(cfg.dicom.ae_title, "MEDRELAY");
        assert!(!cfg.clinics.is_empty());
        assert_eq!(cfg.dicomweb.max_stow_mb, 2048);
    }

    #[test]
    fn overrides_win_and_bad_values_are_named() {
        let o = Overrides {
            ae_title: Some("HUB1".into()),
            stable_after_secs: Some(2.0),
            ..Default::default()
        };
        let cfg = Config::load(None, &o).expect("cfg");
        assert_eq!(
            (cfg.dicom.ae_title.as_str(), cfg.stability.stable_after_secs),
            ("HUB1", 2.0)
        );
        let o = Overrides {
            ae_title: Some("WAY_TOO_LONG_AE_TITLE".into()),
            ..Default::default()
        };
        let err = Config::load(None, &o).expect_err("invalid");
        assert!(err.to_string().contains("ae_title"));
        let mut cfg = Config {
            clinics: vec![
                ClinicConfig {
                    id: "a".into(),
                    name: String::new(),
                    ae_titles: vec!["CT1".into()],
                    stable_after_secs: None,
                    pacs: None,
                    pacs_charset: Default::default(),
                },
                ClinicConfig {
                    id: "b".into(),
                    name: String::new(),
                    ae_titles: vec!["CT1".into()],
                    stable_after_secs: None,
                    pacs: None,
                    pacs_charset: Default::default(),
                },
            ],
            ..Config::default()
        };
        assert!(
            cfg.validate()
                .expect_err("dup")
                .to_string()
                .contains("both clinic a and b")
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = toml::from_str::<Config>("[dicom]\nae_tittle = \"X\"\n").expect_err("typo");
        assert!(err.to_string().contains("ae_tittle"));
    }
}
