//! Where documents live between server runs. [`DirStore`] keeps one file per
//! document in a directory: a sequence of records (a varint length, then a
//! Yjs v1 update). Every integrated update is appended as it comes (a
//! `write` per update: it survives the process being killed), and the file
//! is rewritten as one record holding the whole state every so often and
//! when the last connection leaves (written to a temporary file, synced and
//! renamed over the old one, so a crash leaves the old file or the new).

use crate::protocol::{write_bytes, Reader};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Persistence failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing a document file failed.
    #[error("document store I/O on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A Redis command failed (`RedisShare`, feature `redis`).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    #[error("Yjs document store on Redis ({name}): {source}")]
    Redis {
        /// The document (empty when none).
        name: String,
        /// What went wrong.
        source: ::redis::RedisError,
    },
}

/// Keeps documents between runs. Called under the document's lock, one
/// call at a time per document.
pub trait Store: Send + Sync + 'static {
    /// Every stored update of `name`, in order (empty if it is new).
    fn load(&self, name: &str) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Whether `name` has been stored.
    fn exists(&self, name: &str) -> bool;
    /// How many documents are stored.
    fn count(&self) -> usize;
    /// Add one update to `name`.
    fn append(&self, name: &str, update: &[u8]) -> Result<(), StoreError>;
    /// Replace everything stored for `name` by `state` (one update holding all).
    fn replace(&self, name: &str, state: &[u8]) -> Result<(), StoreError>;
}

/// One file per document in a directory (`<name>.ydoc`).
#[derive(Debug)]
pub struct DirStore {
    dir: PathBuf,
    count: AtomicUsize,
}

impl DirStore {
    /// Use `dir`; it is created when the first document is stored.
    pub fn open(dir: impl Into<PathBuf>) -> Result<DirStore, StoreError> {
        let dir = dir.into();
        if !dir.exists() {
            return Ok(DirStore { dir, count: AtomicUsize::new(0) });
        }
        let entries = std::fs::read_dir(&dir).map_err(|source| StoreError::Io { path: dir.clone(), source })?;
        let count = entries.filter_map(Result::ok).filter(|e| e.path().extension().is_some_and(|x| x == "ydoc")).count();
        Ok(DirStore { dir, count: AtomicUsize::new(count) })
    }

    fn path(&self, name: &str) -> PathBuf {
        // Names are checked by `crate::check_name`: no '/', no leading '.'.
        self.dir.join(format!("{name}.ydoc"))
    }
}

impl Store for DirStore {
    fn load(&self, name: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let path = self.path(name);
        let data = match std::fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let mut r = Reader::new(&data);
        let mut updates = Vec::new();
        while !r.is_empty() {
            match r.bytes() {
                Ok(update) => updates.push(update.to_vec()),
                // A record cut short by a crash: what came before it stands.
                Err(_) => {
                    tracing::warn!(path = %path.display(), "ignoring a truncated record at the end of a document file");
                    break;
                }
            }
        }
        Ok(updates)
    }

    fn exists(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn append(&self, name: &str, update: &[u8]) -> Result<(), StoreError> {
        let path = self.path(name);
        let existed = path.exists();
        if !existed {
            std::fs::create_dir_all(&self.dir).map_err(|source| StoreError::Io { path: self.dir.clone(), source })?;
        }
        let mut record = Vec::with_capacity(update.len() + 5);
        write_bytes(&mut record, update);
        let written = std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| f.write_all(&record));
        written.map_err(|source| StoreError::Io { path, source })?;
        if !existed {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn replace(&self, name: &str, state: &[u8]) -> Result<(), StoreError> {
        let path = self.path(name);
        let existed = path.exists();
        if !existed {
            std::fs::create_dir_all(&self.dir).map_err(|source| StoreError::Io { path: self.dir.clone(), source })?;
        }
        let tmp = self.dir.join(format!("{name}.ydoc.tmp"));
        let mut record = Vec::with_capacity(state.len() + 5);
        write_bytes(&mut record, state);
        let written = std::fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(&record)?;
            f.sync_all()
        });
        written.and_then(|()| std::fs::rename(&tmp, &path)).map_err(|source| StoreError::Io { path, source })?;
        if !existed {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_and_replaced_updates_load_back_and_a_torn_tail_is_ignored() {
        let dir = std::env::temp_dir().join(format!("tether-yjs-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = DirStore::open(&dir).unwrap();
        assert_eq!(store.load("a").unwrap(), Vec::<Vec<u8>>::new());
        store.append("a", b"one").unwrap();
        store.append("a", b"two").unwrap();
        assert_eq!(store.load("a").unwrap(), vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(store.count(), 1);
        store.replace("a", b"all").unwrap();
        assert_eq!(store.load("a").unwrap(), vec![b"all".to_vec()]);
        // A record cut short: length 9, 2 bytes present.
        std::fs::OpenOptions::new().append(true).open(dir.join("a.ydoc")).unwrap().write_all(&[9, 1, 2]).unwrap();
        assert_eq!(store.load("a").unwrap(), vec![b"all".to_vec()]);
        assert_eq!(DirStore::open(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
