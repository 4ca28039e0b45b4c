//! Remote reading: accounts and who sees what, the worklist of complete
//! studies with claims and leases, reports and their delivery back to the
//! clinic as DICOM SR, consultation requests, and the audit trail.
//!
//! `worklist`, `access` and `requests` hold pure rules; the other modules
//! apply them to the index database. `store::worklist` is the only code
//! that touches the worklist tables: every transition goes through the rules
//! inside the caller's transaction (`Index::worklist_apply` wraps one in its
//! own).
//! `sr` builds Basic Text SR documents (pure); `delivery` is the durable
//! queue and worker that C-STOREs them to clinic PACS until acknowledged.
//!
//! One module owns each table (a unit test in `store` fails on a second
//! writer): `accounts` users and sessions, `reports` report versions,
//! `delivery` the deliveries, `notifications` the clinic's notices,
//! `requests` consultation requests, `audit` the trail. `signing` is the
//! service that composes them: a signed version, its worklist transition,
//! its notice and its delivery in one transaction.

pub mod access;
pub mod accounts;
pub mod audit;
pub mod delivery;
pub mod notifications;
pub mod reports;
pub mod requests;
pub mod signing;
pub mod sr;
pub mod tokens;
pub mod worklist;
