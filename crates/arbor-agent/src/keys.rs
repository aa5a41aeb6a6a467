//! Hashing keys of a dataset on disk, and their rotation.
//!
//! A dataset is hashed with a key derived from its secret (`secret_*`).
//! For a rotation the config also names the key to rotate to
//! (`next_secret_*`). `arbor keys rotate` (AdminService.RotateKey) builds
//! the index under the other key *beside* the current one while changes
//! keep flowing (they are applied to the current index and queued for the
//! new one, then replayed into it), and switches atomically: compares are
//! never refused. The old index stays maintained while its key is
//! configured, so a peer that has not rotated yet still compares with this
//! agent (the compare settles on the key both sides hold, see
//! [`arbor_sync::Peer::switch_key`]).
//!
//! On disk: the first index of a dataset lives at `indexes/<name>`, an
//! index under another key at `indexes/<name>.key-<key id>`; the current
//! key id is recorded in `keys/<name>.active` (written atomically), so a
//! restart keeps the rotated key whichever of the two config fields holds
//! it. An index under a key no longer configured is not opened.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arbor_index::{Index, IndexConfig, IndexError};
use arbor_record::{DatasetKeys, KeyId};
use tracing::{info, warn};

use crate::config::{AgentConfig, DatasetConfig};
use crate::dataset::Dataset;
use crate::error::{AgentError, OpError};
use crate::maintain::{build_from_source, index_path};

/// The index configuration of a dataset: keys from its secret, its schema.
pub fn index_config(d: &DatasetConfig) -> IndexConfig {
    index_config_under(d, &d.secret)
}

/// The index configuration of `d` under the key derived from `secret`.
pub fn index_config_under(d: &DatasetConfig, secret: &[u8]) -> IndexConfig {
    IndexConfig {
        keys: DatasetKeys::derive(secret),
        schema_fingerprint: d.mapping.schema().fingerprint(),
    }
}

/// Where an index of `dataset` under a key other than its first lives.
fn keyed_path(config: &AgentConfig, dataset: &str, key_id: KeyId) -> PathBuf {
    config
        .data_dir
        .join("indexes")
        .join(format!("{dataset}.key-{key_id}"))
}

fn marker_path(config: &AgentConfig, dataset: &str) -> PathBuf {
    config
        .data_dir
        .join("keys")
        .join(format!("{dataset}.active"))
}

/// Opens the index of `d` under the key of `secret`: the first index if it
/// holds that key, else the keyed one. With `create`, makes it if missing;
/// without, `None` if there is none. `first_taken`: the first index is
/// already open (under another key), so it is not tried.
pub fn open_under(
    config: &AgentConfig,
    d: &DatasetConfig,
    secret: &[u8],
    create: bool,
    first_taken: bool,
) -> Result<Option<Index>, AgentError> {
    let cfg = index_config_under(d, secret);
    let key_id = cfg.keys.key_id();
    let first = index_path(config, &d.name);
    let keyed = keyed_path(config, &d.name, key_id);
    let open = |path: &Path, cfg: IndexConfig| {
        open_upgrading(&d.name, path, cfg).map_err(|source| AgentError::Index {
            dataset: d.name.clone(),
            source,
        })
    };
    if keyed.exists() {
        return open(&keyed, cfg).map(Some);
    }
    if first.exists() && !first_taken {
        match open_upgrading(&d.name, &first, cfg.clone()) {
            Ok(index) => return Ok(Some(index)),
            // The first index holds another key.
            Err(IndexError::KeyId { .. }) => {}
            Err(source) => {
                return Err(AgentError::Index {
                    dataset: d.name.clone(),
                    source,
                });
            }
        }
    }
    if !create {
        return Ok(None);
    }
    open(if first.exists() { &keyed } else { &first }, cfg).map(Some)
}

/// Opens an index; one built with an older canonical encoding is removed
/// and created empty, so that it is built again from the system: it is
/// derived data, and its digests would not match a current peer's.
fn open_upgrading(dataset: &str, path: &Path, cfg: IndexConfig) -> Result<Index, IndexError> {
    match Index::open(path, cfg.clone()) {
        Err(IndexError::EncodingVersion { stored, expected }) if stored < expected => {
            warn!(
                dataset,
                path = %path.display(),
                stored,
                expected,
                "the index was built with an older canonical encoding: removing it to build it \
                 again from the system"
            );
            Index::destroy(path)?;
            Index::open(path, cfg)
        }
        other => other,
    }
}

