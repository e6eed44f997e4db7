//! TOML configuration with defaults, `TIDEMARK_<SECTION>_<FIELD>` environment overrides,
//! unknown keys rejected, and validation errors that name the field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default config file location.
pub const DEFAULT_PATH: &str = "/etc/tidemark/tidemark.toml";

/// A configuration problem; exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The TOML is malformed, has an unknown key, or a value of the wrong type.
    #[error("config {0}: {1}")]
    Parse(String, String),
    /// A value is out of range or inconsistent.
    #[error("config field `{0}`: {1}")]
    Invalid(&'static str, String),
    /// No config was named and none is at the default path.
    #[error("no config file at {0} (and neither --config nor TIDEMARK_CONFIG names one): copy tidemark.example.toml there and edit it, or pass --config FILE")]
    Missing(PathBuf),
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Cluster handle: this database's name in the repository.
    pub cluster: String,
    /// PostgreSQL settings.
    pub postgres: PostgresConfig,
    /// Where backups and WAL go.
    pub repository: RepositoryConfig,
    /// Keys.
    pub encryption: EncryptionConfig,
    /// WAL archiving.
    pub archive: ArchiveConfig,
    /// WAL fetching during recovery.
    pub fetch: FetchConfig,
    /// Base backups.
    pub backup: BackupConfig,
    /// The agent process.
    pub daemon: DaemonConfig,
    /// EBS snapshot provider.
    pub ebs: EbsConfig,
    /// Restore drills.
    pub drill: DrillConfig,
    /// Repositories holding cross-region copies, by region (`[regions.us-west-1]`).
    pub regions: std::collections::BTreeMap<String, RegionConfig>,
    /// The file this was read from (absolute), when one was: what a restored cluster's
    /// restore_command reads.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[regions.<region>]`: where copies in that region go.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// `s3://bucket/prefix` (or `file://` for tests and on-premises mirrors).
    pub url: String,
    /// S3-compatible endpoint.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// KMS key for EBS snapshot copies in that region (default: the account's EBS key).
    #[serde(default)]
    pub kms_key_id: Option<String>,
}

/// `[postgres]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// The data directory.
    pub data_dir: PathBuf,
    /// libpq-style connection string.
    pub conninfo: String,
    /// Directory of pg_ctl, initdb, postgres; found from PATH when absent.
    pub bin_dir: Option<PathBuf>,
    /// OS user that runs PostgreSQL for restores and the demo.
    pub os_user: String,
}

/// `[repository]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepositoryConfig {
    /// `file:///path` or `s3://bucket/prefix`.
    pub url: String,
    /// S3 region.
    pub region: Option<String>,
    /// S3-compatible endpoint.
    pub endpoint: Option<String>,
    /// Most repository reads a command has in flight at once (open files on a directory,
    /// requests on S3): bounded, so neither grows with the archive.
    pub max_in_flight: usize,
}

/// `[encryption]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    /// Keyring file (mode 0600).
    pub keyring: PathBuf,
}

/// `[archive]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// zstd level.
    pub compression_level: i32,
    /// Parallel uploads (daemon read-ahead).
    pub workers: usize,
}

/// `[fetch]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FetchConfig {
    /// Segments to read ahead on a miss.
    pub prefetch: usize,
    /// Directory for read-ahead segments.
    pub spool_dir: PathBuf,
}

/// How a backup captures the data directory (`backup.provider`, and each manifest's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// A portable file-level copy, packed into sealed bundles.
    Files,
    /// EBS snapshots of the volumes under the data directory.
    Ebs,
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provider::Files => "files",
            Provider::Ebs => "ebs",
        })
    }
}

/// When automatic backups are taken (`backup.schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// Once a day at `backup.time_of_day`.
    Daily,
    /// Never: backups only on request.
    Off,
}

/// `backup.provider`, naming the field and the choices when it is neither.
fn provider_setting<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Provider, D::Error> {
    let v = String::deserialize(d)?;
    match v.as_str() {
        "files" => Ok(Provider::Files),
        "ebs" => Ok(Provider::Ebs),
        _ => Err(serde::de::Error::custom(format!("'{v}' is not a provider (use \"files\" or \"ebs\")"))),
    }
}

