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
    #[serde(deserialize_with = "valid_segment_size")]
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

/// A segment size PostgreSQL can have, or a parse error: every WAL object name of the
/// handle is computed by dividing by it (found by fuzzing: a damaged 6777216 was accepted).
fn valid_segment_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(d)?;
    crate::wal::name::check_segment_size(n).map_err(serde::de::Error::custom)?;
    Ok(n)
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

/// The cluster's segment size from the repository (16 MiB when unknown).
pub async fn segment_size(repo: &Repository) -> Result<u64, crate::repo::RepoError> {
    Ok(load(repo).await?.map(|r| r.wal_segment_size).unwrap_or(crate::wal::name::DEFAULT_SEGMENT_SIZE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_with_an_impossible_segment_size_does_not_parse() {
        let good = serde_json::to_string(&ClusterRecord::new("c", 7, 16 << 20)).unwrap();
        assert!(serde_json::from_str::<ClusterRecord>(&good).is_ok());
        // The fuzzer's find: one digit dropped from 16777216.
        for bad in ["6777216", "0", "3145728", "2147483648"] {
            let text = good.replace("16777216", bad);
            let e = serde_json::from_str::<ClusterRecord>(&text).unwrap_err().to_string();
            assert!(e.contains("segment size"), "{bad}: {e}");
        }
    }
}

/// Bounded fuzzing of cluster record parsing: damaged JSON is an error or a usable record.
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::catalog::backup::fuzz::{json_mutations, json_value, mutate};
    use proptest::prelude::*;

    fn sample() -> serde_json::Value {
        let mut r = ClusterRecord::new("orders-db", 7_301_234_567_890_123_456, 16 << 20);
        r.state = ClusterState::Deprovisioned;
        r.deprovisioned_at = Some("2026-12-01T00:00:00Z".into());
        serde_json::to_value(&r).unwrap()
    }

    /// What a loaded record is used for: its segment size names every WAL object.
    fn use_record(r: &ClusterRecord) -> Result<(), TestCaseError> {
        prop_assert!(
            crate::wal::name::check_segment_size(r.wal_segment_size).is_ok(),
            "a record with segment size {} was accepted",
            r.wal_segment_size
        );
        let seg = crate::wal::name::Segment { timeline: 1, number: 3 };
        let _ = crate::wal::name::Segment::parse(&seg.name(r.wal_segment_size), r.wal_segment_size);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn fuzz_mutated_cluster_records_parse_or_fail_cleanly(muts in json_mutations(3)) {
            let bytes = mutate(&sample(), &muts);
            if let Ok(r) = serde_json::from_slice::<ClusterRecord>(&bytes) {
                use_record(&r)?;
                let again: ClusterRecord = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
                prop_assert_eq!(again, r);
            }
        }

        #[test]
        fn fuzz_arbitrary_json_is_not_a_cluster_record_panic(v in json_value()) {
            if let Ok(r) = serde_json::from_value::<ClusterRecord>(v) {
                use_record(&r)?;
            }
        }
    }
}
