//! The edge-to-hub WAN relay link (see DESIGN.md): studies leave a clinic's
//! edge box preview-first, in compressed, verified, resumable bundles over
//! QUIC; reports come back the same way.
//!
//! - `plan`, `wire`, `rate`, `cc`: pure (what to send in which order, message
//!   framing and verification, the send-rate cap, congestion control),
//!   tested without sockets.
//! - `store`: durable state in the index database (outbox, staging, the
//!   atomic study commit, registered edges).
//! - `pki`: the relay CA and per-edge certificates.
//! - `link`, `hub`, `edge`: the thin QUIC adapters.

pub mod cc;
pub mod edge;
pub mod hub;
pub mod link;
pub mod pki;
pub mod plan;
pub mod rate;
pub mod store;
pub mod wire;
