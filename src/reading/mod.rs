//! Remote reading: the worklist of complete studies, claims with leases,
//! reports and their delivery back to the clinic.
//!
//! `worklist` holds the pure transition rules; `archive::index` applies them
//! atomically (`worklist_apply`, `expire_worklist_leases`) and logs every
//! transition. Accounts, the HTTP routes and the viewer arrive with the rest
//! of the reading workflow. `accounts` has the password hashing (argon2id)
//! and login throttling the login route will use. `sr` turns a signed report
//! into a DICOM Basic Text SR (pure); `delivery` keeps the durable queue of
//! SRs to C-STORE to clinic PACS and the worker that retries them.

pub mod accounts;
pub mod delivery;
pub mod sr;
pub mod worklist;
