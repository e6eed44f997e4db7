//! `cluster.json`: a handle's identity (system identifier, segment size) and lifecycle state.

use serde::{Deserialize, Serialize};

use crate::repo::{RepoError, Repository};

/// Lifecycle state of a cluster handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    /// Archiving and backing up.
    Active,
    /// Deprovisioned: only final and manual backups remain.
    Deprovisioned,
}

/// The record stored at `clusters/<handle>/cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// The handle.
    pub handle: String,
    /// PostgreSQL system identifier (decimal string: JSON numbers lose precision above 2^53).
    pub system_identifier: String,
    /// WAL segment size in bytes.
    pub wal_segment_size: u64,
    /// Lifecycle state.
    pub state: ClusterState,
    /// When the handle was first used (RFC 3339).
    pub created_at: String,
    /// When it was deprovisioned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deprovisioned_at: Option<String>,
    /// Whether new automatic backups are taken.
    #[serde(default = "yes")]
    pub automatic_backups: bool,
}

fn yes() -> bool {
    true
}

/// Reads the cluster record; `None` for a handle never used.
pub async fn load(repo: &Repository) -> Result<Option<ClusterRecord>, RepoError> {
    repo.get_json(&repo.cluster_key()).await
}

/// Why a handle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The repository failed.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The record vanished between a refused create and the read after it.
    #[error("cluster record {0} exists but cannot be read back; retry, and check the repository")]
    Vanished(String),
    /// An update would change who the handle belongs to.
    #[error("cluster '{handle}' in the repository belongs to system identifier {stored}, not {new}; the record was left as it is")]
    Identity {
        /// Handle.
        handle: String,
        /// Identifier recorded.
        stored: String,
        /// Identifier of the update.
        new: String,
    },
}

/// The handle's record, created for this database if the handle is new. Creation is a
/// put-if-absent (S3 `If-None-Match`, a link on the directory store), so when two new
/// databases start on one handle at once exactly one record wins and both read it back:
/// the loser's identity check then refuses it.
pub async fn claim(
    repo: &Repository,
    system_identifier: u64,
    wal_segment_size: u64,
) -> Result<ClusterRecord, ClaimError> {
    if let Some(r) = load(repo).await? {
        return Ok(r);
    }
    let r = ClusterRecord::new(repo.cluster(), system_identifier, wal_segment_size);
    match repo.put_json_if_absent(&repo.cluster_key(), &r).await? {
        crate::store::PutOutcome::Created => Ok(r),
        crate::store::PutOutcome::Exists => load(repo).await?.ok_or_else(|| ClaimError::Vanished(repo.cluster_key())),
    }
}

/// Rewrites the record's state; refuses to change the handle's identity (system
/// identifier, segment size), which only [`claim`] sets.
pub async fn update(repo: &Repository, rec: &ClusterRecord) -> Result<(), ClaimError> {
    if let Some(stored) = load(repo).await? {
        if stored.system_identifier != rec.system_identifier || stored.wal_segment_size != rec.wal_segment_size {
            return Err(ClaimError::Identity {
                handle: stored.handle,
                stored: stored.system_identifier,
                new: rec.system_identifier.clone(),
            });
        }
    }
    Ok(repo.put_json(&repo.cluster_key(), rec).await?)
}

impl ClusterRecord {
    /// A new active record.
    pub fn new(handle: &str, system_identifier: u64, wal_segment_size: u64) -> ClusterRecord {
        ClusterRecord {
            handle: handle.to_string(),
            system_identifier: system_identifier.to_string(),
            wal_segment_size,
            state: ClusterState::Active,
            created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            deprovisioned_at: None,
            automatic_backups: true,
        }
    }
}
