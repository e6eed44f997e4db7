//! The repository: an object store plus the keyring, and the object key layout of DESIGN.md.
//! Every object goes through the codec, so everything stored is compressed and encrypted.

pub mod cluster;

use std::sync::Arc;

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::{self, CodecError, Keyring};
use crate::config::Config;
use crate::store::{self, ObjectStore, StoreError};
use crate::wal::name::{timeline_hex, WalFile};

/// Repository-level failures.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An object failed to open.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A JSON document is malformed.
    #[error("{0}: malformed JSON document: {1}")]
    Json(String, String),
    /// The keyring failed to load.
    #[error(transparent)]
    Keyring(#[from] codec::KeyringError),
}

/// A store with a keyring and this cluster's key layout.
#[derive(Clone, Debug)]
pub struct Repository {
    store: Arc<dyn ObjectStore>,
    keyring: Arc<Keyring>,
    level: i32,
    cluster: String,
    /// EC2 endpoint override for the backups' EBS snapshots (part of the repository's data).
    ec2_endpoint: Option<String>,
    /// Reads in flight at once when loading many objects (`repository.max_in_flight`).
    in_flight: usize,
    /// Requests sent to the store, when opened from a config.
    requests: Option<Arc<store::counting::Counts>>,
}

impl Repository {
    /// Opens the configured repository and keyring.
    pub async fn open(cfg: &Config) -> Result<Repository, RepoError> {
        let keyring = Keyring::load(&cfg.encryption.keyring)?;
        let counting = store::counting::Counting::new(store::open(&cfg.repository.url, &cfg.store_options()).await?);
        let requests = counting.counts.clone();
        let store: Arc<dyn ObjectStore> = Arc::new(counting);
        let mut repo = Repository::new(store, Arc::new(keyring), cfg.archive.compression_level, &cfg.cluster);
        repo.requests = Some(requests);
        repo.ec2_endpoint = cfg.ebs.endpoint.clone();
        repo.in_flight = cfg.repository.max_in_flight.max(1);
        Ok(repo)
    }

    /// Assembles a repository from parts.
    pub fn new(store: Arc<dyn ObjectStore>, keyring: Arc<Keyring>, level: i32, cluster: &str) -> Repository {
        Repository {
            store,
            keyring,
            level,
            cluster: cluster.to_string(),
            ec2_endpoint: None,
            in_flight: 32,
            requests: None,
        }
    }

    /// The same repository seen as another cluster handle.
    pub fn for_cluster(&self, cluster: &str) -> Repository {
        Repository { cluster: cluster.to_string(), ..self.clone() }
    }

    /// Requests sent to the store so far (repositories opened from a config count them).
    pub fn requests(&self) -> Option<&store::counting::Counts> {
        self.requests.as_deref()
    }

