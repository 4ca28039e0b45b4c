//! DICOM networking: the SCP (C-ECHO, C-STORE, Query/Retrieve), the SCUs for
//! the CLI tools,
//! and the pure pieces they share (DIMSE codec, PDV reassembly, dataset walk,
//! Part 10 header).

pub mod ae;
pub mod assembly;
pub mod attrs;
pub mod charset;
pub mod dimse;
pub mod limits;
pub mod meta;
pub mod pn;
pub mod qr;
pub mod qrscu;
pub mod scp;
pub mod scu;
pub mod sop_classes;
pub mod walk;
