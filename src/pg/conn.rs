//! The PostgreSQL connection (tokio-postgres) and the queries tidemark needs.

use anyhow::{bail, Context};
use tokio_postgres::{Client, NoTls};

use crate::wal::name::Lsn;

/// A held session (a non-exclusive backup must start and stop on the same one).
pub struct Session {
    client: Client,
    task: tokio::task::JoinHandle<()>,
    /// `server_version_num`.
    pub version: u32,
}

/// Facts about the server.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// System identifier.
    pub system_identifier: u64,
    /// Current timeline.
    pub timeline: u32,
    /// WAL segment size.
    pub wal_segment_size: u64,
    /// `data_directory`.
    pub data_directory: String,
    /// `archive_mode`.
    pub archive_mode: String,
    /// Tablespaces other than pg_default/pg_global: (oid, location).
    pub tablespaces: Vec<(u32, String)>,
    /// `block_size`.
    pub block_size: u64,
    /// `segment_size`: blocks per relation segment file.
    pub relseg_blocks: u64,
}

/// What the stop call returns.
#[derive(Debug, Clone)]
pub struct StopResult {
    /// Stop LSN.
    pub lsn: Lsn,
    /// backup_label contents.
    pub label: String,
    /// tablespace_map contents.
    pub tablespace_map: String,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Session {
    /// Connects with a libpq-style conninfo (Unix socket dir or TCP host).
    pub async fn connect(conninfo: &str) -> anyhow::Result<Session> {
        let (client, conn) = tokio_postgres::connect(conninfo, NoTls).await.with_context(|| {
            format!("cannot connect to PostgreSQL with conninfo '{conninfo}': is it running, and is postgres.conninfo right?")
        })?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "PostgreSQL connection closed");
            }
        });
        let mut s = Session { client, task, version: 0 };
        s.version = s.one("show server_version_num").await?.parse().context("server_version_num")?;
        if s.version < 120000 {
            bail!("PostgreSQL {} is not supported (12 or newer)", s.version);
        }
        Ok(s)
    }

    /// First column of the first row as text.
    pub async fn one(&self, sql: &str) -> anyhow::Result<String> {
        let msgs = self.client.simple_query(sql).await.with_context(|| format!("query failed: {sql}"))?;
        for m in msgs {
            if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
                return Ok(r.get(0).unwrap_or_default().to_string());
            }
        }
        bail!("query returned no rows: {sql}")
    }

    /// Server facts used by backups.
    pub async fn info(&self) -> anyhow::Result<ServerInfo> {
        let sysid = self.one("select system_identifier::text from pg_control_system()").await?;
        let tli = self.one("select timeline_id::text from pg_control_checkpoint()").await?;
        let seg = self.one("select setting from pg_settings where name = 'wal_segment_size'").await?;
        let rows = self
            .client
            .query("select oid::int8, pg_tablespace_location(oid) from pg_tablespace where spcname not in ('pg_default', 'pg_global')", &[])
            .await
            .context("listing tablespaces")?;
        let mut tablespaces = Vec::new();
        for r in rows {
            let oid: i64 = r.get(0);
            let loc: String = r.get(1);
            tablespaces.push((oid as u32, loc));
        }
        Ok(ServerInfo {
            system_identifier: sysid.parse().context("system_identifier")?,
            timeline: tli.parse().context("timeline_id")?,
            wal_segment_size: seg.parse().context("wal_segment_size")?,
            data_directory: self.one("show data_directory").await?,
            archive_mode: self.one("show archive_mode").await?,
            tablespaces,
            block_size: self
                .one("select setting from pg_settings where name = 'block_size'")
                .await?
                .parse()
                .context("block_size")?,
            relseg_blocks: self
                .one("select setting from pg_settings where name = 'segment_size'")
                .await?
                .parse()
                .context("segment_size")?,
        })
    }

    /// Starts a non-exclusive backup with an immediate checkpoint; returns the start LSN.
    pub async fn backup_start(&self, label: &str) -> anyhow::Result<Lsn> {
        let (sql, _) = backup_sql(self.version);
        let row = self.client.query_one(sql, &[&label]).await.context("starting the backup")?;
        let lsn: String = row.get(0);
        Ok(lsn.parse()?)
    }

    /// Stops the backup (PostgreSQL still switches to a new segment). It does not wait for
    /// the archiver: PostgreSQL re-checks only once a second, so the caller waits for the
    /// stop segment in the repository instead (`backup::wait_for_wal`).
    pub async fn backup_stop(&self) -> anyhow::Result<StopResult> {
        let (_, sql) = backup_sql(self.version);
        let row = self.client.query_one(sql, &[]).await.context("stopping the backup")?;
        let lsn: String = row.get(0);
        Ok(StopResult {
            lsn: lsn.parse()?,
            label: row.get(1),
            tablespace_map: row.get::<_, Option<String>>(2).unwrap_or_default(),
        })
    }
}

