//! Which table each relation file belonged to: a map from (database, relfilenode) to the
//! schema-qualified name, kept from the live catalog so that names survive a `DROP` (WAL
//! names relation files by number only), and what a commit that removed a file did to it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::catalog::backup::time_format;
use crate::pg::conn::LiveRelation;
use crate::repo::{RepoError, Repository};

/// Names of files gone from the live catalog are kept this long (a year of PITR windows).
pub const KEEP_GONE_DAYS: i64 = 400;

/// One relation file as the live catalog named it, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelName {
    /// The file and its relation (a `TRUNCATE` or rewrite keeps the oid and changes the file).
    #[serde(flatten)]
    pub rel: LiveRelation,
    /// When a refresh first saw the file.
    #[serde(with = "time_format")]
    pub first_seen: DateTime<Utc>,
    /// When a refresh first missed it (the file was removed or renumbered by then).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time_format::option")]
    pub gone: Option<DateTime<Utc>>,
}

impl RelName {
    /// `schema.name`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.rel.schema, self.rel.name)
    }
}

/// The stored map.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelNames {
    /// Format version.
    pub version: u32,
    /// The last refresh from the live catalog.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time_format::option")]
    pub refreshed: Option<DateTime<Utc>>,
    /// By (database oid, relfilenode).
    pub files: Vec<RelName>,
}

/// What a commit that removed a relation's file did to the relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Removal {
    /// The relation is gone (`DROP`).
    Dropped,
    /// The relation lives on with a new file: `TRUNCATE`, or a rewrite (`VACUUM FULL`,
    /// `CLUSTER`, `REINDEX`, an `ALTER TABLE` that rewrites).
    Truncated,
    /// The file was never seen by a refresh: its name is not known.
    Unknown,
}

impl RelNames {
    /// Folds one refresh of the live catalog in (pure): new files are added, files the
    /// catalog no longer has are marked gone, and names gone for longer than
    /// [`KEEP_GONE_DAYS`] are forgotten. Returns whether anything but the refresh time changed.
    pub fn merge(&mut self, live: &[LiveRelation], now: DateTime<Utc>) -> bool {
        let mut by_key: BTreeMap<(u32, u32), RelName> =
            std::mem::take(&mut self.files).into_iter().map(|r| ((r.rel.db_oid, r.rel.relfilenode), r)).collect();
        let mut changed = false;
        let mut seen = std::collections::BTreeSet::new();
        for l in live {
            let key = (l.db_oid, l.relfilenode);
            seen.insert(key);
            match by_key.get_mut(&key) {
                // Same relation, perhaps renamed (a rename keeps the file): the newest name.
                Some(old) if old.rel.oid == l.oid => {
                    if old.gone.is_some() || old.rel != *l {
                        old.gone = None;
                        old.rel = l.clone();
                        changed = true;
                    }
                }
                // A number reused by another relation (or never seen): this one now.
                _ => {
                    by_key.insert(key, RelName { rel: l.clone(), first_seen: now, gone: None });
                    changed = true;
                }
            }
        }
        let horizon = now - chrono::Duration::days(KEEP_GONE_DAYS);
        by_key.retain(|key, r| {
            if seen.contains(key) {
                return true;
            }
            match r.gone {
                None => {
                    r.gone = Some(now);
                    changed = true;
                    true
                }
                Some(g) if g < horizon => {
                    changed = true;
                    false
                }
                Some(_) => true,
            }
        });
        self.version = 1;
        self.refreshed = Some(now);
        self.files = by_key.into_values().collect();
        changed
    }

    /// The file (database `db_oid`, `relfilenode`), if a refresh saw it.
    pub fn file(&self, db_oid: u32, relfilenode: u32) -> Option<&RelName> {
        self.files.iter().find(|r| r.rel.db_oid == db_oid && r.rel.relfilenode == relfilenode)
    }

    /// What removing this file did to its relation (pure): it lives on when the catalog
    /// later named the same relation with another file.
    pub fn removal(&self, db_oid: u32, relfilenode: u32) -> Removal {
        let Some(r) = self.file(db_oid, relfilenode) else { return Removal::Unknown };
        let lives_on = self.files.iter().any(|o| {
            o.rel.db_oid == db_oid
                && o.rel.oid == r.rel.oid
                && o.rel.relfilenode != relfilenode
                && o.first_seen >= r.first_seen
        });
        if lives_on {
            Removal::Truncated
        } else {
            Removal::Dropped
        }
    }

    /// Whether `name` (`table` or `schema.table`, optionally `database.schema.table`)
    /// names this file's relation (pure). Exact, as the catalog spells it.
    pub fn matches(r: &RelName, name: &str) -> bool {
        let parts: Vec<&str> = name.split('.').collect();
        match parts.as_slice() {
            [t] => r.rel.name == *t,
            [s, t] => r.rel.schema == *s && r.rel.name == *t,
            [d, s, t] => r.rel.database == *d && r.rel.schema == *s && r.rel.name == *t,
            _ => false,
        }
    }
}

