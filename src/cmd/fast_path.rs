//! The local step of the commands PostgreSQL runs once per WAL file.
//!
//! `wal-push` is usually answered by the daemon and `wal-fetch` by read-ahead's spool. Those
//! steps need neither a store nor an async runtime, so the small `tidemark` front end runs
//! them itself (nothing here links the AWS SDKs, whose start-up cost each call would pay)
//! and hands everything else to `tidemark-agent`. The agent runs the same step when it is
//! called directly.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::archive::fetch::{FetchError, FetchOutcome};
use crate::cli::{Cli, Command, LogFormat};
use crate::cmd::failure::{report, usage, Failure};
use crate::config::Config;
use crate::daemon::control::{self, ClientError, Request, Response};
use crate::wal::spool::{BindError, Binding, Owner, Spool, Wanted};

/// Set by the front end when it hands a per-file command to the agent after its local step.
pub const LOCAL_STEP_DONE: &str = "TIDEMARK_LOCAL_STEP_DONE";

/// wal-fetch's exit code when recovery must abort rather than end (PostgreSQL: > 125).
pub const FETCH_ABORT: u8 = 126;

/// Commands PostgreSQL calls once per file log only warnings by default (they land in its log).
pub fn init_logging(cmd: &Command, format: LogFormat) {
    let per_file = matches!(cmd, Command::WalPush { .. } | Command::WalFetch { .. } | Command::WalPrefetch { .. });
    init_logging_at(if per_file { "warn" } else { "info" }, format);
}

/// Logs to stderr at `default` level for tidemark (`TIDEMARK_LOG` overrides), warn for others,
/// as text or as one JSON object per line. Credentials never reach the log: the targets that
/// print them are capped whatever `TIDEMARK_LOG` says, and what is written is redacted.
pub fn init_logging_at(default: &str, format: LogFormat) {
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TIDEMARK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("tidemark={default},warn")));
    let filter = filter.and(crate::store::aws::credential_cap());
    let layer = tracing_subscriber::fmt::layer().with_target(false);
    let layer = match format {
        LogFormat::Text => layer
            .with_writer(crate::store::aws::RedactingStderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed(),
        // The event's fields at the top level beside timestamp and level: what collectors index.
        LogFormat::Json => layer
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(RedactingJsonStderr)
            .with_filter(filter)
            .boxed(),
    };
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// Stderr for JSON logs: each line's string values through
/// [`crate::store::aws::redact_credentials`]. JSON escapes the quotes the text markers look
/// for (`access_key_id: \"...\"`), so the values are redacted as decoded text, then
/// written again as JSON.
#[derive(Debug, Clone, Copy, Default)]
pub struct RedactingJsonStderr;

/// `line` (one JSON object and a newline) with every string value redacted (pure); text that
/// is not JSON is redacted as text.
pub fn redact_json_line(line: &str) -> String {
    fn walk(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => {
                if let std::borrow::Cow::Owned(r) = crate::store::aws::redact_credentials(s) {
                    *s = r;
                }
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(walk),
            serde_json::Value::Object(o) => o.values_mut().for_each(walk),
            _ => {}
        }
    }
    match serde_json::from_str::<serde_json::Value>(line) {
        Ok(mut v) => {
            walk(&mut v);
            format!("{v}\n")
        }
        Err(_) => crate::store::aws::redact_credentials(line).into_owned(),
    }
}

impl std::io::Write for RedactingJsonStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // The formatter writes each event with one call, a whole line.
        let line = redact_json_line(&String::from_utf8_lossy(buf));
        std::io::stderr().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingJsonStderr {
    type Writer = RedactingJsonStderr;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingJsonStderr
    }
}

/// A `wal-push` or `wal-fetch` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `--config`, or `TIDEMARK_CONFIG`.
    pub config: Option<PathBuf>,
    /// `--log-format`, or `TIDEMARK_LOG_FORMAT`.
    pub log_format: LogFormat,
    /// What to do.
    pub op: Op,
}

/// The per-file operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `wal-push PATH`.
    Push {
        /// The WAL file.
        path: PathBuf,
    },
    /// `wal-fetch NAME DEST`.
    Fetch {
        /// WAL file name.
        name: String,
        /// Destination path.
        dest: PathBuf,
    },
}

impl Call {
    /// The call a parsed command line makes, if it is a per-file command.
    pub fn from_cli(cli: &Cli) -> Option<Call> {
        let op = match &cli.command {
            Command::WalPush { path } => Op::Push { path: path.clone() },
            Command::WalFetch { name, dest } => Op::Fetch { name: name.clone(), dest: dest.clone() },
            _ => return None,
        };
        Some(Call { config: cli.config.clone(), log_format: cli.log_format, op })
    }