/// `backup.schedule`, naming the field and the choices when it is neither.
fn schedule_setting<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Schedule, D::Error> {
    let v = String::deserialize(d)?;
    match v.as_str() {
        "daily" => Ok(Schedule::Daily),
        "off" => Ok(Schedule::Off),
        _ => Err(serde::de::Error::custom(format!("'{v}' must be \"daily\" or \"off\""))),
    }
}

/// `[backup]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// `files` or `ebs`.
    #[serde(deserialize_with = "provider_setting")]
    pub provider: Provider,
    /// `daily` or `off`.
    #[serde(deserialize_with = "schedule_setting")]
    pub schedule: Schedule,
    /// UTC time of the automatic backup, `HH:MM`.
    pub time_of_day: String,
    /// Maximum bundle size in MiB.
    pub bundle_mib: u64,
    /// Parallel bundle uploads / downloads.
    pub workers: usize,
    /// Automatic backups copy only what changed since the newest backup (files provider).
    pub incremental: bool,
    /// With `incremental`, an automatic backup is full when the newest full one is this
    /// many days old.
    pub full_every_days: u32,
}

/// When the daemon runs a restore drill (`drill.schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrillSchedule {
    /// Never by itself: `tidemark drill run` only.
    Off,
    /// Every day at `drill.time_of_day`.
    Daily,
    /// Every `drill.weekday` at `drill.time_of_day`.
    Weekly,
}

/// What a drill restores to (`drill.target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DrillTarget {
    /// The end of the archive.
    Latest,
    /// A random time inside the restorable window.
    Random,
}

/// A UTC time of day, `HH:MM`, as (hour, minute).
fn hh_mm(v: &str) -> Option<(u32, u32)> {
    let (h, m) = v.split_once(':')?;
    let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
    (h < 24 && m < 60).then_some((h, m))
}

/// `[drill]`: a scheduled restore into a scratch directory, checked and removed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrillConfig {
    /// `off`, `daily` or `weekly`.
    pub schedule: DrillSchedule,
    /// Day of a weekly drill: `mon` .. `sun`.
    pub weekday: String,
    /// UTC time of day, `HH:MM`.
    pub time_of_day: String,
    /// `latest` or `random`.
    pub target: DrillTarget,
    /// Where drills restore to (a directory per drill, removed afterwards).
    pub scratch_dir: PathBuf,
    /// SQL run on the restored cluster; its first column of its first row is the result.
    pub probe_sql: Option<String>,
    /// What the probe must return (unset: any result passes).
    pub probe_expect: Option<String>,
    /// The whole drill must finish within this many seconds.
    pub time_limit_s: u64,
}

impl Default for DrillConfig {
    fn default() -> Self {
        DrillConfig {
            schedule: DrillSchedule::Off,
            weekday: "sun".into(),
            time_of_day: "04:00".into(),
            target: DrillTarget::Latest,
            scratch_dir: "/var/lib/tidemark/drill".into(),
            probe_sql: None,
            probe_expect: None,
            time_limit_s: 3600,
        }
    }
}

impl DrillConfig {
    /// `time_of_day` as (hour, minute).
    pub fn time_of_day(&self) -> Option<(u32, u32)> {
        hh_mm(&self.time_of_day)
    }

    /// `weekday` as a chrono weekday.
    pub fn weekday(&self) -> Option<chrono::Weekday> {
        self.weekday.parse().ok()
    }
}

/// `[daemon]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Control socket `wal-push` talks to.
    pub socket: PathBuf,
    /// Local state (schedules, counters).
    pub state_dir: PathBuf,
    /// Prometheus metrics listen address (loopback unless `metrics_public`).
    pub metrics_listen: Option<String>,
    /// Allows a `metrics_listen` address off loopback: metrics name the host's archive state.
    pub metrics_public: bool,
}

