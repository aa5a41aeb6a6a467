//! Repairs: the limits every planner and writer of repair batches shares.
//! (The plan and its execution move here from the agent as the
//! restructuring of `docs/architecture.md` goes on.)

/// Writes per batch when a job, a request or the CLI names none.
pub const DEFAULT_BATCH: usize = 500;

/// Writes one batch may carry, at most (one transaction on the written
/// side; an agent refuses more).
pub const MAX_BATCH_WRITES: usize = 10_000;
