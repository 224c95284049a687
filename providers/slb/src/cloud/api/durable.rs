//! Durable state: after each change the whole store is encoded under the
//! store's lock (so snapshots are numbered in the order the changes were
//! made) and written atomically outside it; a write older than the one
//! already on disk is skipped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::cloud::Store;

/// Why a change could not be made durable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PersistError {
    #[error("cannot encode the state")]
    Encode(#[source] serde_json::Error),
    #[error("the state writer task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("cannot write state file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The encoded store after one change.
#[derive(Debug)]
pub(crate) struct Snapshot {
    generation: u64,
    bytes: Vec<u8>,
}

/// Writes snapshots of the store to the state file, if there is one.
#[derive(Debug)]
pub(crate) struct StateWriter {
    path: Option<PathBuf>,
    /// The generation of the last snapshot taken.
    taken: AtomicU64,
    /// The generation on disk; held while writing, so writes never overlap.
    written: tokio::sync::Mutex<u64>,
}

impl StateWriter {
    pub(crate) fn new(path: Option<PathBuf>) -> Self {
        Self {
            path,
            taken: AtomicU64::new(0),
            written: tokio::sync::Mutex::new(0),
        }
    }

    /// Encode `store`; call it under the store's lock. `None` without a
    /// state file.
    pub(crate) fn snapshot(&self, store: &Store) -> Result<Option<Snapshot>, PersistError> {
        if self.path.is_none() {
            return Ok(None);
        }
        let bytes = serde_json::to_vec_pretty(store).map_err(PersistError::Encode)?;
        let generation = self.taken.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Some(Snapshot { generation, bytes }))
    }

    /// Put `snapshot` on disk, unless a newer one got there first.
    pub(crate) async fn write(&self, snapshot: Snapshot) -> Result<(), PersistError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let mut written = self.written.lock().await;
        if *written >= snapshot.generation {
            return Ok(());
        }
        let target = path.clone();
        tokio::task::spawn_blocking(move || write_atomic(&target, &snapshot.bytes))
            .await
            .map_err(PersistError::Task)?
            .map_err(|source| PersistError::Write {
                path: path.clone(),
                source,
            })?;
        *written = snapshot.generation;
        Ok(())
    }
}

/// Write `bytes` to `path` atomically: temp file in the same directory,
/// fsync, rename over, fsync the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
