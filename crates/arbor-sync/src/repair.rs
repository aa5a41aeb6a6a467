//! Repairs: the limits every planner and writer of repair batches shares.
//! (The plan and its execution move here from the agent as the
//! restructuring of `docs/architecture.md` goes on.)

/// Writes per batch when a job, a request or the CLI names none.
pub const DEFAULT_BATCH: usize = 500;

/// Writes one batch may carry, at most (one transaction on the written
/// side; an agent refuses more).
pub const MAX_BATCH_WRITES: usize = 10_000;

/// The largest share of a side's records one run may update or delete
/// unless told otherwise: half. A mass change is more often a wrong mapping
/// or a wrong source of truth than real drift.
pub const DEFAULT_MAX_SHARE: f64 = 0.5;

/// A side smaller than this many records is never refused for the share of
/// it a plan changes (a repair of a 3-row table may change all 3).
pub const SHARE_MIN_ROWS: u64 = 100;
