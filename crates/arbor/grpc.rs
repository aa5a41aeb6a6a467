//! The gRPC edge: one module per service, the client side, access control
//! on requests, the audit wrapper, and the one map from domain errors to
//! status codes.

pub mod admin;
pub mod agent;
pub mod audit;
pub mod audited;
pub mod auth;
pub mod client;
pub mod ingest;
pub mod repair;
pub mod status;
