//! SQLite files shared by the nodes of one process. Nodes started in one
//! process on one file (`fastchat up --nodes 3`, the bench's cross-node
//! cluster) share one store: its single writer groups every node's
//! requests into one commit, where separate stores would each commit
//! small groups and take turns at the file's write lock.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Durability, SqliteStore, Store, StoreError};

/// Files open in this process: the store and how many nodes use it.
static OPEN: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

struct Entry {
    file: PathBuf,
    durability: Durability,
    store: Arc<SqliteStore>,
    users: usize,
}

/// One node's use of a shared SQLite store; [`SharedSqlite::close`] closes
/// the file once the last node using it is done.
pub struct SharedSqlite {
    file: PathBuf,
    durability: Durability,
    store: Arc<SqliteStore>,
}

impl SharedSqlite {
    /// Opens `path`, or joins the store another node of this process has
    /// open on the same file with the same durability.
    pub fn open(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let file = same_file_key(path);
        let mut open = OPEN.lock().expect("shared stores lock");
        if let Some(e) = open
            .iter_mut()
            .find(|e| e.file == file && e.durability == durability)
        {
            e.users += 1;
            return Ok(Self {
                file,
                durability,
                store: e.store.clone(),
            });
        }
        let store = Arc::new(SqliteStore::open(path, durability)?);
        open.push(Entry {
            file: file.clone(),
            durability,
            store: store.clone(),
            users: 1,
        });
        Ok(Self {
            file,
            durability,
            store,
        })
    }

    /// The store, for the node's requests.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Leaves the store; the last node to leave closes it.
    pub async fn close(self) {
        let last = {
            let mut open = OPEN.lock().expect("shared stores lock");
            let at = open
                .iter()
                .position(|e| e.file == self.file && e.durability == self.durability);
            match at {
                Some(i) => {
                    open[i].users -= 1;
                    (open[i].users == 0).then(|| open.swap_remove(i))
                }
                None => None,
            }
        };
        if last.is_some() {
            self.store.close().await;
        }
    }
}

/// The same path for every spelling of one file: the canonical directory
/// (the file itself may not exist yet) and the file's name.
fn same_file_key(path: &Path) -> PathBuf {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    match (std::fs::canonicalize(dir), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nodes_on_one_file_share_a_store_until_the_last_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.db");
        let a = SharedSqlite::open(&path, Durability::Process).unwrap();
        let other_spelling = dir.path().join(".").join("cluster.db");
        let b = SharedSqlite::open(&other_spelling, Durability::Process).unwrap();
        assert!(Arc::ptr_eq(&a.store, &b.store));
        a.store().create_user("alice", b"key", None).await.unwrap();
        a.close().await;
        // The other node still uses the file.
        assert_eq!(
            b.store().public_key("alice").await.unwrap().unwrap(),
            b"key"
        );
        let closed = b.store.clone();
        b.close().await;
        assert!(matches!(
            closed.public_key("alice").await,
            Err(StoreError::Unavailable(_))
        ));
        // Opened again, it is a fresh store on the same data.
        let c = SharedSqlite::open(&path, Durability::Process).unwrap();
        assert!(!Arc::ptr_eq(&c.store, &closed));
        assert_eq!(
            c.store().public_key("alice").await.unwrap().unwrap(),
            b"key"
        );
        c.close().await;
    }
}
