//! The agent without its gRPC edge: what runs beside one system.
//!
//! * [`config`]: the configuration file, validated;
//! * [`access`]: principals, roles and rate limits;
//! * [`error`]: why the agent could not start or an operation failed;
//! * [`report`]: compare-run reports and their store format;
//! * [`audit`]: the hash-chained audit log;
//! * [`dataset`]: a served dataset (its indexes and system), the agent's
//!   datasets, compare sessions and run slots;
//! * [`maintain`]: opening, building, rescanning and catching up indexes;
//! * [`capture`]: following a dataset's changes (rescans, polls, logical);
//! * [`logical`]: PostgreSQL logical capture;
//! * [`keys`]: hashing-key rotation;
//! * [`jobs`]: sync jobs on a schedule, in real time or on request;
//! * [`sync`]: sync runs: plan and execute over two sides, each in process
//!   or behind another agent;
//! * [`startup`]: opening every dataset when the agent starts;
//! * [`repair`]: fetching values and applying planned writes with the
//!   journal.
//!
//! Nothing here links tonic: the `arbor` package maps these types to and
//! from the wire (`arbor::wire`) and errors to gRPC codes
//! (`arbor::status`).

pub mod access;
pub mod audit;
pub mod capture;
pub mod config;
pub mod dataset;
pub mod error;
pub mod jobs;
pub mod keys;
pub mod logical;
pub mod maintain;
pub mod repair;
pub mod report;
pub mod startup;
pub mod sync;
