//! Remote reading: accounts and who sees what, the worklist of complete
//! studies with claims and leases, reports and their delivery back to the
//! clinic, consultation requests, and the audit trail.
//!
//! `worklist`, `access` and `requests` hold pure rules; the other modules
//! apply them to the index database. `archive::index` applies worklist
//! transitions atomically (`worklist_apply`, `expire_worklist_leases`).

pub mod access;
pub mod accounts;
pub mod audit;
pub mod worklist;
pub mod reports;
pub mod requests;
pub mod delivery;
pub mod sr;
