//! The edge-to-hub WAN relay link (see DESIGN.md): studies leave a clinic's
//! edge box preview-first, in compressed, resumable bundles over QUIC.
//!
//! So far only the pure transfer planner exists (`plan`); the outbox, the
//! QUIC transport and the hub's atomic study commit are the relay issue's
//! remaining work.

pub mod plan;
