//! Remote reading: the worklist of complete studies, claims with leases,
//! reports and their delivery back to the clinic.
//!
//! `worklist` holds the pure transition rules; the database and HTTP layers
//! that apply them arrive with the rest of the reading workflow.

pub mod worklist;
