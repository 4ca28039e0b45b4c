//! What every HTTP handler shares, built once by `app` at start.
//!
//! It lives here, not in `app`, so that the HTTP layer depends only on the
//! services it is handed and `app` is the one place that wires them (no
//! import cycle between the two).

use std::sync::Arc;

use crate::archive::files::Archive;
use crate::archive::index::Index;
use crate::config::Config;
use crate::metrics::Metrics;

/// What HTTP handlers share (`State<Arc<Services>>`).
pub struct Services {
    pub cfg: Arc<Config>,
    pub archive: Archive,
    pub index: Index,
    pub metrics: Arc<Metrics>,
    /// Bounds on-demand renders (CPU-bound) to one per core.
    pub render_slots: tokio::sync::Semaphore,
    pub sfu: Arc<crate::sfu::Sfu>,
    /// What bounds anonymous login attempts: throttling per username,
    /// address and known-good pair (in memory: a restart forgets them, which
    /// is acceptable for throttling), the password-hashing threads, the
    /// failed-login audit budget.
    pub login: Arc<super::auth::LoginGuard>,
    /// Study zip downloads running, globally and per account.
    pub zip_slots: super::limits::ZipSlots,
    /// Refusals and cuts by the HTTP limits, for /metrics.
    pub limits: Arc<super::limits::LimitCounters>,
    /// Wakes the SR delivery worker when a signed report is queued.
    pub delivery: crate::reading::delivery::DeliveryHandle,
    /// Live relay link figures (per edge on a hub, the hub link on an edge).
    pub relay: Arc<crate::relay::link::LinkStatus>,
    /// The C-STORE ingest pipeline, shared by STOW-RS (same writer,
    /// durability, index rules and "stored" event).
    pub ingest: crate::dicom::scp::Ingest,
}