/// `[ebs]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EbsConfig {
    /// Region of the instance and its volumes.
    pub region: Option<String>,
    /// fsfreeze mounts around the snapshot call.
    pub freeze: bool,
    /// Thaw no later than this, whatever happens.
    pub freeze_timeout_s: u64,
    /// EC2 endpoint override (tests, VPC endpoints).
    pub endpoint: Option<String>,
    /// This instance's id; asked of IMDSv2 when absent.
    pub instance_id: Option<String>,
    /// This instance's availability zone; asked of IMDSv2 when absent.
    pub availability_zone: Option<String>,
    /// How long to wait for snapshots to complete before the backup fails.
    pub snapshot_timeout_s: u64,
    /// Where /proc is (tests feed captured samples).
    pub proc_root: PathBuf,
    /// Where /sys is (tests feed captured samples).
    pub sys_root: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster: "main".into(),
            postgres: PostgresConfig::default(),
            repository: RepositoryConfig::default(),
            encryption: EncryptionConfig::default(),
            archive: ArchiveConfig::default(),
            fetch: FetchConfig::default(),
            backup: BackupConfig::default(),
            daemon: DaemonConfig::default(),
            ebs: EbsConfig::default(),
            drill: DrillConfig::default(),
            regions: Default::default(),
            source: None,
        }
    }
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            data_dir: "/var/lib/postgresql/15/main".into(),
            conninfo: "host=/var/run/postgresql user=postgres dbname=postgres".into(),
            bin_dir: None,
            os_user: "postgres".into(),
        }
    }
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        RepositoryConfig {
            url: "file:///var/lib/tidemark/repo".into(),
            region: None,
            endpoint: None,
            max_in_flight: 32,
        }
    }
}

impl Default for EncryptionConfig {
    fn default() -> Self {
        EncryptionConfig { keyring: "/etc/tidemark/keyring".into() }
    }
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig { compression_level: 3, workers: 4 }
    }
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig { prefetch: 8, spool_dir: "/var/lib/tidemark/spool".into() }
    }
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            provider: Provider::Files,
            schedule: Schedule::Daily,
            time_of_day: "03:00".into(),
            bundle_mib: 64,
            workers: 4,
            incremental: false,
            full_every_days: 7,
        }
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            socket: "/run/tidemark/tidemark.sock".into(),
            state_dir: "/var/lib/tidemark/state".into(),
            metrics_listen: None,
            metrics_public: false,
        }
    }
}

impl Default for EbsConfig {
    fn default() -> Self {
        EbsConfig {
            region: None,
            freeze: true,
            freeze_timeout_s: 10,
            endpoint: None,
            instance_id: None,
            availability_zone: None,
            snapshot_timeout_s: 4 * 3600,
            proc_root: PathBuf::from("/proc"),
            sys_root: PathBuf::from("/sys"),
        }
    }
}

const SECTIONS: &[&str] =
    &["postgres", "repository", "encryption", "archive", "fetch", "backup", "daemon", "ebs", "drill"];

/// Applies `TIDEMARK_<SECTION>_<FIELD>=value` (and `TIDEMARK_CLUSTER`) onto the parsed TOML.
fn apply_env(doc: &mut toml::Table, vars: impl Iterator<Item = (String, String)>) -> Result<(), ConfigError> {
    for (name, value) in vars {
        let Some(rest) = name.strip_prefix("TIDEMARK_") else {
            continue;
        };
        // Not settings: read by the CLI, logging, tests, and the front end's hand-over.
        if matches!(
            rest,
            "CONFIG"
                | "OUTPUT_FORMAT"
                | "LOG"
                | "LOG_FORMAT"
                | "PROGRESS_INTERVAL_MS"
                | "FAILPOINT"
                | "LOCAL_STEP_DONE"
        ) {
            continue;
        }
        let rest = rest.to_ascii_lowercase();
        let parsed = if let Ok(i) = value.parse::<i64>() {
            toml::Value::Integer(i)
        } else if let Ok(b) = value.parse::<bool>() {
            toml::Value::Boolean(b)
        } else {
            toml::Value::String(value.clone())
        };
        if rest == "cluster" {
            doc.insert("cluster".into(), toml::Value::String(value));
            continue;
        }
        let Some(section) = SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) else {
            return Err(ConfigError::Parse(
                format!("environment variable {name}"),
                "not a known setting (use TIDEMARK_<SECTION>_<FIELD>, e.g. TIDEMARK_ARCHIVE_WORKERS)".into(),
            ));
        };
        let field = rest[section.len() + 1..].to_string();
        // Paths and names stay strings even when they look like numbers.
        let parsed = match (&parsed, field.as_str()) {
            (
                toml::Value::Integer(_) | toml::Value::Boolean(_),
                "url" | "conninfo" | "region" | "endpoint" | "os_user" | "time_of_day" | "instance_id"
                | "availability_zone" | "probe_sql" | "probe_expect" | "weekday",
            ) => toml::Value::String(value),
            _ => parsed,
        };
        let table = doc.entry(section.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match table {
            toml::Value::Table(t) => {
                t.insert(field, parsed);
            }
            _ => return Err(ConfigError::Parse(name, format!("`{section}` is not a table in the config file"))),
        }
    }
    Ok(())
}

