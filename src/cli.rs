//! Command-line interface: `serve`, `user`, `api-token`, `relay`, `echo`, `store`,
//! `render`, `loadtest`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::error;

use crate::config::{Config, Overrides};
use crate::dicom::scu::{self, FileResult, Target};

#[derive(Parser, Debug)]
#[command(
    name = "medrelay",
    version,
    about = "DICOM + WebRTC gateway for regional hospital alliances"
)]
pub struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// What `find`, `move` and `get` ask for.
#[derive(clap::Args, Debug)]
struct QrArgs {
    /// Query/Retrieve level: PATIENT, STUDY, SERIES or IMAGE.
    #[arg(long, default_value = "STUDY")]
    level: String,
    /// Information model: study (Study Root) or patient (Patient Root).
    #[arg(long, default_value = "study")]
    model: String,
    /// A key: `KEYWORD=VALUE` to match, `KEYWORD` alone to return it
    /// (e.g. -k PatientName=王* -k StudyDate=20260101-20260131 -k StudyInstanceUID).
    #[arg(short = 'k', long = "key")]
    keys: Vec<String>,
    /// Our calling AE title.
    #[arg(long, default_value = "MEDRELAY_SCU")]
    aet: String,
    /// Called AE title when TARGET has no AE@ part.
    #[arg(long, default_value = "ANY-SCP")]
    aec: String,
}