    /// Parses the command lines PostgreSQL runs (`[--config F] wal-push PATH`,
    /// `[--config F] wal-fetch NAME DEST`, flags also after the command) without clap, whose
    /// command tree costs each call more than the work. Anything else is `None`, for the
    /// agent's full parser to run (and to explain).
    pub fn parse(args: &[OsString], env: impl Fn(&str) -> Option<OsString>) -> Option<Call> {
        // The agent rejects a bad TIDEMARK_OUTPUT_FORMAT; so must this call, through it.
        if env("TIDEMARK_OUTPUT_FORMAT").is_some_and(|v| v != "text" && v != "json") {
            return None;
        }
        // The same for TIDEMARK_LOG_FORMAT, which the flag overrides.
        let mut log_format = match env("TIDEMARK_LOG_FORMAT") {
            Some(v) => LogFormat::parse(v.to_str()?)?,
            None => LogFormat::Text,
        };
        let mut config: Option<PathBuf> = None;
        let mut output = false;
        let mut log_flag = false;
        let mut words: Vec<&OsStr> = Vec::new();
        let mut it = args.iter().skip(1);
        while let Some(arg) = it.next() {
            if !arg.as_encoded_bytes().starts_with(b"-") {
                words.push(arg);
                continue;
            }
            let arg = arg.to_str()?;
            let (flag, value) = match arg.split_once('=') {
                Some((f, v)) => (f, OsString::from(v)),
                None => (arg, it.next()?.clone()),
            };
            if value.is_empty() {
                return None;
            }
            match flag {
                "--config" if config.is_none() => config = Some(PathBuf::from(value)),
                "--output" if !output && (value == "text" || value == "json") => output = true,
                "--log-format" if !log_flag => {
                    log_format = LogFormat::parse(value.to_str()?)?;
                    log_flag = true;
                }
                _ => return None,
            }
        }
        if config.is_none() {
            config = match env("TIDEMARK_CONFIG") {
                Some(v) if v.is_empty() => return None,
                v => v.map(PathBuf::from),
            };
        }
        if words.iter().any(|w| w.is_empty()) {
            return None;
        }
        let op = match words.as_slice() {
            [cmd, path] if *cmd == "wal-push" => Op::Push { path: PathBuf::from(path) },
            [cmd, name, dest] if *cmd == "wal-fetch" => {
                Op::Fetch { name: name.to_str()?.to_string(), dest: PathBuf::from(dest) }
            }
            _ => return None,
        };
        Some(Call { config, log_format, op })
    }
}

/// Runs the local step of `wal-push` / `wal-fetch`: `Some(exit code)` when that settled the
/// call, `None` when the agent must go on (push without a daemon, fetch from the archive).
pub fn local_step(call: &Call) -> Option<u8> {
    let cfg = Config::load(call.config.as_deref()).map_err(Failure::from);
    match &call.op {
        Op::Push { path } => match cfg.and_then(|cfg| wal_push_via_daemon(&cfg, path)) {
            Ok(Some(code)) => Some(code),
            Ok(None) => None,
            Err(f) => Some(report(f)),
        },
        Op::Fetch { name, dest } => {
            let began = Instant::now();
            let res = cfg.and_then(|cfg| {
                let spooled = wal_fetch_from_spool(call.config.as_deref(), &cfg, name, dest)?;
                if spooled {
                    note_fetch_timing(&cfg, began);
                }
                Ok(spooled)
            });
            match res {
                Ok(true) => Some(0),
                Ok(false) => None,
                Err(f) => Some(report(fetch_abort(name, f))),
            }
        }
    }
}

/// `path` made absolute against the current directory.
pub fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    let cwd = std::env::current_dir().map_err(|e| anyhow::anyhow!("cannot read the current directory: {e}"))?;
    Ok(cwd.join(path))
}

/// The absolute path and file name `wal-push` was given.
pub fn push_target(path: &Path) -> Result<(PathBuf, String), Failure> {
    let path = absolute(path)?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| usage(format!("{} has no file name", path.display())))?
        .to_string();
    Ok((path, name))
}

