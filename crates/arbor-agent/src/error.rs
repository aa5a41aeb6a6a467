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
