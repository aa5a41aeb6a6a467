//! Why the agent could not start or serve, and how to get past an index
//! that no longer matches its configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use arbor_index::IndexError;
use arbor_source::SourceError;

/// Why the agent could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A dataset's system could not be opened or does not match its mapping.
    #[error("dataset {dataset}")]
    Source {
        /// The dataset.
        dataset: String,
        /// The problem.
        #[source]
        source: SourceError,
    },
    /// A dataset's index could not be opened or built.
    #[error("dataset {dataset}: index{}", rebuild_hint(dataset, source))]
    Index {
        /// The dataset.
        dataset: String,
        /// The problem.
        #[source]
        source: IndexError,
    },
    /// The run store could not be opened.
    #[error("run store")]
    Runs(#[source] IndexError),
    /// The TLS material does not make a server configuration.
    #[error("TLS: {0}")]
    Tls(String),
    /// The data directory could not be created.
    #[error("cannot create data directory {path}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A port could not be listened on.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The audit log could not be opened.
    #[error(transparent)]
    AuditLog(#[from] crate::audit::AuditError),
    /// A start-up step failed for a reason of the process itself (a task
    /// that panicked, a service that could not be built).
    #[error("start-up: {0}")]
    Startup(String),
    /// The server failed.
    #[error("gRPC server on {addr}")]
    Serve {
        /// The listen address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Why an operation on a dataset, a run, a key or a repair was refused or
/// failed. `arbor::status` maps each variant to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// No dataset of that name.
    #[error("unknown dataset {0:?}")]
    UnknownDataset(String),
    /// The dataset is served from its index alone: no system to read.
    #[error("dataset {0:?} has no system attached")]
    NoSystem(String),
    /// Something asked for is not there: a session, a run, a conflict.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed or out of bounds.
    #[error("{0}")]
    Invalid(String),
    /// The dataset or the configuration is not in a state for this: it
    /// failed to index, may be stale, has no key to rotate to.
    #[error("{0}")]
    NotReady(String),
    /// Not now, later: the dataset is being indexed, the system is
    /// unreachable.
    #[error("{0}")]
    Unavailable(String),
    /// A limit is reached: runs on a dataset, open sessions, a queue.
    #[error("{0}")]
    Busy(String),
    /// Another operation holds what this one needs (a build or a rotation
    /// already running).
    #[error("{0}")]
    Conflict(String),
    /// The configuration forbids it (repairs not allowed on the dataset).
    #[error("{0}")]
    Forbidden(String),
    /// Stored state is damaged.
    #[error("{0}")]
    DataLoss(String),
    /// An unexpected failure (a task that panicked, an impossible state).
    #[error("{0}")]
    Internal(String),
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The system failed.
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl OpError {
    /// Whether trying again later may succeed: the dataset is being
    /// indexed, or its system or index could not be reached.
    pub fn is_transient(&self) -> bool {
        match self {
            OpError::Unavailable(_) => true,
            OpError::Source(e) => e.is_transient(),
            OpError::Index(e) => matches!(e, IndexError::Source(_)),
            _ => false,
        }
    }

    /// The error of a failed build or rescan: the system's own error when
    /// the system failed.
    pub fn of_read(e: IndexError) -> OpError {
        match e {
            IndexError::Source(inner) => match inner.downcast::<SourceError>() {
                Ok(s) => OpError::Source(*s),
                Err(other) => OpError::Unavailable(other.to_string()),
            },
            other => OpError::Index(other),
        }
    }
}

/// How to get past an index that no longer matches the configuration.
pub fn rebuild_hint(dataset: &str, e: &IndexError) -> String {
    if e.needs_rebuild() {
        format!(
            " (it is derived from the system: if the configuration change was meant, \
             `arbor index reset --config FILE --dataset {dataset}` removes it, and the \
             next start builds it again)"
        )
    } else if e.is_locked() {
        " (another process has it open: is its agent running?)".to_owned()
    } else {
        String::new()
    }
}
