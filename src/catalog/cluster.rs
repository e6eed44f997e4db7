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

/// Writes the cluster record.
pub async fn save(repo: &Repository, rec: &ClusterRecord) -> Result<(), RepoError> {
    repo.put_json(&repo.cluster_key(), rec).await
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
