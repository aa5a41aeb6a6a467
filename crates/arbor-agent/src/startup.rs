//! What an agent opens when it starts: every dataset's system and indexes
//! (two indexes while a key rotation is under way).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::{AgentConfig, Capture};
use crate::dataset::Dataset;
use crate::error::AgentError;
use crate::maintain::open_source;

/// Opens every dataset (system and index) of a configuration.
pub fn open_datasets(config: &AgentConfig) -> Result<HashMap<String, Arc<Dataset>>, AgentError> {
    std::fs::create_dir_all(config.data_dir.join("indexes")).map_err(|source| {
        AgentError::DataDir {
            path: config.data_dir.clone(),
            source,
        }
    })?;
    let mut out = HashMap::new();
    for d in &config.datasets {
        let source = open_source(d)?;
        // Two indexes while a key rotation is under way (see keys.rs).
        let (index, other) = crate::keys::open_dataset_indexes(config, d)?;
        out.insert(
            d.name.clone(),
            Arc::new({
                let mut ds = Dataset::new(Arc::new(index), Some(source), Some(d.mapping.clone()));
                if let Some(other) = other {
                    ds.hold(Arc::new(other));
                }
                ds.max_runs = config.max_runs_per_dataset;
                ds.accepts_push = matches!(d.capture, Capture::Push { .. });
                if d.key_sensitive {
                    ds.report_key =
                        Some(blake3::derive_key("arbor report key hashes v1", &d.secret));
                }
                // Indexed at start: compares wait for it.
                ds.indexing.store(true, Ordering::Release);
                ds
            }),
        );
    }
    Ok(out)
}
