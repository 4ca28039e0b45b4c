//! Remote reading: accounts and who sees what, the worklist of complete
//! studies with claims and leases, reports and their delivery back to the
//! clinic as DICOM SR, consultation requests, and the audit trail.
//!
//! `worklist`, `access` and `requests` hold pure rules; the other modules
//! apply them to the index database. `archive::index` applies worklist
//! transitions atomically (`worklist_apply`, `expire_worklist_leases`).
//! `sr` builds Basic Text SR documents (pure); `delivery` is the durable
//! queue and worker that C-STOREs them to clinic PACS until acknowledged.

pub mod access;
pub mod accounts;
pub mod audit;
pub mod delivery;
pub mod reports;
pub mod requests;
pub mod sr;
pub mod worklist;