/// The key recorded as current for `dataset`, if any.
pub fn recorded_active(config: &AgentConfig, dataset: &str) -> Option<KeyId> {
    let text = std::fs::read_to_string(marker_path(config, dataset)).ok()?;
    let bytes = hex::decode(text.trim()).ok()?;
    Some(KeyId(bytes.try_into().ok()?))
}

/// Records `key_id` as current for `dataset`: written to a temporary file,
/// synced, renamed over the marker, and the directory synced.
fn record_active(config: &AgentConfig, dataset: &str, key_id: KeyId) -> std::io::Result<()> {
    use std::io::Write;
    let path = marker_path(config, dataset);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("active.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{key_id}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// The indexes of `d` to open at start: the current one (created if
/// missing) and, if the other configured key already has an index, that
/// one too.
pub fn open_dataset_indexes(
    config: &AgentConfig,
    d: &DatasetConfig,
) -> Result<(Index, Option<Index>), AgentError> {
    let first = d.secret.as_slice();
    let Some((next, _)) = &d.next_secret else {
        return Ok((open_required(config, d, first)?, None));
    };
    let recorded = recorded_active(config, &d.name);
    let (active, other) = if recorded == Some(DatasetKeys::derive(next).key_id()) {
        (next.as_slice(), first)
    } else {
        (first, next.as_slice())
    };
    let active = open_required(config, d, active)?;
    let first_taken = active.path() == index_path(config, &d.name);
    let other = open_under(config, d, other, false, first_taken)?;
    Ok((active, other))
}

fn open_required(
    config: &AgentConfig,
    d: &DatasetConfig,
    secret: &[u8],
) -> Result<Index, AgentError> {
    open_under(config, d, secret, true, false)?.ok_or_else(|| AgentError::Index {
        dataset: d.name.clone(),
        source: IndexError::InvalidRequest("the index could not be created".into()),
    })
}

/// Rebuilds every index held beside the current one whose watermark
/// differs from the current index's (a crash between the two applies of a
/// batch), so all of them describe the same changes. Blocking.
pub fn rebuild_lagging(ds: &Dataset, name: &str) -> Result<(), OpError> {
    let indexes = ds.indexes();
    if indexes.len() < 2 {
        return Ok(());
    }
    let watermark = |i: &Index| -> Result<Option<Vec<u8>>, OpError> {
        Ok(i.snapshot()
            .and_then(|s| s.describe())
            .map_err(OpError::Index)?
            .watermark)
    };
    let current = watermark(&indexes[0])?;
    for other in &indexes[1..] {
        if watermark(other)? == current {
            continue;
        }
        warn!(dataset = name, key_id = %other.config().keys.key_id(), "index under the other key lags the current one; rebuilding it");
        let source = ds
            .source
            .as_ref()
            .ok_or_else(|| OpError::NoSystem(name.to_owned()))?;
        let mut source = source.lock().unwrap_or_else(|p| p.into_inner());
        build_from_source(other, source.as_mut(), ds.report_key.is_none())
            .map_err(OpError::Index)?;
        other
            .apply(&[], current.as_deref())
            .map_err(OpError::Index)?;
    }
    Ok(())
}

/// Rotates `d` to its other configured key (see the module docs). Blocking.
pub fn rotate(
    config: &AgentConfig,
    d: &DatasetConfig,
    ds: &Arc<Dataset>,
) -> Result<Rotated, OpError> {
    let started = Instant::now();
    let Some((next, _)) = &d.next_secret else {
        return Err(OpError::NotReady(format!(
            "dataset[{}] has no next_secret_env, next_secret_file or next_secret: \
             configure the key to rotate to, then restart the agent",
            d.name
        )));
    };
    let previous = ds.index().config().keys.key_id();
    let target = [d.secret.as_slice(), next.as_slice()]
        .into_iter()
        .find(|s| DatasetKeys::derive(s).key_id() != previous)
        .ok_or_else(|| OpError::Internal("both configured keys are current".into()))?;
    let target_id = DatasetKeys::derive(target).key_id();
    if ds.rotating.swap(true, Ordering::AcqRel) {
        return Err(OpError::Conflict(format!(
            "dataset {:?} is already rotating its key",
            d.name
        )));
    }
    let outcome = (|| -> Result<(bool, u64), OpError> {
        if let Some(held) = ds.index_for(target_id) {
            let count = held
                .snapshot()
                .and_then(|s| s.describe())
                .map_err(OpError::Index)?
                .count();
            return Ok((false, count));
        }
        let fresh = Arc::new(
            open_under(config, d, target, true, true)
                .map_err(|e| OpError::Internal(e.to_string()))?
                .ok_or_else(|| OpError::Internal("the new index could not be created".into()))?,
        );
        let source = ds
            .source
            .as_ref()
            .ok_or_else(|| OpError::NoSystem(d.name.clone()))?;
        // Changes applied from now on are queued for the new index.
        ds.start_pending();
        let built = {
            let mut source = source.lock().unwrap_or_else(|p| p.into_inner());
            build_from_source(&fresh, source.as_mut(), ds.report_key.is_none())
        };
        match built {
            Ok(stats) => {
                ds.finish_pending(Some(fresh)).map_err(OpError::Index)?;
                Ok((true, stats.records))
            }
            Err(e) => {
                let _ = ds.finish_pending(None);
                Err(OpError::Index(e))
            }
        }
    })();
    let switched = outcome.and_then(|(built, records)| {
        ds.switch_to(target_id).map_err(OpError::Index)?;
        Ok((built, records))
    });
    ds.rotating.store(false, Ordering::Release);
    let (built, records) = switched?;
    record_active(config, &d.name, target_id).map_err(|e| {
        OpError::Internal(format!(
            "switched to key {target_id}, but could not record it under {} ({e}); \
             a restart would go back to key {previous}",
            config.data_dir.join("keys").display()
        ))
    })?;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    info!(dataset = %d.name, previous = %previous, key_id = %target_id, built, records, elapsed_ms, "key rotated");
    Ok(Rotated {
        dataset: d.name.clone(),
        previous_key_id: previous.to_string(),
        key_id: target_id.to_string(),
        built,
        records,
        elapsed_ms,
        held_key_ids: ds
            .indexes()
            .iter()
            .map(|i| i.config().keys.key_id().to_string())
            .collect(),
    })
}

/// What a key rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The dataset.
    pub dataset: String,
    /// The key id it hashed under before.
    pub previous_key_id: String,
    /// The key id it hashes under now.
    pub key_id: String,
    /// Whether an index was built (false: one under the key was kept).
    pub built: bool,
    /// Records in the index under the new key.
    pub records: u64,
    /// How long the rotation took.
    pub elapsed_ms: u64,
    /// Every key id the dataset holds an index under, current first.
    pub held_key_ids: Vec<String>,
}

#[cfg(test)]
mod upgrade_tests {
    use super::*;

    #[test]
    fn an_index_of_an_older_encoding_is_removed_to_be_built_again() {
        let dir = tempfile::TempDir::new().unwrap();
        let path = dir.path().join("i");
        let cfg = IndexConfig {
            keys: DatasetKeys::derive(b"upgrade"),
            schema_fingerprint: [3; 32],
        };
        let index = Index::open(&path, cfg.clone()).unwrap();
        index
            .apply(
                &[arbor_index::Change::Upsert(arbor_record::Record::new(
                    vec![arbor_record::Value::Integer(1)],
                    vec![],
                ))],
                None,
            )
            .unwrap();
        index
            .record_encoding_version(arbor_record::ENCODING_VERSION - 1)
            .unwrap();
        drop(index);
        assert!(matches!(
            Index::open(&path, cfg.clone()),
            Err(IndexError::EncodingVersion { .. })
        ));
        let upgraded = open_upgrading("d", &path, cfg.clone()).unwrap();
        let described = upgraded.snapshot().unwrap().describe().unwrap();
        assert_eq!(described.count(), 0, "rebuilt from nothing");
        drop(upgraded);
        // A newer index than this arbor knows is left alone, and refused.
        Index::open(&path, cfg.clone())
            .unwrap()
            .record_encoding_version(arbor_record::ENCODING_VERSION + 1)
            .unwrap();
        assert!(matches!(
            open_upgrading("d", &path, cfg),
            Err(IndexError::EncodingVersion { .. })
        ));
    }
}