impl Config {
    /// Loads `path` (or the default location), applies environment overrides, and
    /// validates. A missing default config is an error: running on built-in defaults by
    /// accident would archive to, or verify, a repository nobody configured.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with(path, false)
    }

    /// As [`Config::load`], but built-in defaults stand in for a missing default config
    /// (`demo` runs on embedded defaults).
    pub fn load_or_defaults(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with(path, true)
    }

    fn load_with(path: Option<&Path>, defaults_ok: bool) -> Result<Config, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => {
                if !defaults_ok {
                    return Err(ConfigError::Missing(path));
                }
                String::new()
            }
            Err(e) => return Err(ConfigError::Read(path, e)),
        };
        let mut cfg = Self::from_toml(&text, &path.display().to_string(), std::env::vars())?;
        if !text.is_empty() {
            cfg.source = std::path::absolute(&path).ok();
        }
        Ok(cfg)
    }

    /// Parses TOML text plus environment overrides; `origin` names the source in errors.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut doc: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse(origin.into(), e.to_string()))?;
        apply_env(&mut doc, env)?;
        let cfg: Config = Config::deserialize(toml::Value::Table(doc))
            .map_err(|e| ConfigError::Parse(origin.into(), e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Range and consistency checks.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster.is_empty()
            || self.cluster.len() > 63
            || !self.cluster.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            || self.cluster.starts_with('.')
        {
            return Err(ConfigError::Invalid(
                "cluster",
                format!("'{}' must be 1-63 of [A-Za-z0-9._-], not starting with '.'", self.cluster),
            ));
        }
        if !(1..=22).contains(&self.archive.compression_level) {
            return Err(ConfigError::Invalid(
                "archive.compression_level",
                format!("{} is not a zstd level (1-22)", self.archive.compression_level),
            ));
        }
        if !(1..=64).contains(&self.archive.workers) {
            return Err(ConfigError::Invalid(
                "archive.workers",
                format!("{} must be between 1 and 64", self.archive.workers),
            ));
        }
        if self.fetch.prefetch > 256 {
            return Err(ConfigError::Invalid("fetch.prefetch", format!("{} must be at most 256", self.fetch.prefetch)));
        }
        if !(1..=64).contains(&self.backup.workers) {
            return Err(ConfigError::Invalid(
                "backup.workers",
                format!("{} must be between 1 and 64", self.backup.workers),
            ));
        }
        if !(1..=366).contains(&self.backup.full_every_days) {
            return Err(ConfigError::Invalid(
                "backup.full_every_days",
                format!("{} must be between 1 and 366", self.backup.full_every_days),
            ));
        }
        if self.backup.incremental && self.backup.provider == Provider::Ebs {
            return Err(ConfigError::Invalid(
                "backup.incremental",
                "is for the files provider: EBS snapshots store only the blocks that changed already; set it to false"
                    .into(),
            ));
        }
        if !(1..=4096).contains(&self.backup.bundle_mib) {
            return Err(ConfigError::Invalid(
                "backup.bundle_mib",
                format!("{} must be between 1 and 4096", self.backup.bundle_mib),
            ));
        }
        if self.time_of_day().is_none() {
            return Err(ConfigError::Invalid(
                "backup.time_of_day",
                format!("'{}' must be HH:MM (UTC)", self.backup.time_of_day),
            ));
        }
        if self.drill.time_of_day().is_none() {
            return Err(ConfigError::Invalid(
                "drill.time_of_day",
                format!("'{}' must be HH:MM (UTC)", self.drill.time_of_day),
            ));
        }
        if self.drill.weekday().is_none() {
            return Err(ConfigError::Invalid(
                "drill.weekday",
                format!("'{}' must be a day of the week (mon .. sun)", self.drill.weekday),
            ));
        }
        if !(60..=7 * 86400).contains(&self.drill.time_limit_s) {
            return Err(ConfigError::Invalid(
                "drill.time_limit_s",
                format!("{} must be between 60 and 604800", self.drill.time_limit_s),
            ));
        }
        if !self.drill.scratch_dir.is_absolute() {
            return Err(ConfigError::Invalid(
                "drill.scratch_dir",
                format!("'{}' must be an absolute path", self.drill.scratch_dir.display()),
            ));
        }
        if self.drill.probe_expect.is_some() && self.drill.probe_sql.is_none() {
            return Err(ConfigError::Invalid("drill.probe_expect", "is set but drill.probe_sql is not".into()));
        }
        if !(1..=1024).contains(&self.repository.max_in_flight) {
            return Err(ConfigError::Invalid(
                "repository.max_in_flight",
                format!("{} must be between 1 and 1024", self.repository.max_in_flight),
            ));
        }
        let url = &self.repository.url;
        let ok_url = url.strip_prefix("file://").is_some_and(|p| p.starts_with('/'))
            || url.strip_prefix("s3://").is_some_and(|b| !b.is_empty() && !b.starts_with('/'));
        if !ok_url {
            return Err(ConfigError::Invalid(
                "repository.url",
                format!("'{url}' must be file:///absolute/path or s3://bucket/prefix"),
            ));
        }
        if let Some(ep) = &self.repository.endpoint {
            if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                return Err(ConfigError::Invalid(
                    "repository.endpoint",
                    format!("'{ep}' must start with http:// or https://"),
                ));
            }
        }
        if self.ebs.freeze_timeout_s == 0 || self.ebs.freeze_timeout_s > 600 {
            return Err(ConfigError::Invalid(
                "ebs.freeze_timeout_s",
                format!("{} must be between 1 and 600", self.ebs.freeze_timeout_s),
            ));
        }
        if let Some(m) = &self.daemon.metrics_listen {
            let Ok(addr) = m.parse::<std::net::SocketAddr>() else {
                return Err(ConfigError::Invalid(
                    "daemon.metrics_listen",
                    format!("'{m}' must be an address like 127.0.0.1:9187"),
                ));
            };
            if !addr.ip().is_loopback() && !self.daemon.metrics_public {
                return Err(ConfigError::Invalid(
                    "daemon.metrics_listen",
                    format!(
                        "'{m}' is not a loopback address: metrics would be served to the network; set daemon.metrics_public = true to allow that, or listen on 127.0.0.1"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `backup.time_of_day` as (hour, minute).
    pub fn time_of_day(&self) -> Option<(u32, u32)> {
        hh_mm(&self.backup.time_of_day)
    }

    /// The region this cluster and its repository are in (`ebs.region`, else `repository.region`).
    pub fn home_region(&self) -> Option<&str> {
        self.ebs.region.as_deref().or(self.repository.region.as_deref())
    }

    /// This config seen from region `r`: its repository is the copy configured in `[regions.r]`.
    pub fn for_region(&self, r: &str) -> Result<Config, ConfigError> {
        let rc = self.regions.get(r).ok_or_else(|| {
            ConfigError::Invalid(
                "regions",
                format!(
                    "no [regions.{r}] section: add one with the url of the repository that holds the copies in {r}"
                ),
            )
        })?;
        let mut c = self.clone();
        c.repository.url = rc.url.clone();
        c.repository.endpoint = rc.endpoint.clone().or_else(|| self.repository.endpoint.clone());
        c.repository.region = Some(r.to_string());
        c.ebs.region = Some(r.to_string());
        c.ebs.availability_zone = None;
        c.regions.clear();
        Ok(c)
    }

    /// Store options for the repository.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            region: self.repository.region.clone(),
            endpoint: self.repository.endpoint.clone(),
            multipart_threshold: None,
        }
    }

    /// Renders the config as TOML (the demo and tests write configs this way).
    pub fn example_toml() -> &'static str {
        include_str!("../systemd/tidemark.toml")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "test.toml", std::iter::empty())
    }

    #[test]
    fn empty_config_has_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.cluster, "main");
        assert_eq!(c.archive.workers, 4);
        assert_eq!(c.archive.compression_level, 3);
        assert_eq!(c.backup.provider, Provider::Files);
        assert_eq!(c.backup.bundle_mib, 64);
        assert_eq!(c.fetch.prefetch, 8);
        assert!(c.ebs.freeze);
    }

    #[test]
    fn example_config_parses() {
        let c = parse(Config::example_toml()).unwrap();
        assert_eq!(c.cluster, "orders-db");
        let d = parse(include_str!("../docker/tidemark.toml")).unwrap();
        assert_eq!(d.repository.endpoint.as_deref(), Some("http://minio:9000"));
    }

    #[test]
    fn region_sections_give_the_copy_repository() {
        let c = parse("[repository]\nurl = \"s3://east/p\"\nregion = \"us-east-1\"\n[regions.us-west-1]\nurl = \"s3://west/p\"\nkms_key_id = \"alias/k\"\n").unwrap();
        assert_eq!(c.home_region(), Some("us-east-1"));
        let w = c.for_region("us-west-1").unwrap();
        assert_eq!((w.repository.url.as_str(), w.repository.region.as_deref()), ("s3://west/p", Some("us-west-1")));
        assert_eq!(w.ebs.region.as_deref(), Some("us-west-1"));
        let e = c.for_region("eu-west-1").unwrap_err().to_string();
        assert!(e.contains("[regions.eu-west-1]"), "{e}");
        let e = parse("[regions.us-west-1]\nurl = \"s3://w\"\nbogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let e = parse("[archive]\nwrkers = 3\n").unwrap_err().to_string();
        assert!(e.contains("wrkers"), "{e}");
        let e = parse("bogus = 1\n").unwrap_err().to_string();
        assert!(e.contains("bogus"), "{e}");
        let e = parse("[nosuch]\n").unwrap_err().to_string();
        assert!(e.contains("nosuch"), "{e}");
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = parse("[archive]\nworkers = \"many\"\n").unwrap_err().to_string();
        assert!(e.contains("workers"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        for (text, field) in [
            ("[archive]\nworkers = 0\n", "archive.workers"),
            ("[archive]\ncompression_level = 30\n", "archive.compression_level"),
            ("[backup]\nprovider = \"tape\"\n", "backup.provider"),
            ("[backup]\ntime_of_day = \"25:00\"\n", "backup.time_of_day"),
            ("[backup]\nfull_every_days = 0\n", "backup.full_every_days"),
            ("[backup]\nprovider = \"ebs\"\nincremental = true\n", "backup.incremental"),
            ("[repository]\nurl = \"ftp://x\"\n", "repository.url"),
            ("[repository]\nurl = \"file://relative\"\n", "repository.url"),
            ("[repository]\nendpoint = \"127.0.0.1:9000\"\n", "repository.endpoint"),
            ("cluster = \"../x\"\n", "cluster"),
            ("[ebs]\nfreeze_timeout_s = 0\n", "ebs.freeze_timeout_s"),
            ("[daemon]\nmetrics_listen = \"nope\"\n", "daemon.metrics_listen"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn metrics_off_loopback_need_metrics_public() {
        for addr in ["127.0.0.1:9187", "[::1]:9187", "127.0.0.2:9187"] {
            let c = parse(&format!("[daemon]\nmetrics_listen = \"{addr}\"\n")).unwrap();
            assert!(!c.daemon.metrics_public, "{addr}");
        }
        for addr in ["0.0.0.0:9187", "[::]:9187", "10.1.2.3:9187"] {
            let text = format!("[daemon]\nmetrics_listen = \"{addr}\"\n");
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains("daemon.metrics_listen") && e.contains("metrics_public = true"), "{addr}: {e}");
            let c = parse(&format!("{text}metrics_public = true\n")).unwrap();
            assert!(c.daemon.metrics_public, "{addr}");
            let env = vec![("TIDEMARK_DAEMON_METRICS_PUBLIC".to_string(), "true".to_string())];
            assert!(Config::from_toml(&text, "t", env.into_iter()).is_ok(), "{addr}");
        }
    }

    #[test]
    fn env_overrides_apply_and_unknown_ones_fail() {
        let env = vec![
            ("TIDEMARK_ARCHIVE_WORKERS".to_string(), "7".to_string()),
            ("TIDEMARK_REPOSITORY_URL".to_string(), "s3://b/p".to_string()),
            ("TIDEMARK_CLUSTER".to_string(), "x1".to_string()),
            ("TIDEMARK_CONFIG".to_string(), "/ignored".to_string()),
            (crate::cmd::fast_path::LOCAL_STEP_DONE.to_string(), "1".to_string()),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let c = Config::from_toml("[archive]\nworkers = 2\n", "t", env.into_iter()).unwrap();
        assert_eq!(c.archive.workers, 7);
        assert_eq!(c.repository.url, "s3://b/p");
        assert_eq!(c.cluster, "x1");
        let env = vec![("TIDEMARK_NOPE_X".to_string(), "1".to_string())];
        let e = Config::from_toml("", "t", env.into_iter()).unwrap_err().to_string();
        assert!(e.contains("TIDEMARK_NOPE_X"), "{e}");
        let env = vec![("TIDEMARK_ARCHIVE_WORKRS".to_string(), "1".to_string())];
        let e = Config::from_toml("", "t", env.into_iter()).unwrap_err().to_string();
        assert!(e.contains("workrs"), "{e}");
    }

    #[test]
    fn explicit_missing_file_is_an_error() {
        let e = Config::load(Some(Path::new("/nonexistent/tidemark.toml"))).unwrap_err();
        assert!(matches!(e, ConfigError::Read(..)));
    }
}

/// Bounded fuzzing of config loading: any TOML text and environment is a config that passed
/// validation or an error naming the problem, never a panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// Values of every TOML type, at the edges of the types fields use.
    fn toml_value() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("0".to_string()),
            Just("-1".to_string()),
            Just("9223372036854775807".to_string()),
            Just("99999999999999999999".to_string()),
            Just("1.5".to_string()),
            Just("nan".to_string()),
            Just("true".to_string()),
            Just("\"\"".to_string()),
            Just("[1, \"a\"]".to_string()),
            Just("{ a = 1 }".to_string()),
            Just("1979-05-27T07:32:00Z".to_string()),
            Just("\"0.0.0.0:9187\"".to_string()),
            Just("\"[::1]:1\"".to_string()),
            Just("\"file:///\"".to_string()),
            Just("\"s3://\"".to_string()),
            Just("\"24:60\"".to_string()),
            "\"[ -~]{0,20}\"",
            "[ -~]{0,12}",
        ]
    }

    /// One change to the example config's text.
    #[derive(Debug, Clone)]
    enum Mutation {
        /// Give the n-th `key = value` line another value.
        Value(usize, String),
        DeleteLine(usize),
        DuplicateLine(usize),
        /// Insert a line (a key, a table header, anything).
        InsertLine(usize, String),
        Xor(usize, u8),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            4 => (any::<usize>(), toml_value()).prop_map(|(i, v)| Mutation::Value(i, v)),
            1 => any::<usize>().prop_map(Mutation::DeleteLine),
            1 => any::<usize>().prop_map(Mutation::DuplicateLine),
            1 => (any::<usize>(), prop_oneof![
                "\\[[a-z.]{1,12}\\]",
                "[a-z_]{1,16} = [ -~]{0,16}",
                "metrics_public = (true|false|1)",
                "[ -~]{0,30}",
            ]).prop_map(|(i, l)| Mutation::InsertLine(i, l)),
            1 => (any::<usize>(), 1u8..).prop_map(|(i, x)| Mutation::Xor(i, x)),
        ]
    }

    fn mutate(text: &str, muts: &[Mutation]) -> String {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut bytes: Option<Vec<u8>> = None;
        for m in muts {
            let n = lines.len().max(1);
            match m {
                Mutation::Value(i, v) => {
                    let settings: Vec<usize> = (0..lines.len()).filter(|&k| lines[k].contains(" = ")).collect();
                    if let Some(&k) = settings.get(i % settings.len().max(1)) {
                        let key = lines[k].split(" = ").next().unwrap_or_default().to_string();
                        lines[k] = format!("{key} = {v}");
                    }
                }
                Mutation::DeleteLine(i) if !lines.is_empty() => {
                    lines.remove(i % n);
                }
                Mutation::DuplicateLine(i) if !lines.is_empty() => {
                    let l = lines[i % n].clone();
                    lines.insert(i % n, l);
                }
                Mutation::InsertLine(i, l) => lines.insert(i % (lines.len() + 1), l.clone()),
                Mutation::Xor(i, x) => {
                    let b = bytes.get_or_insert_with(|| lines.join("\n").into_bytes());
                    if !b.is_empty() {
                        let at = i % b.len();
                        b[at] ^= x;
                    }
                }
                Mutation::DeleteLine(_) | Mutation::DuplicateLine(_) => {}
            }
        }
        match bytes {
            Some(b) => String::from_utf8_lossy(&b).into_owned(),
            None => lines.join("\n"),
        }
    }

    /// An override a user might set: a real setting (or near miss) and any value.
    fn env_var() -> impl Strategy<Value = (String, String)> {
        let name = prop_oneof![
            Just("TIDEMARK_CLUSTER".to_string()),
            Just("TIDEMARK_DAEMON_METRICS_LISTEN".to_string()),
            Just("TIDEMARK_DAEMON_METRICS_PUBLIC".to_string()),
            Just("TIDEMARK_ARCHIVE_WORKERS".to_string()),
            Just("TIDEMARK_REPOSITORY_URL".to_string()),
            Just("TIDEMARK_BACKUP_TIME_OF_DAY".to_string()),
            Just("TIDEMARK_REGIONS_X".to_string()),
            "TIDEMARK_[A-Z_]{0,24}",
        ];
        let value = prop_oneof![
            Just("-1".to_string()),
            Just("true".to_string()),
            Just("0.0.0.0:1".to_string()),
            Just("99999999999999999999".to_string()),
            "[ -~]{0,20}",
        ];
        (name, value)
    }

    fn check(res: Result<Config, ConfigError>) -> Result<(), TestCaseError> {
        match res {
            Ok(c) => {
                // What loaded passed validation, and what is derived from it can be computed.
                prop_assert!(c.validate().is_ok());
                prop_assert!(c.time_of_day().is_some());
                let _ = (c.home_region(), c.store_options());
                for r in c.regions.keys() {
                    let _ = c.for_region(r);
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn fuzz_mutated_configs_load_or_fail_cleanly(muts in proptest::collection::vec(mutation(), 1..5)) {
            let text = mutate(Config::example_toml(), &muts);
            check(Config::from_toml(&text, "fuzz.toml", std::iter::empty()))?;
        }

        #[test]
        fn fuzz_environment_overrides_load_or_fail_cleanly(vars in proptest::collection::vec(env_var(), 0..4)) {
            check(Config::from_toml(Config::example_toml(), "fuzz.toml", vars.into_iter()))?;
        }

        #[test]
        fn fuzz_arbitrary_text_is_not_a_config_panic(text in prop_oneof!["[ -~\n]{0,200}", any::<String>()]) {
            check(Config::from_toml(&text, "fuzz.toml", std::iter::empty()))?;
        }
    }
}