/// `wal-push`, local step: the daemon archives the file when one answers (`Some(exit code)`);
/// `None` means push directly.
fn wal_push_via_daemon(cfg: &Config, path: &Path) -> Result<Option<u8>, Failure> {
    let (path, name) = push_target(path)?;
    // The data directory whose pg_wal the file must be in (the push refuses any other).
    crate::archive::push::refuse_restored_copy(&cfg.postgres.data_dir, &cfg.cluster)?;
    let req = Request::Push { path: path.display().to_string() };
    match control::call_blocking(&cfg.daemon.socket, &req, Duration::from_secs(600)) {
        Ok(Response::Pushed { outcome, read_ahead }) => {
            tracing::info!(file = %name, ?outcome, read_ahead, "archived via daemon");
            Ok(Some(0))
        }
        Ok(Response::Error { message }) => Err(anyhow::anyhow!("daemon could not archive {name}: {message}").into()),
        Ok(other) => {
            tracing::warn!(?other, "unexpected daemon answer; pushing directly");
            Ok(None)
        }
        Err(ClientError::NoDaemon(..)) => Ok(None),
        Err(e @ ClientError::Broken(..)) => {
            tracing::warn!(error = %e, "pushing directly");
            Ok(None)
        }
    }
}

/// `wal-fetch`, local step: moves the segment from read-ahead's spool to `dest` (`true`),
/// waiting for it when running read-ahead has it in hand, and keeps read-ahead going.
fn wal_fetch_from_spool(config: Option<&Path>, cfg: &Config, name: &str, dest: &Path) -> Result<bool, Failure> {
    let spool = spool_of(cfg);
    let is_segment = crate::wal::name::is_segment_name(name);
    // The spool only ever holds segments, and only one filled for this repository and keyring
    // is served (or filled): segments another config spooled, this one might not open.
    if !is_segment || !spool_is_ours(&spool, cfg)? {
        return Ok(false);
    }
    let write_err = |e| FetchError::Write(dest.display().to_string(), e);
    let mut from_spool = spool.take(name, dest).map_err(write_err)?;
    if cfg.fetch.prefetch > 0 {
        let running = spool.prefetcher_running();
        // Read-ahead that is running gets this one first, so wait for it rather than download
        // it twice; a first call reads it directly while read-ahead starts on the next ones.
        let wanted = Wanted { name: name.to_string(), taken: from_spool || !running };
        if let Err(e) = spool.set_wanted(&wanted) {
            tracing::warn!(error = %e, "cannot record the requested segment for read-ahead");
        } else if !running {
            start_prefetcher(config, &spool, name);
        } else if !from_spool && spool.await_spooled(name, Duration::from_secs(60)) {
            from_spool = spool.take(name, dest).map_err(write_err)?;
        }
    }
    if from_spool {
        tracing::info!(file = %name, outcome = ?FetchOutcome::FromSpool, "wal-fetch");
    }
    Ok(from_spool)
}

/// The configured spool. Run as root, it is kept `postgres.os_user`'s (a user that does not
/// exist leaves it to the directory owners, and says so once here).
pub fn spool_of(cfg: &Config) -> Spool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let ids = if unsafe { libc::geteuid() } == 0 {
        crate::pg::ctl::os_user_ids(&cfg.postgres.os_user)
            .inspect_err(|e| tracing::warn!(error = %e, "spool files keep their directory's owner"))
            .ok()
    } else {
        None
    };
    Spool::new(&cfg.fetch.spool_dir, &cfg.cluster).owned_by(ids)
}

/// Whether the spool may be served and filled for this config: bound to it already, or
/// (with read-ahead on) claimed for it now. A keyring that cannot be read is left to the
/// agent, which reads it anyway and says what is wrong.
fn spool_is_ours(spool: &Spool, cfg: &Config) -> Result<bool, Failure> {
    let owner = Owner::new(&cfg.repository.url, &cfg.cluster, &cfg.encryption.keyring);
    let res = match spool.binding(&owner) {
        Ok(Binding::Bound) => Ok(true),
        // Without read-ahead nothing fills the spool: leave what is there alone.
        Ok(_) if cfg.fetch.prefetch == 0 => Ok(false),
        // Only a switch of repository or keyring pays this wait (a read-ahead notices the
        // stop request between downloads; a loaded host needed more than 3 s).
        Ok(_) => spool.claim(&owner, Duration::from_secs(10)),
        Err(e) => Err(e),
    };
    match res {
        Ok(ours) => Ok(ours),
        Err(BindError::Keyring(e)) => {
            tracing::debug!(error = %e, "spool not used: the keyring cannot be read");
            Ok(false)
        }
        Err(e @ BindError::Io(..)) => Err(e.into()),
    }
}

