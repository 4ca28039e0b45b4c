//! medrelay: a DICOM + WebRTC gateway for regional hospital alliances whose
//! clinics sit on long, lossy links.
//!
//! # Data flows
//!
//! ```text
//! modality --C-STORE--> dicom::scp --stream--> archive (tmp file, fsync, rename)
//!                                       \--> index (SQLite) --> C-STORE-RSP
//! index: study quiet for `stable_after` --> reading worklist (durable)
//! browser --HTTPS/axum--> http::api (studies, series, instances, downloads)
//! ```
//!
//! # Threading contract
//!
//! One multi-threaded tokio runtime runs all network I/O. Nothing blocking runs
//! on it: instance files are written, validated and fsynced on
//! `spawn_blocking` threads fed through bounded channels; SQLite writes go
//! through one writer task that group-commits. Every queue is bounded and every
//! network read has a timeout. Hot-path logic (DIMSE codec, PDV reassembly,
//! dataset walk, stability timing) is pure and unit-tested without sockets.

pub mod app;
pub mod archive;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dicom;
/// Fuzz targets and the allocation meter (test support; see the module docs).
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod imaging;
pub mod loadtest;
pub mod metrics;
pub mod reading;
pub mod relay;
pub mod sfu;
pub mod store;
pub mod tls;

pub use cli::run;
