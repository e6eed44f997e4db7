//! Keyring: named 256-bit master keys, one active for sealing, all usable for opening.
//!
//! File format (TOML, mode 0600):
//! ```toml
//! active = "k20261126-1a2b"
//! [keys]
//! k20261126-1a2b = "<64 hex digits>"
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

/// One 256-bit master key (never printed).
#[derive(Clone)]
pub struct Key([u8; 32]);

impl Key {
    /// The raw key bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// Errors loading or writing a keyring.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The file does not exist.
    #[error("cannot read keyring {0}: {1}; create one with `tidemark keygen --out {0}`")]
    Read(PathBuf, std::io::Error),
    /// The file exists but this user may not read it.
    #[error("cannot read keyring {0}: {1} (it is owned by {2}, mode {3:o}, and this command runs as uid {4}); run tidemark as the keyring's owner (the database user, postgres.os_user), or give it to that user with `chown <os_user> {0}`")]
    Denied(PathBuf, std::io::Error, String, u32, u32),
    /// The file is readable by group or others.
    #[error("keyring {0} is readable by group/other (mode {1:o}); fix it with `chmod 600 {0}`")]
    Permissions(PathBuf, u32),
    /// The file is not a valid keyring.
    #[error("keyring {0} is invalid: {1}")]
    Invalid(PathBuf, String),
    /// The file cannot be written.
    #[error("cannot write keyring {0}: {1}")]
    Write(PathBuf, std::io::Error),
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    active: String,
    keys: BTreeMap<String, String>,
}

/// Named keys, one active.
#[derive(Clone, Debug)]
pub struct Keyring {
    keys: BTreeMap<String, Key>,
    active: String,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn random_key() -> Key {
    let mut k = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut k);
    Key(k)
}

/// A fresh key id: date plus random suffix, so ids from two machines do not collide.
pub fn new_key_id() -> String {
    let mut r = [0u8; 3];
    rand::rngs::OsRng.fill_bytes(&mut r);
    format!("k{}-{}", chrono::Utc::now().format("%Y%m%d"), hex::encode(r))
}

impl Keyring {
    /// A keyring with one new random key.
    pub fn generate(id: &str) -> Keyring {
        let mut keys = BTreeMap::new();
        keys.insert(id.to_string(), random_key());
        Keyring { keys, active: id.to_string() }
    }

    /// Adds a new random key and makes it active (rotation).
    pub fn add_generated(&mut self, id: &str) {
        self.keys.insert(id.to_string(), random_key());
        self.active = id.to_string();
    }

    /// The active key and its id.
    pub fn active(&self) -> (&str, &Key) {
        let key = self.keys.get(&self.active).expect("active key is validated on construction");
        (&self.active, key)
    }

    /// A key by id.
    pub fn get(&self, id: &str) -> Option<&Key> {
        self.keys.get(id)
    }

    /// Key ids, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Loads a keyring, refusing files that group or others can read.
    pub fn load(path: &Path) -> Result<Keyring, KeyringError> {
        let meta = std::fs::metadata(path).map_err(|e| KeyringError::Read(path.to_path_buf(), e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyringError::Permissions(path.to_path_buf(), mode));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                use std::os::unix::fs::MetadataExt;
                // SAFETY: geteuid has no preconditions and cannot fail.
                let me = unsafe { libc::geteuid() };
                KeyringError::Denied(path.to_path_buf(), e, user_name(meta.uid()), mode, me)
            } else {
                KeyringError::Read(path.to_path_buf(), e)
            }
        })?;
        Self::parse(&text).map_err(|m| KeyringError::Invalid(path.to_path_buf(), m))
    }

    fn parse(text: &str) -> Result<Keyring, String> {
        let file: KeyringFile = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let mut keys = BTreeMap::new();
        for (id, hexkey) in file.keys {
            if !valid_id(&id) {
                return Err(format!("key id '{id}' must be 1-64 of [A-Za-z0-9_-]"));
            }
            let raw = hex::decode(hexkey.trim()).map_err(|_| format!("key '{id}' is not hex"))?;
            let raw: [u8; 32] = raw
                .try_into()
                .map_err(|v: Vec<u8>| format!("key '{id}' is {} bytes; keys are 32 bytes (64 hex digits)", v.len()))?;
            keys.insert(id, Key(raw));
        }
        if !keys.contains_key(&file.active) {
            return Err(format!("active key '{}' is not among [keys]", file.active));
        }
        Ok(Keyring { keys, active: file.active })
    }

    fn to_toml(&self) -> String {
        let file = KeyringFile {
            active: self.active.clone(),
            keys: self.keys.iter().map(|(id, k)| (id.clone(), hex::encode(k.0))).collect(),
        };
        toml::to_string(&file).expect("keyring serializes")
    }

    /// Writes the keyring with mode 0600, atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), KeyringError> {
        let err = |e| KeyringError::Write(path.to_path_buf(), e);
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("keyring")));
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(err)?;
        // An existing temp file keeps its old mode: force 0600 before any key byte is written.
        f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        f.write_all(self.to_toml().as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        Ok(())
    }

    /// `keygen`: creates the file with a new key, or adds a new active key to an existing one.
    pub fn keygen(path: &Path) -> Result<(Keyring, String), KeyringError> {
        let id = new_key_id();
        let ring = if path.exists() {
            let mut r = Self::load(path)?;
            r.add_generated(&id);
            r
        } else {
            Self::generate(&id)
        };
        ring.save(path)?;
        Ok((ring, id))
    }
}

/// The account name of `uid` from /etc/passwd, else `uid N`.
pub fn user_name(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .find_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_0600_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keyring");
        let (r, id) = Keyring::keygen(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let back = Keyring::load(&p).unwrap();
        assert_eq!(back.active().0, id);
        assert_eq!(back.active().1.bytes(), r.active().1.bytes());
    }

    #[test]
    fn keygen_on_existing_file_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keyring");
        let (_, first) = Keyring::keygen(&p).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1));
        let (r, second) = Keyring::keygen(&p).unwrap();
        assert_ne!(first, second);
        assert_eq!(r.ids().count(), 2);
        let back = Keyring::load(&p).unwrap();
        assert_eq!(back.active().0, second);
        assert!(back.get(&first).is_some());
    }

    #[test]
    fn group_readable_keyring_is_refused_with_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keyring");
        Keyring::keygen(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = Keyring::load(&p).unwrap_err();
        assert!(matches!(e, KeyringError::Permissions(_, 0o640)));
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn invalid_keyrings_name_the_problem() {
        let bad = [
            ("active = \"a\"\n[keys]\nb = \"00\"\n", "32 bytes"),
            ("active = \"a\"\n[keys]\n", "not among"),
            ("active = \"a\"\n[keys]\na = \"zz\"\n", "not hex"),
            ("active = \"a\"\nextra = 1\n[keys]\n", "extra"),
        ];
        for (text, needle) in bad {
            let e = Keyring::parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn debug_never_prints_key_bytes() {
        let r = Keyring::generate("k");
        let hexkey = hex::encode(r.active().1.bytes());
        assert!(!format!("{r:?}").contains(&hexkey));
    }

    #[test]
    fn missing_keyring_says_how_to_create_one() {
        let e = Keyring::load(Path::new("/nonexistent/keyring")).unwrap_err();
        assert!(e.to_string().contains("tidemark keygen"), "{e}");
    }
}