/// Best effort: a local daemon keeps the fetch latency histogram; none is fine.
pub fn note_fetch_timing(cfg: &Config, began: Instant) {
    if cfg.daemon.socket.exists() {
        let timing = Request::FetchTiming { seconds: began.elapsed().as_secs_f64() };
        let _ = control::call_blocking(&cfg.daemon.socket, &timing, Duration::from_millis(200));
    }
}

/// A `wal-fetch` failure other than "not archived".
///
/// PostgreSQL reads exit 1 as "no more WAL" and ends recovery there, so any other failure
/// (bad config, unreachable store, a damaged or foreign object) must abort recovery instead
/// (> 125) or it would promote early and silently lose the tail.
pub fn fetch_abort(name: &str, f: Failure) -> Failure {
    Failure {
        code: FETCH_ABORT,
        error: f.error.context(format!(
            "cannot fetch {name}; recovery stops here (exit {FETCH_ABORT}) instead of ending early: fix the cause and start PostgreSQL again to resume"
        )),
    }
}

/// Starts a detached `wal-prefetch` so read-ahead outlives this short-lived process.
fn start_prefetcher(config: Option<&Path>, spool: &Spool, name: &str) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = crate::cli::agent_exe() else {
        return;
    };
    // Its warnings go to a log in the spool: PostgreSQL never shows a detached child's stderr.
    let log = crate::wal::spool::append_log(&spool.dir().join("prefetch.log"))
        .map_or_else(|_| std::process::Stdio::null(), std::process::Stdio::from);
    let mut cmd = std::process::Command::new(exe);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.arg("wal-prefetch")
        .arg(name)
        .env_remove(LOCAL_STEP_DONE)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .process_group(0);
    if let Err(e) = cmd.spawn() {
        tracing::warn!(error = %e, "cannot start read-ahead");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(words: &[&str]) -> Vec<OsString> {
        std::iter::once("tidemark").chain(words.iter().copied()).map(OsString::from).collect()
    }

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn push(config: Option<&str>, path: &str) -> Option<Call> {
        Some(Call {
            config: config.map(PathBuf::from),
            log_format: LogFormat::Text,
            op: Op::Push { path: PathBuf::from(path) },
        })
    }

    #[test]
    fn parses_what_postgresql_runs() {
        assert_eq!(
            Call::parse(&args(&["wal-push", "pg_wal/000000010000000000000001"]), no_env),
            push(None, "pg_wal/000000010000000000000001")
        );
        assert_eq!(
            Call::parse(&args(&["--config", "/e/t.toml", "wal-push", "p"]), no_env),
            push(Some("/e/t.toml"), "p")
        );
        assert_eq!(Call::parse(&args(&["--config=/e/t.toml", "wal-push", "p"]), no_env), push(Some("/e/t.toml"), "p"));
        assert_eq!(
            Call::parse(&args(&["wal-push", "p", "--config", "/e/t.toml"]), no_env),
            push(Some("/e/t.toml"), "p")
        );
        assert_eq!(Call::parse(&args(&["--output", "json", "wal-push", "p"]), no_env), push(None, "p"));
        assert_eq!(
            Call::parse(
                &args(&["--config", "c", "wal-fetch", "000000010000000000000001", "pg_wal/RECOVERYXLOG"]),
                no_env
            ),
            Some(Call {
                config: Some(PathBuf::from("c")),
                log_format: LogFormat::Text,
                op: Op::Fetch { name: "000000010000000000000001".into(), dest: PathBuf::from("pg_wal/RECOVERYXLOG") }
            })
        );
    }

    #[test]
    fn config_comes_from_the_environment_unless_given() {
        let env = |k: &str| (k == "TIDEMARK_CONFIG").then(|| OsString::from("/env.toml"));
        assert_eq!(Call::parse(&args(&["wal-push", "p"]), env), push(Some("/env.toml"), "p"));
        assert_eq!(
            Call::parse(&args(&["--config", "/flag.toml", "wal-push", "p"]), env),
            push(Some("/flag.toml"), "p")
        );
        let empty = |k: &str| (k == "TIDEMARK_CONFIG").then(OsString::new);
        assert_eq!(Call::parse(&args(&["wal-push", "p"]), empty), None);
        let bad_output = |k: &str| (k == "TIDEMARK_OUTPUT_FORMAT").then(|| OsString::from("yaml"));
        assert_eq!(Call::parse(&args(&["wal-push", "p"]), bad_output), None);
        let json = |k: &str| (k == "TIDEMARK_OUTPUT_FORMAT").then(|| OsString::from("json"));
        assert_eq!(Call::parse(&args(&["wal-push", "p"]), json), push(None, "p"));
    }

    #[test]
    fn the_log_format_comes_from_the_flag_or_the_environment() {
        let json = |c: Option<Call>| c.map(|c| c.log_format);
        assert_eq!(json(Call::parse(&args(&["--log-format", "json", "wal-push", "p"]), no_env)), Some(LogFormat::Json));
        let env = |k: &str| (k == "TIDEMARK_LOG_FORMAT").then(|| OsString::from("json"));
        assert_eq!(json(Call::parse(&args(&["wal-push", "p"]), env)), Some(LogFormat::Json));
        assert_eq!(json(Call::parse(&args(&["--log-format=text", "wal-push", "p"]), env)), Some(LogFormat::Text));
        // Anything the agent's parser would reject is left to it, to explain.
        let bad = |k: &str| (k == "TIDEMARK_LOG_FORMAT").then(|| OsString::from("yaml"));
        assert_eq!(Call::parse(&args(&["wal-push", "p"]), bad), None);
        assert_eq!(Call::parse(&args(&["--log-format", "yaml", "wal-push", "p"]), no_env), None);
        assert_eq!(
            Call::parse(&args(&["--log-format", "json", "--log-format", "json", "wal-push", "p"]), no_env),
            None
        );
    }

    #[test]
    fn json_log_lines_are_redacted_value_by_value() {
        let line = r#"{"level":"DEBUG","message":"Credentials { access_key_id: \"testing\", x: 1 }","key":"AKIATIDEMARKTESTKEY1"}"#;
        let out = redact_json_line(&format!("{line}\n"));
        assert!(out.ends_with('\n'), "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["message"], "Credentials { access_key_id: \"<redacted>\", x: 1 }");
        assert_eq!(v["key"], "<redacted>");
        assert_eq!(v["level"], "DEBUG");
        assert_eq!(redact_json_line("not json Credential=AKIA/x"), "not json Credential=<redacted>/x");
    }

    #[test]
    fn anything_else_is_left_to_the_agent() {
        for words in [
            &[][..],
            &["--help"],
            &["--version"],
            &["-h", "wal-push", "p"],
            &["wal-push"],
            &["wal-push", "p", "q"],
            &["wal-push", ""],
            &["wal-push", "--", "p"],
            &["wal-push", "p", "--config"],
            &["--config", "", "wal-push", "p"],
            &["--config", "a", "--config", "b", "wal-push", "p"],
            &["--output", "yaml", "wal-push", "p"],
            &["--verbose", "wal-push", "p"],
            &["wal-fetch", "000000010000000000000001"],
            &["wal-prefetch", "000000010000000000000001"],
            &["backup", "create"],
            &["daemon"],
            &["status"],
        ] {
            assert_eq!(Call::parse(&args(words), no_env), None, "{words:?}");
        }
        use std::os::unix::ffi::OsStringExt;
        let bad_name = vec![OsString::from("tidemark"), "wal-fetch".into(), OsString::from_vec(vec![0xff]), "d".into()];
        assert_eq!(Call::parse(&bad_name, no_env), None);
    }

    #[test]
    fn agrees_with_the_agents_parser_on_every_call_it_accepts() {
        let cases: &[&[&str]] = &[
            &["wal-push", "pg_wal/000000010000000000000001"],
            &["--config", "/e/t.toml", "wal-push", "p"],
            &["--config=/e/t.toml", "wal-push", "p"],
            &["wal-push", "p", "--config", "/e/t.toml"],
            &["wal-push", "p", "--config=x", "--output=text"],
            &["--output", "json", "wal-fetch", "000000010000000000000001", "d"],
            &["wal-fetch", "00000002.history", "pg_wal/RECOVERYHISTORY", "--config", "c"],
            &["--log-format", "json", "wal-push", "p"],
            &["wal-fetch", "000000010000000000000001", "d", "--log-format=text"],
        ];
        // clap reads these itself; a test environment that sets them would compare apples and pears.
        if ["TIDEMARK_CONFIG", "TIDEMARK_OUTPUT_FORMAT", "TIDEMARK_LOG_FORMAT"]
            .iter()
            .any(|v| std::env::var_os(v).is_some())
        {
            return;
        }
        for words in cases {
            let a = args(words);
            let mine = Call::parse(&a, no_env).unwrap_or_else(|| panic!("{words:?} not parsed"));
            let cli = Cli::try_parse_from(&a).unwrap_or_else(|e| panic!("{words:?}: {e}"));
            assert_eq!(Call::from_cli(&cli), Some(mine), "{words:?}");
        }
    }
}
