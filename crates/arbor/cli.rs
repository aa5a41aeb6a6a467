//! The operator's verbs, one module per group; `main.rs` parses and
//! dispatches.

pub(crate) mod args;
pub(crate) mod client;
pub(crate) mod index;
pub(crate) mod runs;
pub(crate) mod sync;