/// Reads the stored map (empty when there is none).
pub async fn load(repo: &Repository) -> Result<RelNames, RepoError> {
    Ok(repo.get_json(&repo.relation_names_key()).await?.unwrap_or_default())
}

/// Refreshes the stored map from the live catalog: reads every database's relation files
/// and writes the map when a file was added or went. Returns the map and the databases
/// that refused the connection.
pub async fn refresh(repo: &Repository, conninfo: &str) -> anyhow::Result<(RelNames, Vec<String>)> {
    let (live, refused) = crate::pg::conn::relations(conninfo).await?;
    let mut map = load(repo).await?;
    if map.merge(&live, time_format::now()) {
        repo.put_json(&repo.relation_names_key(), &map).await?;
    }
    Ok((map, refused))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A live table `app.public.<name>` in database `db` (for the tests here and in `find`).
    pub(crate) fn live(db: u32, file: u32, oid: u32, name: &str) -> LiveRelation {
        LiveRelation {
            db_oid: db,
            database: "app".into(),
            relfilenode: file,
            oid,
            schema: "public".into(),
            name: name.into(),
            kind: 'r',
        }
    }

    /// `s` seconds after a fixed moment.
    pub(crate) fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn a_drop_keeps_the_name_and_marks_the_file_gone() {
        let mut m = RelNames::default();
        assert!(m.merge(&[live(5, 100, 100, "orders"), live(5, 200, 200, "lines")], at(0)));
        assert!(!m.merge(&[live(5, 100, 100, "orders"), live(5, 200, 200, "lines")], at(60)), "nothing new");
        assert!(m.merge(&[live(5, 200, 200, "lines")], at(120)));
        let orders = m.file(5, 100).unwrap();
        assert_eq!((orders.qualified().as_str(), orders.gone), ("public.orders", Some(at(120))));
        assert_eq!(m.removal(5, 100), Removal::Dropped);
        assert_eq!(m.refreshed, Some(at(120)));
    }

    #[test]
    fn a_stored_name_keeps_its_fields_at_the_top_level() {
        let mut m = RelNames::default();
        m.merge(&[live(5, 100, 100, "orders")], at(0));
        let v = serde_json::to_value(&m.files[0]).unwrap();
        for k in ["db_oid", "database", "relfilenode", "oid", "schema", "name", "kind", "first_seen"] {
            assert!(v.get(k).is_some(), "{k} missing: {v}");
        }
        assert_eq!(serde_json::from_value::<RelName>(v).unwrap(), m.files[0]);
    }

    #[test]
    fn a_new_file_for_the_same_relation_is_a_truncate() {
        let mut m = RelNames::default();
        m.merge(&[live(5, 200, 200, "lines")], at(0));
        m.merge(&[live(5, 201, 200, "lines")], at(60));
        assert_eq!(m.removal(5, 200), Removal::Truncated);
        // The newer file, dropped later, is a drop.
        m.merge(&[], at(120));
        assert_eq!(m.removal(5, 201), Removal::Dropped);
        assert_eq!(m.removal(5, 999), Removal::Unknown);
    }

    #[test]
    fn a_rename_keeps_the_file_and_takes_the_new_name() {
        let mut m = RelNames::default();
        m.merge(&[live(5, 100, 100, "orders")], at(0));
        assert!(m.merge(&[live(5, 100, 100, "orders_old")], at(60)));
        assert_eq!(m.files.len(), 1);
        assert_eq!(m.file(5, 100).unwrap().rel.name, "orders_old");
        assert_eq!(m.file(5, 100).unwrap().first_seen, at(0));
    }

    #[test]
    fn a_reused_number_names_the_newer_relation() {
        let mut m = RelNames::default();
        m.merge(&[live(5, 100, 100, "orders")], at(0));
        m.merge(&[live(5, 100, 300, "other")], at(60));
        assert_eq!(m.file(5, 100).unwrap().rel.name, "other");
    }

    #[test]
    fn gone_names_are_forgotten_after_the_keep_period() {
        let mut m = RelNames::default();
        m.merge(&[live(5, 100, 100, "orders")], at(0));
        m.merge(&[], at(10));
        m.merge(&[], at(10 + KEEP_GONE_DAYS * 86_400 - 1));
        assert!(m.file(5, 100).is_some());
        assert!(m.merge(&[], at(20 + KEEP_GONE_DAYS * 86_400)));
        assert!(m.file(5, 100).is_none());
    }

    #[test]
    fn names_match_bare_schema_and_database_qualified() {
        let mut m = RelNames::default();
        m.merge(&[live(5, 100, 100, "orders")], at(0));
        let r = m.file(5, 100).unwrap();
        for (name, want) in [
            ("orders", true),
            ("public.orders", true),
            ("app.public.orders", true),
            ("other.orders", false),
            ("Orders", false),
            ("x.app.public.orders", false),
        ] {
            assert_eq!(RelNames::matches(r, name), want, "{name}");
        }
    }
}