/// The backup start and stop queries for `server_version_num` (pure). 15 renamed the
/// functions and dropped exclusive backups; 12–14 take `exclusive = false` explicitly
/// (non-exclusive: start and stop on one held session). Neither waits for the archiver
/// (`wait_for_archive = false`): the caller polls the repository for the stop segment.
pub fn backup_sql(version: u32) -> (&'static str, &'static str) {
    if version >= 150000 {
        ("select pg_backup_start($1, true)::text", "select lsn::text, labelfile, spcmapfile from pg_backup_stop(false)")
    } else {
        (
            "select pg_start_backup($1, true, false)::text",
            "select lsn::text, labelfile, spcmapfile from pg_stop_backup(false, false)",
        )
    }
}

/// Runs `sql` on the server listening on the socket in `socket_dir` at `port` (user and
/// database from `conninfo`), and returns the first column of the first row it returns
/// (`None`: no rows, or NULL).
pub async fn first_value(
    conninfo: &str,
    socket_dir: &std::path::Path,
    port: u16,
    sql: &str,
) -> anyhow::Result<Option<String>> {
    let src: tokio_postgres::Config =
        conninfo.parse().with_context(|| format!("postgres.conninfo '{conninfo}' does not parse"))?;
    // Only its user and database: the host is the one given.
    let mut c = tokio_postgres::Config::new();
    if let Some(u) = src.get_user() {
        c.user(u);
    }
    if let Some(d) = src.get_dbname() {
        c.dbname(d);
    }
    if let Some(p) = src.get_password() {
        c.password(p);
    }
    c.host_path(socket_dir).port(port);
    let (client, conn) = c
        .connect(NoTls)
        .await
        .with_context(|| format!("cannot connect to the server on {} port {port}", socket_dir.display()))?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let msgs = client.simple_query(sql).await.context("running the query")?;
    drop(client);
    let _ = task.await;
    Ok(msgs
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        })
        .flatten())
}

/// One relation file the live catalog names (a table, index, TOAST table, materialized
/// view or sequence with storage).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LiveRelation {
    /// The database's oid.
    pub db_oid: u32,
    /// The database's name.
    pub database: String,
    /// The relation's file number (`pg_relation_filenode`).
    pub relfilenode: u32,
    /// The relation's oid (stays when `TRUNCATE` or a rewrite gives it a new file).
    pub oid: u32,
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
    /// `relkind` (`r` table, `i` index, `t` TOAST, `m` materialized view, `S` sequence).
    pub kind: char,
}

/// The relation files of every database that accepts connections, named as the live
/// catalog names them (one connection per database, as `conninfo`'s user). A database
/// that refuses the connection is left out and named in the second list.
pub async fn relations(conninfo: &str) -> anyhow::Result<(Vec<LiveRelation>, Vec<String>)> {
    const DBS: &str = "select oid, datname from pg_database where datallowconn and not datistemplate order by oid";
    // Temporary relations die with their session; the system catalogs are not what anyone restores for.
    const RELS: &str = "select c.oid, pg_relation_filenode(c.oid), n.nspname, c.relname, c.relkind \
        from pg_class c join pg_namespace n on n.oid = c.relnamespace \
        where c.relkind in ('r', 'i', 't', 'm', 'S') and c.relpersistence <> 't' \
        and n.nspname not in ('pg_catalog', 'information_schema') and pg_relation_filenode(c.oid) is not null";
    let base: tokio_postgres::Config =
        conninfo.parse().with_context(|| format!("postgres.conninfo '{conninfo}' does not parse"))?;
    let rows = |msgs: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<Vec<String>> {
        msgs.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).unwrap_or_default().to_string()).collect())
                }
                _ => None,
            })
            .collect()
    };
    let first = Session::connect(conninfo).await?;
    let dbs = rows(first.client.simple_query(DBS).await.context("listing databases")?);
    drop(first);
    let (mut out, mut refused) = (Vec::new(), Vec::new());
    for db in dbs {
        let (Some(oid), Some(name)) = (db.first().and_then(|o| o.parse::<u32>().ok()), db.get(1)) else { continue };
        let mut c = base.clone();
        c.dbname(name);
        let client = match c.connect(NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                client
            }
            Err(e) => {
                tracing::warn!(database = %name, error = %e, "cannot read this database's relation names");
                refused.push(name.clone());
                continue;
            }
        };
        let found = rows(client.simple_query(RELS).await.with_context(|| format!("listing relations of {name}"))?);
        for r in found {
            let (Some(rel_oid), Some(file)) =
                (r.first().and_then(|v| v.parse().ok()), r.get(1).and_then(|v| v.parse().ok()))
            else {
                continue;
            };
            out.push(LiveRelation {
                db_oid: oid,
                database: name.clone(),
                relfilenode: file,
                oid: rel_oid,
                schema: r.get(2).cloned().unwrap_or_default(),
                name: r.get(3).cloned().unwrap_or_default(),
                kind: r.get(4).and_then(|k| k.chars().next()).unwrap_or('?'),
            });
        }
    }
    Ok((out, refused))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_functions_per_major() {
        for v in [130023, 140023] {
            let (start, stop) = backup_sql(v);
            assert!(start.contains("pg_start_backup($1, true, false)"), "{v}");
            assert!(stop.contains("pg_stop_backup(false, false)"), "{v}");
        }
        for v in [150000, 160014, 170010, 180004] {
            let (start, stop) = backup_sql(v);
            assert!(start.contains("pg_backup_start($1, true)"), "{v}");
            assert!(stop.contains("pg_backup_stop(false)"), "{v}");
        }
    }
}
