//! Durable storage: instance files on the local filesystem and the SQLite
//! index over them, plus the study-stability sweep that feeds the worklist.

pub mod files;
pub mod index;
pub mod metadata;
pub mod query;
pub mod stability;
