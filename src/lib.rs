//! tidemark: a PostgreSQL point-in-time-recovery agent.
//!
//! The folder tree is the architecture (ARCHITECTURE.md): layers that import only downward,
//! listed in [`LAYERS`] and checked by a test.
//!

pub mod archive;
pub mod backup;
pub mod catalog;
pub mod cli;
pub mod cmd;
pub mod codec;
pub mod config;
pub mod copy;
pub mod daemon;
pub mod drill;
pub mod find;
pub mod pg;
pub mod repo;
pub mod restore;
pub mod snapshot;
pub mod store;
pub mod sweep;
pub mod verify;
pub mod wal;

/// The layers, top to bottom, by module path: a module uses its own layer and the ones
/// below it, never one above (ARCHITECTURE.md says what each holds). The longest prefix
/// decides; `cli` and `config` sit beside the layers, usable from all of them.
pub const LAYERS: &[(&str, &[&str])] = &[
    // What the user runs: parse, dispatch, render, exit codes, the per-file fast path.
    ("command", &["cmd"]),
    // Operations over time: backup, restore, archive (push, fetch), sweep, copies, daemon.
    ("flow", &["archive", "backup", "restore", "sweep", "copy", "verify", "drill", "find", "daemon"]),
    // What the repository knows and the pure planners over it.
    ("domain", &["catalog"]),
    // Things outside the repository: WAL on disk, PostgreSQL, snapshot providers.
    ("provider", &["wal", "pg", "snapshot"]),
    // The repository: key layout, sealed documents, the cluster record.
    ("repository", &["repo"]),
    // Object stores, sealing, and the WAL format (names, page and record layout): no policy.
    ("base", &["store", "codec", "wal::name", "wal::layout", "wal::header", "wal::record", "wal::history"]),
];

#[cfg(test)]
mod layering {
    use super::LAYERS;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// Upward imports that exist today, each to be removed (issue 16): the test fails on a
    /// new one, and on one listed here that is gone (so the list only shrinks).
    const KNOWN_UPWARD: &[(&str, &str)] = &[];

    fn layer_of(module: &str) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for (i, (_, prefixes)) in LAYERS.iter().enumerate() {
            for p in *prefixes {
                let hit = module == *p || module.starts_with(&format!("{p}::"));
                if hit && best.is_none_or(|(len, _)| p.len() > len) {
                    best = Some((p.len(), i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// `src/a/b.rs` → `a::b`; `src/a/mod.rs` → `a`.
    fn module_of(path: &Path, src: &Path) -> String {
        let rel = path.strip_prefix(src).unwrap().with_extension("");
        let parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).filter(|p| *p != "mod").collect();
        parts.join("::")
    }

    /// Every module the file names through a `crate::` path (in `use` lines and in code),
    /// outside its tests: the longest prefix of the path that is a module of the crate.
    fn crate_paths(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
        let code = text.split("#[cfg(test)]").next().unwrap_or(text);
        let mut out = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let path: String =
                rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
            let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            if let Some(m) = (1..=segs.len()).rev().map(|n| segs[..n].join("::")).find(|m| modules.contains(m)) {
                out.insert(m);
            }
        }
        out
    }

    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    #[test]
    fn imports_only_go_down() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        let modules: BTreeSet<String> = all.iter().map(|f| module_of(f, &src)).collect();
        let mut upward = BTreeSet::new();
        for f in &all {
            let me = module_of(f, &src);
            let Some(mine) = layer_of(&me) else { continue };
            for used in crate_paths(&std::fs::read_to_string(f).unwrap(), &modules) {
                if let Some(theirs) = layer_of(&used) {
                    if theirs < mine {
                        upward.insert((me.clone(), used));
                    }
                }
            }
        }
        let known: BTreeSet<(String, String)> =
            KNOWN_UPWARD.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let new: Vec<_> = upward.difference(&known).collect();
        let gone: Vec<_> = known.difference(&upward).collect();
        assert!(new.is_empty(), "modules that import a layer above their own (see LAYERS in lib.rs): {new:?}");
        assert!(gone.is_empty(), "upward imports fixed: take them out of KNOWN_UPWARD: {gone:?}");
    }

    #[test]
    fn the_crate_root_holds_only_the_entry_points() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut root: Vec<String> = std::fs::read_dir(&src)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        root.sort();
        assert_eq!(root, ["agent.rs", "cli.rs", "config.rs", "lib.rs", "main.rs"]);
    }

    #[test]
    fn every_module_has_a_layer() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut all = Vec::new();
        files(&src, &mut all);
        let root = ["agent", "cli", "config", "lib", "main"];
        let without: Vec<String> = all
            .iter()
            .map(|f| module_of(f, &src))
            .filter(|m| !root.contains(&m.as_str()) && layer_of(m).is_none())
            .collect();
        assert!(without.is_empty(), "modules with no layer in LAYERS: {without:?}");
    }
}