    /// How many reads to keep in flight when loading many objects.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// EC2 endpoint override for EBS snapshots, if any.
    pub fn ec2_endpoint(&self) -> Option<&str> {
        self.ec2_endpoint.as_deref()
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The keyring.
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// The cluster handle.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// zstd level for new objects.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// `clusters/<handle>/`
    pub fn cluster_prefix(&self) -> String {
        format!("clusters/{}/", self.cluster)
    }

    /// `clusters/<handle>/cluster.json`
    pub fn cluster_key(&self) -> String {
        format!("clusters/{}/cluster.json", self.cluster)
    }

    /// `clusters/<handle>/wal/<TLI>/`
    pub fn wal_prefix(&self, timeline: u32) -> String {
        format!("clusters/{}/wal/{}/", self.cluster, timeline_hex(timeline))
    }

    /// `clusters/<handle>/wal/`
    pub fn wal_root(&self) -> String {
        format!("clusters/{}/wal/", self.cluster)
    }

    /// Object key of one WAL file.
    pub fn wal_key(&self, file: &WalFile, seg_size: u64) -> String {
        format!("{}{}", self.wal_prefix(file.timeline()), file.file_name(seg_size))
    }

    /// Object key of a segment's commit-time summary.
    pub fn wal_index_key(&self, timeline: u32, segment_name: &str) -> String {
        format!("clusters/{}/wal-index/{}/{}", self.cluster, timeline_hex(timeline), segment_name)
    }

    /// `clusters/<handle>/backups/<id>/`
    pub fn backup_prefix(&self, id: &str) -> String {
        format!("clusters/{}/backups/{}/", self.cluster, id)
    }

    /// `clusters/<handle>/drills/`: the restore drills' records.
    pub fn drill_prefix(&self) -> String {
        format!("clusters/{}/drills/", self.cluster)
    }

    /// Object key of drill `id`'s record.
    pub fn drill_key(&self, id: &str) -> String {
        format!("{}{id}.json", self.drill_prefix())
    }

    /// `clusters/<handle>/relation-names.json`: which table each relation file belonged to.
    pub fn relation_names_key(&self) -> String {
        format!("clusters/{}/relation-names.json", self.cluster)
    }

    /// Object key of bundle `name` of backup `id` (`backups/<id>/data/<name>`).
    pub fn bundle_key(&self, id: &str, name: &str) -> String {
        format!("{}data/{name}", self.backup_prefix(id))
    }

    /// Seals `data` and stores it at `key`, replacing any previous object.
    pub async fn put_sealed(&self, key: &str, data: Bytes) -> Result<(), RepoError> {
        let sealed = self.seal(key, data).await?;
        Ok(self.store.put(key, sealed).await?)
    }

    /// The keyring and compression level objects are sealed with.
    pub fn sealing(&self) -> (&Keyring, i32) {
        (&self.keyring, self.level)
    }

    /// Seals bytes on a blocking thread.
    pub async fn seal(&self, key: &str, data: Bytes) -> Result<Bytes, RepoError> {
        let ring = self.keyring.clone();
        let level = self.level;
        let k = key.to_string();
        let sealed = tokio::task::spawn_blocking(move || codec::seal_to_vec(&ring, &k, level, &data))
            .await
            .map_err(|e| CodecError::Io(key.to_string(), std::io::Error::other(e)))??;
        Ok(Bytes::from(sealed))
    }

    /// Reads and opens an object; `None` when absent.
    pub async fn get_opened(&self, key: &str) -> Result<Option<Vec<u8>>, RepoError> {
        let Some(sealed) = self.store.get_bytes(key).await? else {
            return Ok(None);
        };
        let ring = self.keyring.clone();
        let k = key.to_string();
        let plain = tokio::task::spawn_blocking(move || codec::open_to_vec(&ring, &k, &sealed))
            .await
            .map_err(|e| CodecError::Io(key.to_string(), std::io::Error::other(e)))??;
        Ok(Some(plain))
    }

    /// Reads, opens and hashes an object without keeping its plaintext; `None` when absent.
    pub async fn digest_of(&self, key: &str) -> Result<Option<String>, RepoError> {
        let Some(sealed) = self.store.get_bytes(key).await? else {
            return Ok(None);
        };
        let ring = self.keyring.clone();
        let k = key.to_string();
        let digest = tokio::task::spawn_blocking(move || {
            let mut w = Sha256::new();
            codec::open(&ring, &k, &sealed[..], &mut w).map(|_| hex::encode(w.finalize()))
        })
        .await
        .map_err(|e| CodecError::Io(key.to_string(), std::io::Error::other(e)))??;
        Ok(Some(digest))
    }

    /// Stores a JSON document, sealed.
    pub async fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), RepoError> {
        let data = serde_json::to_vec_pretty(value).map_err(|e| RepoError::Json(key.to_string(), e.to_string()))?;
        self.put_sealed(key, Bytes::from(data)).await
    }

    /// Stores a JSON document, sealed, unless an object exists under `key`.
    pub async fn put_json_if_absent<T: Serialize>(&self, key: &str, value: &T) -> Result<store::PutOutcome, RepoError> {
        let data = serde_json::to_vec_pretty(value).map_err(|e| RepoError::Json(key.to_string(), e.to_string()))?;
        let sealed = self.seal(key, Bytes::from(data)).await?;
        Ok(self.store.put_if_absent(key, sealed).await?)
    }

    /// Reads a sealed JSON document; `None` when absent.
    pub async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, RepoError> {
        let Some(plain) = self.get_opened(key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&plain).map(Some).map_err(|e| RepoError::Json(key.to_string(), e.to_string()))
    }
}