impl QrArgs {
    fn resolve(
        &self,
        target: &str,
    ) -> Result<
        (
            Target,
            crate::dicom::qr::Model,
            String,
            Vec<crate::dicom::qrscu::QueryKey>,
        ),
        String,
    > {
        let t = Target::parse(target, &self.aec).map_err(|e| e.to_string())?;
        let model = match self.model.as_str() {
            "study" => crate::dicom::qr::Model::StudyRoot,
            "patient" => crate::dicom::qr::Model::PatientRoot,
            m => return Err(format!("unknown model {m:?} (study or patient)")),
        };
        let level = self.level.to_uppercase();
        if crate::dicom::qr::Level::parse(&level, model).is_none() {
            return Err(format!("level {level:?} is not one of the {} model", self.model));
        }
        let keys = self
            .keys
            .iter()
            .map(|k| crate::dicom::qrscu::QueryKey::parse(k))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((t, model, level, keys))
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the gateway (DICOM SCP + HTTPS API).
    Serve(ServeArgs),
    /// Manage accounts (`serve` creates the first admin itself on an empty
    /// index, with its password in data/initial-admin-password).
    User {
        #[command(subcommand)]
        cmd: UserCmd,
        /// Same configuration as `serve` (for data_dir and clinic checks).
        #[arg(long, short, env = "MEDRELAY_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[arg(long, env = "MEDRELAY_DATA_DIR", global = true)]
        data_dir: Option<PathBuf>,
    },
    /// API tokens for machine clients of the DICOMweb routes (viewers,
    /// PACS): `add NAME --scope clinic:ID|hospital:ID|all` prints the new
    /// token once; only its hash is kept.
    ApiToken {
        #[command(subcommand)]
        cmd: TokenCmd,
        /// Same configuration as `serve` (data_dir, clinics and hospitals).
        #[arg(long, short, env = "MEDRELAY_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[arg(long, env = "MEDRELAY_DATA_DIR", global = true)]
        data_dir: Option<PathBuf>,
    },
    /// The relay link's edge certificates (run on the hub).
    Relay {
        #[command(subcommand)]
        cmd: RelayCmd,
        /// The hub's configuration (cert_dir, data_dir, clinics).
        #[arg(long, short, env = "MEDRELAY_CONFIG", global = true)]
        config: Option<PathBuf>,
        #[arg(long, env = "MEDRELAY_DATA_DIR", global = true)]
        data_dir: Option<PathBuf>,
        #[arg(long, env = "MEDRELAY_CERT_DIR", global = true)]
        cert_dir: Option<PathBuf>,
    },
    /// Bring the configured index (`[index] url`, MEDRELAY_INDEX_URL) to
    /// this build's schema version, print the version, and exit. `serve`
    /// does the same at start; this runs it ahead, e.g. before rolling
    /// nodes of a province onto a new release.
    Migrate {
        #[arg(long, short, env = "MEDRELAY_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "MEDRELAY_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Copy this archive (the configured index and storage) to another
    /// index and storage, e.g. PostgreSQL + S3, while it keeps serving:
    /// objects are copied once and verified by SHA-256 (an interrupted run
    /// resumes), the index is copied as one snapshot. Run it while serving,
    /// stop the gateway, run it again, start on the new URLs.
    MigrateStorage {
        /// Destination index, `postgres://user:pass@host:port/db` or `sqlite:///path`.
        #[arg(long)]
        to_index: String,
        /// Destination storage, `s3://bucket/prefix?endpoint=…&region=…`
        /// (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) or `file:///dir`.
        #[arg(long)]
        to_storage: String,
        #[arg(long, short, env = "MEDRELAY_CONFIG")]
        config: Option<PathBuf>,
        #[arg(long, env = "MEDRELAY_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// C-ECHO a DICOM node: `medrelay echo [AE@]HOST:PORT`.
    Echo {
        target: String,
        /// Our calling AE title.
        #[arg(long, default_value = "MEDRELAY_SCU")]
        aet: String,
        /// Called AE title when TARGET has no AE@ part.
        #[arg(long, default_value = "ANY-SCP")]
        aec: String,
    },
    /// C-STORE files or directories to a DICOM node.
    Store {
        /// Files and/or directories (searched recursively).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Destination, AE@HOST:PORT.
        #[arg(long)]
        to: String,
        /// Associations in parallel.
        #[arg(long, default_value_t = 1)]
        parallel: usize,
        #[arg(long, default_value = "MEDRELAY_SCU")]
        aet: String,
        /// No progress bar (for scripts).
        #[arg(long)]
        quiet: bool,
    },
    /// C-FIND on a DICOM node: `medrelay find AE@HOST:PORT -k PatientName=王* -k StudyInstanceUID`.
    Find {
        target: String,
        #[command(flatten)]
        q: QrArgs,
        /// One JSON object per match instead of text lines.
        #[arg(long)]
        json: bool,
    },
    /// C-MOVE from a DICOM node to a destination AE title it knows.
    Move {
        target: String,
        #[command(flatten)]
        q: QrArgs,
        /// The destination AE title (configured on the node).
        #[arg(long)]
        dest: String,
    },
    /// C-GET from a DICOM node into a directory (`<SOP Instance UID>.dcm`).
    Get {
        target: String,
        #[command(flatten)]
        q: QrArgs,
        /// Where the instances are written (created if missing).
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Load-test a teaching broadcast on a running gateway: a synthetic
    /// simulcast presenter and N receive-only WebRTC viewers.
    Loadtest(Box<crate::loadtest::LoadArgs>),
    /// Render an instance (image or ECG) to JPEG/PNG, as the previews do.
    Render {
        file: PathBuf,
        /// Window centre (modality units); with --ww overrides the dataset's window.
        #[arg(long, allow_hyphen_values = true)]
        wc: Option<f64>,
        /// Window width.
        #[arg(long)]
        ww: Option<f64>,
        /// Frame number, 0-based.
        #[arg(long, default_value_t = 0)]
        frame: u32,
        /// Long side in pixels; 0 = full size.
        #[arg(long, default_value_t = 0)]
        size: u32,
        /// Output file; .png writes PNG, anything else JPEG.
        #[arg(long, short)]
        out: PathBuf,
        /// JPEG quality.
        #[arg(long, default_value_t = 90)]
        quality: u8,
    },
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// Create an account. The password is read from the terminal, or from
    /// standard input with --password-stdin (never from the command line,
    /// where other users of the machine could see it).
    Add {
        username: String,
        /// admin, expert or clinic (a clinic doctor).
        #[arg(long)]
        role: crate::reading::access::Role,
        #[arg(long, default_value = "")]
        name: String,
        /// The clinic id (from [[clinic]]) of a clinic doctor; an id the
        /// configuration does not list is refused.
        #[arg(long)]
        clinic: Option<String>,
        /// The hospital id (from [[hospital]]) of an expert; refused when not
        /// listed (with no [[hospital]] configured, give none: experts then
        /// read for every clinic).
        #[arg(long)]
        hospital: Option<String>,
        #[arg(long)]
        department: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a new password (ends the account's sessions).
    Passwd {
        username: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable an account (ends its sessions) or enable it again.
    Disable {
        username: String,
        #[arg(long)]
        enable: bool,
    },
    /// List accounts.
    List,
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Create a token and print it (the only time it is shown).
    Add {
        /// 1-64 letters, digits, '.', '_' or '-'; audit rows name the
        /// token's requests `token:NAME`.
        name: String,
        /// clinic:ID (a [[clinic]]), hospital:ID (a [[hospital]]: the
        /// clinics it serves) or all.
        #[arg(long)]
        scope: crate::reading::tokens::TokenScope,
    },
    /// Revoke a token (refused from its next request on).
    Revoke { name: String },
    /// List tokens (names, scopes, use; never the tokens).
    List,
}

#[derive(Subcommand, Debug)]
enum RelayCmd {
    /// Issue a certificate for an edge box and register it: writes
    /// edge-cert.pem, edge-key.pem (keep secret) and hub-ca.pem into --out,
    /// to be copied to the edge. Issuing again replaces the old certificate.
    IssueEdge {
        /// Edge name: lowercase letters, digits, '-'.
        #[arg(long)]
        name: String,
        /// The clinic (from [[clinic]]) whose studies come through this edge.
        #[arg(long)]
        clinic: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke an edge's certificate (effective immediately, also on a live link).
    Revoke { name: String },
    /// List registered edges.
    List,
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// TOML configuration file (see medrelay.example.toml).
    #[arg(long, short, env = "MEDRELAY_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long, env = "MEDRELAY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[arg(long, env = "MEDRELAY_CERT_DIR")]
    cert_dir: Option<PathBuf>,
    #[arg(long, env = "MEDRELAY_HTTP_LISTEN")]
    http_listen: Option<std::net::SocketAddr>,
    /// Plain-HTTP listener for /metrics (loopback by default).
    #[arg(long, env = "MEDRELAY_METRICS_LISTEN")]
    metrics_listen: Option<std::net::SocketAddr>,
    #[arg(long, env = "MEDRELAY_DICOM_LISTEN")]
    dicom_listen: Option<std::net::SocketAddr>,
    #[arg(long, env = "MEDRELAY_DICOM_TLS_LISTEN")]
    dicom_tls_listen: Option<std::net::SocketAddr>,
    #[arg(long, env = "MEDRELAY_AE_TITLE")]
    ae_title: Option<String>,
    #[arg(long, env = "MEDRELAY_STABLE_AFTER_SECS")]
    stable_after_secs: Option<f64>,
    #[arg(long, env = "MEDRELAY_MIN_FREE_BYTES")]
    min_free_bytes: Option<u64>,
    /// UDP address of the consultation media port.
    #[arg(long, env = "MEDRELAY_SFU_UDP_LISTEN")]
    sfu_udp_listen: Option<std::net::SocketAddr>,
    /// Instance storage: file://DIR or s3://BUCKET/PREFIX?endpoint=…&region=…
    #[arg(long, env = "MEDRELAY_STORAGE_URL")]
    storage_url: Option<String>,
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(a) => serve(a).await,
            Cmd::User { cmd, config, data_dir } => {
                init_tracing("warn");
                user(cmd, config, data_dir).await
            }
            Cmd::ApiToken { cmd, config, data_dir } => {
                init_tracing("warn");
                api_token(cmd, config, data_dir).await
            }
            Cmd::Relay {
                cmd,
                config,
                data_dir,
                cert_dir,
            } => {
                init_tracing("warn");
                relay(cmd, config, data_dir, cert_dir).await
            }
            Cmd::Migrate { config, data_dir } => {
                init_tracing("warn");
                migrate(config, data_dir).await
            }
            Cmd::MigrateStorage {
                to_index,
                to_storage,
                config,
                data_dir,
            } => {
                init_tracing("warn");
                migrate_storage(config, data_dir, &to_index, &to_storage).await
            }
            Cmd::Loadtest(a) => {
                init_tracing("warn");
                match crate::loadtest::run(*a).await {
                    Ok(r) => {
                        print!("{}", crate::loadtest::summary(&r));
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                }
            }
            Cmd::Echo { target, aet, aec } => {
                init_tracing("warn");
                let t = match Target::parse(&target, &aec) {
                    Ok(t) => t,
                    Err(e) => return fail(e),
                };
                match scu::echo(&t, &aet).await {
                    Ok(rtt) => {
                        println!(
                            "C-ECHO {}@{}: success in {:.1} ms",
                            t.called_ae,
                            t.addr,
                            rtt.as_secs_f64() * 1000.0
                        );
                        ExitCode::SUCCESS
                    }
                    Err(e) => fail(e),
                }
            }
            Cmd::Find { target, q, json } => {
                init_tracing("warn");
                qr_find(&target, &q, json).await
            }
            Cmd::Move { target, q, dest } => {
                init_tracing("warn");
                qr_move(&target, &q, &dest).await
            }
            Cmd::Get { target, q, out } => {
                init_tracing("warn");
                qr_get(&target, &q, &out).await
            }
            Cmd::Store {
                paths,
                to,
                parallel,
                aet,
                quiet,
            } => {
                init_tracing("warn");
                store(paths, &to, parallel, &aet, quiet).await
            }
            Cmd::Render {
                file,
                wc,
                ww,
                frame,
                size,
                out,
                quality,
            } => render(file, wc, ww, frame, size, out, quality).await,
        }
    })
}

/// Exit 0 on success, 1 on a warning or partial result, 2 on failure.
fn qr_exit(status: u16) -> ExitCode {
    match status {
        0x0000 => ExitCode::SUCCESS,
        0x0001 | 0xB000..=0xBFFF => ExitCode::from(1),
        _ => ExitCode::from(2),
    }
}

async fn qr_find(target: &str, q: &QrArgs, json: bool) -> ExitCode {
    use crate::dicom::qrscu;
    let (t, model, level, keys) = match q.resolve(target) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    match qrscu::find(&t, &q.aet, model, &level, &keys).await {
        Ok(r) => {
            for m in &r.matches {
                if json {
                    let obj: serde_json::Map<String, serde_json::Value> = m
                        .iter()
                        .map(|(tag, v)| (qrscu::tag_name(*tag), serde_json::Value::String(v.clone())))
                        .collect();
                    println!("{}", serde_json::Value::Object(obj));
                } else {
                    let line: Vec<String> = m
                        .iter()
                        .map(|(tag, v)| format!("{}={v}", qrscu::tag_name(*tag)))
                        .collect();
                    println!("{}", line.join("  "));
                }
            }
            eprintln!(
                "C-FIND: {} matches, status {:#06x} {}",
                r.matches.len(),
                r.status,
                r.comment
            );
            qr_exit(r.status)
        }
        Err(e) => fail(e),
    }
}

async fn qr_move(target: &str, q: &QrArgs, dest: &str) -> ExitCode {
    let (t, model, level, keys) = match q.resolve(target) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let progress = |remaining: u16, completed: u16, failed: u16, warning: u16| {
        eprintln!("pending: {remaining} remaining, {completed} completed, {failed} failed, {warning} warning");
    };
    match crate::dicom::qrscu::move_to(&t, &q.aet, model, &level, &keys, dest, &progress).await {
        Ok(r) => {
            println!(
                "C-MOVE to {dest}: status {:#06x}, {} completed, {} failed, {} warning {}",
                r.status, r.completed, r.failed, r.warning, r.comment
            );
            qr_exit(r.status)
        }
        Err(e) => fail(e),
    }
}

async fn qr_get(target: &str, q: &QrArgs, out: &std::path::Path) -> ExitCode {
    let (t, model, level, keys) = match q.resolve(target) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if let Err(e) = std::fs::create_dir_all(out) {
        return fail(format!("{}: {e}", out.display()));
    }
    match crate::dicom::qrscu::get(&t, &q.aet, model, &level, &keys, out).await {
        Ok(r) => {
            println!(
                "C-GET: status {:#06x}, {} completed, {} failed, {} warning, {} files in {} {}",
                r.status,
                r.completed,
                r.failed,
                r.warning,
                r.written.len(),
                out.display(),
                r.comment
            );
            qr_exit(r.status)
        }
        Err(e) => fail(e),
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

fn read_password(from_stdin: bool) -> Result<String, String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if !from_stdin && !stdin.is_terminal() {
        return Err("no terminal: pass --password-stdin and pipe the password in".into());
    }
    if !from_stdin {
        eprint!("password (shown as you type; clear the screen afterwards): ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("reading the password: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// The index of an offline admin command (`user`, `relay`), the data
/// directory created if needed.
async fn open_index(cfg: &Config) -> Result<(crate::archive::index::Index, tokio::task::JoinHandle<()>), String> {
    crate::archive::files::make_private(&cfg.data_dir)
        .map_err(|e| format!("creating {}: {e}", cfg.data_dir.display()))?;
    crate::archive::index::Index::open_url(&cfg.index_url())
        .await
        .map_err(|e| e.to_string())
}

/// The configuration and index of an offline admin command that needs
/// no certificates (`user`, `api-token`).
async fn admin_index(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
) -> Result<(Config, crate::archive::index::Index, tokio::task::JoinHandle<()>), String> {
    let cfg = load_with_data_dir(config, data_dir).map_err(|e| e.to_string())?;
    let (index, writer) = open_index(&cfg).await?;
    Ok((cfg, index, writer))
}

async fn relay(
    cmd: RelayCmd,
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    cert_dir: Option<PathBuf>,
) -> ExitCode {
    use crate::relay::{pki, store};
    let o = Overrides {
        data_dir,
        cert_dir,
        ..Overrides::default()
    };
    let cfg = match Config::load(config.as_deref(), &o) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if cfg.role != "hub" {
        return fail("edge certificates are issued on the hub (this configuration has role = \"edge\")");
    }
    let (index, writer) = match open_index(&cfg).await {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let pool = index.pool().clone();
    let now = crate::clock::now_ms();
    let code = match cmd {
        RelayCmd::IssueEdge { name, clinic, out } => {
            if !cfg.clinics.iter().any(|c| c.id == clinic) {
                return fail(format!("no [[clinic]] with id {clinic:?} in the configuration"));
            }
            let issued =
                pki::ensure_hub(&cfg.cert_dir, &cfg.relay.name).and_then(|_| pki::issue_edge(&cfg.cert_dir, &name));
            match issued {
                Err(e) => fail(e),
                Ok(e) => match pki::write_edge_files(&out, &e) {
                    Err(err) => fail(err),
                    Ok((c, k, ca)) => match store::register_edge(&pool, &name, &clinic, &e.fingerprint, now).await {
                        Err(err) => fail(err),
                        Ok(()) => {
                            println!(
                                "edge {name} (clinic {clinic}) registered, fingerprint {}",
                                e.fingerprint
                            );
                            println!("copy to the edge and add to its configuration:");
                            println!("  role = \"edge\"");
                            println!("  [edge]");
                            let port = cfg.relay.listen.map(|a| a.port()).unwrap_or(4433);
                            println!("  hub = \"<hub address>:{port}\"");
                            println!("  hub_name = \"{}\"", cfg.relay.name);
                            println!("  cert = \"{}\"", c.display());
                            println!("  key = \"{}\"", k.display());
                            println!("  hub_ca = \"{}\"", ca.display());
                            ExitCode::SUCCESS
                        }
                    },
                },
            }
        }
        RelayCmd::Revoke { name } => match store::revoke_edge(&pool, &name, now).await {
            Ok(true) => {
                println!("edge {name} revoked");
                ExitCode::SUCCESS
            }
            Ok(false) => fail(format!("no edge named {name:?}")),
            Err(e) => fail(e),
        },
        RelayCmd::List => match store::edges(&pool).await {
            Ok(list) => {
                for e in list {
                    println!(
                        "{}\tclinic={}\t{}\tlast_seen={}\t{}",
                        e.name,
                        e.clinic_id,
                        if e.revoked_ms.is_some() { "REVOKED" } else { "active" },
                        e.last_seen_ms.map(|t| t.to_string()).unwrap_or_else(|| "never".into()),
                        e.last_addr.unwrap_or_default()
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    };
    drop(index);
    let _ = writer.await;
    pool.close().await;
    code
}

/// `medrelay migrate`: the schema of the configured index brought up to
/// date; prints `index <backend> schema version N`.
/// The configuration for a one-shot command that only takes a data
/// directory override (migrate, migrate-storage, user).
fn load_with_data_dir(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
) -> Result<Config, crate::config::ConfigError> {
    let o = Overrides {
        data_dir,
        ..Overrides::default()
    };
    Config::load(config.as_deref(), &o)
}

/// `medrelay migrate-storage`: see `store::copy`.
async fn migrate_storage(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    to_index: &str,
    to_storage: &str,
) -> ExitCode {
    use crate::archive::index;
    use crate::store::blob::StorageUrl;
    use crate::store::copy;
    let cfg = match load_with_data_dir(config, data_dir) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if let Err(e) = crate::config::check_index_url(to_index) {
        return fail(format!("--to-index: {e}"));
    }
    let dest_storage = match StorageUrl::parse(to_storage) {
        Ok(StorageUrl::S3(u)) => StorageUrl::S3(u.with_credentials(None, None)),
        Ok(u) => u,
        Err(e) => return fail(format!("--to-storage: {e}")),
    };
    if cfg.index_url() == to_index || cfg.storage_url() == dest_storage {
        return fail("the destination must differ from the configured index and storage");
    }
    let spool = cfg.data_dir.join("tmp");
    let run = async {
        let src_blobs = cfg.storage_url().open(&spool).map_err(copy::CopyError::from)?;
        let dst_blobs = dest_storage.open(&spool).map_err(copy::CopyError::from)?;
        // Which objects are verified at this destination, kept across runs.
        let journal = cfg.data_dir.join(format!(
            "migrate-storage-{}.verified",
            &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(to_storage.as_bytes()))[..16]
        ));
        let copy_all = |src: std::sync::Arc<dyn crate::store::blob::Blobs>,
                        dst: std::sync::Arc<dyn crate::store::blob::Blobs>| {
            let journal = journal.clone();
            async move {
                tokio::task::spawn_blocking(move || copy::copy_objects(&src, &dst, &journal))
                    .await
                    .map_err(|e| copy::CopyError::Blob(crate::store::blob::BlobError::Other(e.to_string())))?
            }
        };
        // Objects first (the long part, while the source keeps serving)...
        let first = copy_all(src_blobs.clone(), dst_blobs.clone()).await?;
        println!(
            "objects: {} at the source, {} copied ({} bytes), {} verified by SHA-256 now, {} in earlier runs",
            first.objects, first.copied, first.bytes_copied, first.verified, first.verified_before
        );
        // ...then the index snapshot...
        let src = index::connect(&cfg.index_url()).await?;
        let dst = index::connect(to_index).await?;
        index::migrate_pool(&src).await?;
        index::migrate_pool(&dst).await?;
        let counts = copy::copy_index(&src, &dst).await?;
        src.close().await;
        dst.close().await;
        let rows: u64 = counts.iter().map(|(_, n)| n).sum();
        println!("index: {rows} rows in {} tables copied as one snapshot", counts.len());
        // ...then every object the snapshot can name: an instance indexed
        // after the first pass was stored before its row committed.
        let last = copy_all(src_blobs, dst_blobs).await?;
        println!(
            "objects: {} copied since, {} verified by SHA-256 in all",
            last.copied,
            last.verified + last.verified_before
        );
        Ok::<_, copy::CopyError>(())
    };
    match run.await {
        Ok(()) => {
            println!("done: start the gateway with [index] url and [storage] url set to the destination");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

async fn migrate(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> ExitCode {
    use crate::archive::index;
    let cfg = match load_with_data_dir(config, data_dir) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let url = cfg.index_url();
    if url.starts_with("sqlite:")
        && let Err(e) = crate::archive::files::make_private(&cfg.data_dir)
    {
        return fail(format!("creating {}: {e}", cfg.data_dir.display()));
    }
    let run = async {
        let pool = index::connect(&url).await?;
        index::migrate_pool(&pool).await?;
        let v = index::schema_version(&pool).await?;
        pool.close().await;
        Ok::<_, index::IndexError>((crate::store::Backend::of_url(&url), v))
    };
    match run.await {
        Ok((backend, (at, _))) => {
            println!("index {} schema version {at}", backend.name());
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("migrating {}: {e}", crate::config::redact_url(&url))),
    }
}

async fn user(cmd: UserCmd, config: Option<PathBuf>, data_dir: Option<PathBuf>) -> ExitCode {
    use crate::reading::accounts;
    let (cfg, index, writer) = match admin_index(config, data_dir).await {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let pool = index.pool().clone();
    let now = crate::clock::now_ms();
    let code = match cmd {
        UserCmd::Add {
            username,
            role,
            name,
            clinic,
            hospital,
            department,
            password_stdin,
        } => {
            if let Err(e) = crate::reading::access::check_affiliation(&cfg, clinic.as_deref(), hospital.as_deref()) {
                return fail(e);
            }
            let password = match read_password(password_stdin) {
                Ok(p) => p,
                Err(e) => return fail(e),
            };
            let nu = accounts::NewUser {
                username,
                password,
                display_name: name,
                role,
                clinic_id: clinic,
                hospital_id: hospital,
                department,
            };
            match accounts::create_user(&pool, &nu, now).await {
                Ok(u) => {
                    println!("created {} ({})", u.username, u.role.as_str());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        UserCmd::Passwd {
            username,
            password_stdin,
        } => match read_password(password_stdin) {
            Err(e) => fail(e),
            Ok(p) => match accounts::set_password(&pool, &username, &p).await {
                Ok(()) => {
                    println!("password changed for {username}; its sessions were ended");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            },
        },
        UserCmd::Disable { username, enable } => match accounts::set_disabled(&pool, &username, !enable).await {
            Ok(()) => {
                println!("{username} {}", if enable { "enabled" } else { "disabled" });
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        UserCmd::List => match accounts::list_users(&pool).await {
            Ok(users) => {
                for u in users {
                    println!(
                        "{}\t{}\t{}\t{}{}",
                        u.username,
                        u.role.as_str(),
                        u.clinic_id.or(u.hospital_id).unwrap_or_default(),
                        u.display_name,
                        if u.disabled { "\t(disabled)" } else { "" }
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    };
    drop(index);
    let _ = writer.await;
    pool.close().await;
    code
}

async fn api_token(cmd: TokenCmd, config: Option<PathBuf>, data_dir: Option<PathBuf>) -> ExitCode {
    use crate::reading::tokens;
    let (cfg, index, writer) = match admin_index(config, data_dir).await {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let pool = index.pool().clone();
    let now = crate::clock::now_ms();
    let when = |ms: Option<i64>| ms.map_or_else(|| "never".to_string(), |t| t.to_string());
    let code = match cmd {
        TokenCmd::Add { name, scope } => match tokens::add(&pool, &cfg, &name, &scope, now).await {
            Ok(token) => {
                // The token alone on stdout (for scripts); the rest on stderr.
                println!("{token}");
                eprintln!("token {name} ({scope}) created; it is shown only this once");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        TokenCmd::Revoke { name } => match tokens::revoke(&pool, &name, now).await {
            Ok(()) => {
                println!("token {name} revoked");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        TokenCmd::List => match tokens::list(&pool).await {
            Ok(list) => {
                for t in list {
                    println!(
                        "{}\t{}\tcreated={}\tlast_used={}\t{}",
                        t.name,
                        t.scope_text,
                        t.created_ms,
                        when(t.last_used_ms),
                        if t.revoked_ms.is_some() { "REVOKED" } else { "active" }
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    };
    drop(index);
    let _ = writer.await;
    pool.close().await;
    code
}

async fn serve(a: ServeArgs) -> ExitCode {
    let o = Overrides {
        data_dir: a.data_dir,
        cert_dir: a.cert_dir,
        http_listen: a.http_listen,
        metrics_listen: a.metrics_listen,
        dicom_listen: a.dicom_listen,
        dicom_tls_listen: a.dicom_tls_listen,
        ae_title: a.ae_title,
        stable_after_secs: a.stable_after_secs,
        min_free_bytes: a.min_free_bytes,
        sfu_udp_listen: a.sfu_udp_listen,
        storage_url: a.storage_url,
        index_url: None,
    };
    let cfg = match Config::load(a.config.as_deref(), &o) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&cfg.log);
    let shutdown = CancellationToken::new();
    let signal_token = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signal_token.cancel();
    });
    match crate::app::serve(cfg, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "medrelay stopped");
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn render(
    file: PathBuf,
    wc: Option<f64>,
    ww: Option<f64>,
    frame: u32,
    size: u32,
    out: PathBuf,
    quality: u8,
) -> ExitCode {
    use crate::imaging::decode::DecodeError;
    use crate::imaging::render::{self, Format, RenderParams};
    init_tracing("warn");
    let window = match (wc, ww) {
        (Some(c), Some(w)) => Some((c, w)),
        (None, None) => None,
        _ => return fail("--wc and --ww go together"),
    };
    let params = RenderParams {
        window,
        frame,
        max_side: size,
    };
    let format = match out.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("png") => Format::Png,
        _ => Format::Jpeg,
    };
    let r = tokio::task::spawn_blocking(move || {
        let img = render::render_any(&file, &params)?;
        let bytes = render::encode(&img, format, quality)?;
        std::fs::write(&out, bytes).map_err(|e| DecodeError::Io(e.to_string()))?;
        Ok::<_, DecodeError>((img.width, img.height, out))
    })
    .await;
    match r {
        Ok(Ok((w, h, out))) => {
            println!("rendered {w}x{h} -> {}", out.display());
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("no preview: {e}");
            ExitCode::from(1)
        }
        Err(e) => fail(e),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut i), Ok(mut t)) => {
            tokio::select! {
                _ = i.recv() => {}
                _ = t.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn store(paths: Vec<PathBuf>, to: &str, parallel: usize, aet: &str, quiet: bool) -> ExitCode {
    let target = match Target::parse(to, "ANY-SCP") {
        Ok(t) => t,
        Err(e) => return fail(e),
    };
    let files = scu::collect_files(&paths);
    if files.is_empty() {
        return fail("no files found");
    }
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(files.len() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed_precise} eta {eta}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let bytes = Arc::new(AtomicU64::new(0));
    let progress = {
        let (bar, bytes) = (bar.clone(), bytes.clone());
        Arc::new(move |r: &FileResult| {
            let total = bytes.fetch_add(r.bytes, Relaxed) + r.bytes;
            bar.set_message(format!("{:.1} MB", total as f64 / 1e6));
            bar.inc(1);
        })
    };
    let t = Instant::now();
    let results = scu::store(files, &target, aet, parallel, progress).await;
    bar.finish_and_clear();
    let elapsed = t.elapsed().as_secs_f64();
    let ok: Vec<&FileResult> = results.iter().filter(|r| r.ok()).collect();
    let warnings = ok.iter().filter(|r| r.status.is_some_and(|s| s != 0)).count();
    let failed: Vec<&FileResult> = results.iter().filter(|r| !r.ok()).collect();
    let mut lat: Vec<f64> = ok.iter().map(|r| r.latency.as_secs_f64() * 1000.0).collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let mb = bytes.load(Relaxed) as f64 / 1e6;
    println!(
        "sent {} of {} files ({} with warnings), {:.1} MB in {:.2} s: {:.1} instances/s, {:.1} MB/s; C-STORE latency ms p50 {:.2} p95 {:.2} p99 {:.2}",
        ok.len(),
        results.len(),
        warnings,
        mb,
        elapsed,
        ok.len() as f64 / elapsed.max(1e-9),
        mb / elapsed.max(1e-9),
        pct(0.5),
        pct(0.95),
        pct(0.99)
    );
    for r in &failed {
        println!(
            "FAILED {}: {}",
            r.path.display(),
            r.error.as_deref().unwrap_or("unknown error")
        );
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
