//! Finds the EBS volumes behind the PostgreSQL data directory, behind pg_wal when it lives on another mount, and
//! behind each tablespace, so the snapshot provider snapshots exactly those volumes and nothing else.
//!
//! The caller passes paths it has already canonicalized; this module only reads `<proc_root>/self/mountinfo` and
//! files under a sysfs root. Both roots are injectable so tests run on captured layouts, not the build machine's.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Model string an EBS volume reports over NVMe on Nitro instances; anything else on NVMe is instance storage.
const EBS_MODEL: &str = "Amazon Elastic Block Store";

/// Filesystem types that never sit directly on a block device, whatever device number they report.
const NON_BLOCK_FS: &[&str] =
    &["overlay", "tmpfs", "ramfs", "nfs", "nfs4", "cifs", "smb3", "9p", "virtiofs", "ceph", "glusterfs", "zfs"];

/// Guards against a (never seen, but cheap to rule out) cycle in sysfs `slaves/` links.
const MAX_STACK_DEPTH: usize = 8;

/// One line of `/proc/self/mountinfo`, with the kernel's octal escapes decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Unique id of this mount.
    pub mount_id: u32,
    /// Id of the mount this one sits on (the mount beneath it when stacked on the same point).
    pub parent_id: u32,
    /// Major number of the device (`st_dev`); 0 means an anonymous device such as tmpfs, overlay or btrfs.
    pub major: u32,
    /// Minor number of the device.
    pub minor: u32,
    /// Directory of the filesystem that forms this mount's root; not "/" for bind mounts and btrfs subvolumes.
    pub root: String,
    /// Where the filesystem is mounted.
    pub mount_point: PathBuf,
    /// Filesystem type, e.g. "xfs".
    pub fs_type: String,
    /// Mount source, e.g. "/dev/nvme1n1", "overlay" or "10.0.0.5:/export".
    pub source: String,
}

/// One whole disk that backs a mount, after partitions and LVM/md stacking are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name, e.g. "nvme1n1".
    pub kernel_name: String,
    /// Device node, e.g. "/dev/nvme1n1".
    pub device: String,
    /// EBS volume id from the NVMe serial; None on Xen `xvd*` disks, which must be matched by device name instead.
    pub volume_id: Option<String>,
    /// Model reported by the device, trimmed; None when sysfs has no model file.
    pub model: Option<String>,
}

/// Where one PostgreSQL path lives: its mount and the disks under that mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// What the path is to PostgreSQL, e.g. "data_dir", "pg_wal" or "tablespace:ts1".
    pub role: String,
    /// The canonical path the caller passed.
    pub path: PathBuf,
    /// Mount point of the filesystem holding the path.
    pub mount_point: PathBuf,
    /// Path relative to the filesystem's own root (bind-mount root included), so a restore finds it on the new volume.
    pub path_in_mount: PathBuf,
    /// Filesystem type of the mount.
    pub fs_type: String,
    /// Mount source as shown in mountinfo.
    pub source: String,
    /// Whole disks under the mount, sorted by kernel name.
    pub disks: Vec<Disk>,
}

/// Why discovery failed; each message says what the operator can do about it.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// A mountinfo line is not in the kernel's format.
    #[error("mountinfo line {line}: {reason} (expected the kernel's /proc/self/mountinfo format)")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },
    /// A file under /proc or /sys could not be read.
    #[error("cannot read {}: {source} (tidemark needs read access to /proc and /sys to find the volumes)", path.display())]
    Io {
        /// The file or directory that failed.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The path is not under any mount at all.
    #[error("{role} {} is not under any mount in mountinfo: pass an absolute, canonical path", path.display())]
    NoMount {
        /// Role of the path.
        role: String,
        /// The path.
        path: PathBuf,
    },
    /// The path's filesystem has no block device under it, so there is no volume to snapshot.
    #[error(
        "{role} {} is on {fs_type} ({mount_source:?}), not on an EBS volume: set backup.provider = \"files\"",
        path.display()
    )]
    NotBlockDevice {
        /// Role of the path.
        role: String,
        /// The path.
        path: PathBuf,
        /// Filesystem type of its mount.
        fs_type: String,
        /// Mount source; not named `source`, which thiserror would take for the underlying error.
        mount_source: String,
    },
    /// An NVMe disk under the path is not EBS (instance storage), and cannot be snapshotted.
    #[error(
        "{device} is {model:?}, not an EBS volume: instance storage cannot be snapshotted; move the data to EBS or \
         set backup.provider = \"files\""
    )]
    NotEbs {
        /// Device node, e.g. "/dev/nvme1n1".
        device: String,
        /// Model the device reports.
        model: String,
    },
}

/// Reads and parses `<proc_root>/self/mountinfo`.
pub fn read_mountinfo(proc_root: &Path) -> Result<Vec<MountEntry>, DiscoverError> {
    let path = proc_root.join("self/mountinfo");
    let bytes = fs::read(&path).map_err(|source| DiscoverError::Io { path, source })?;
    parse_mountinfo(&String::from_utf8_lossy(&bytes))
}

/// Parses mountinfo text as described in proc(5); blank lines are skipped, line numbers in errors are 1-based.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountEntry>, DiscoverError> {
    let mut entries = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        entries.push(parse_line(line).map_err(|reason| DiscoverError::Parse { line: idx + 1, reason })?);
    }
    Ok(entries)
}

/// Parses one mountinfo line: six fixed fields, optional fields, "-", then type, source and super options.
fn parse_line(line: &str) -> Result<MountEntry, String> {
    // Split on single spaces, not runs: the kernel separates with exactly one and a source may be empty.
    let fields: Vec<&str> = line.split(' ').collect();
    if fields.len() < 7 {
        return Err(format!("too few fields: found {}, need at least 10", fields.len()));
    }
    let sep = fields[6..]
        .iter()
        .position(|f| *f == "-")
        .map(|p| p + 6)
        .ok_or_else(|| "missing \" - \" separator before the filesystem type".to_string())?;
    let tail = &fields[sep + 1..];
    if tail.len() < 3 {
        return Err(format!(
            "too few fields after \" - \": found {}, need filesystem type, source and super options",
            tail.len()
        ));
    }
    let (major, minor) = fields[2].split_once(':').ok_or_else(|| format!("bad major:minor {:?}", fields[2]))?;
    Ok(MountEntry {
        mount_id: parse_num(fields[0], "mount id")?,
        parent_id: parse_num(fields[1], "parent id")?,
        major: parse_num(major, "major number")?,
        minor: parse_num(minor, "minor number")?,
        root: String::from_utf8_lossy(&unescape(fields[3])).into_owned(),
        mount_point: PathBuf::from(OsString::from_vec(unescape(fields[4]))),
        fs_type: String::from_utf8_lossy(&unescape(tail[0])).into_owned(),
        source: String::from_utf8_lossy(&unescape(tail[1])).into_owned(),
    })
}

/// Parses a decimal u32 field, naming the field in the error.
fn parse_num(s: &str, what: &str) -> Result<u32, String> {
    s.parse().map_err(|_| format!("bad {what} {s:?}"))
}

/// Decodes the kernel's `\ooo` escapes (space, tab, newline, backslash); anything else is kept as is.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && is_octal_escape(&bytes[i + 1..i + 4]) {
            out.push((bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// True for three octal digits whose value fits a byte.
fn is_octal_escape(d: &[u8]) -> bool {
    matches!(d, [b'0'..=b'3', b'0'..=b'7', b'0'..=b'7'])
}

/// Finds the mount holding `path`: the longest mount point that is a whole-component prefix, the last one on ties.
pub fn mount_for<'a>(path: &Path, mounts: &'a [MountEntry]) -> Option<&'a MountEntry> {
    if !path.is_absolute() {
        return None;
    }
    let mut best: Option<(&MountEntry, usize)> = None;
    for m in mounts {
        // Path::starts_with compares components, so "/data" is not a prefix of "/database".
        if !m.mount_point.is_absolute() || !path.starts_with(&m.mount_point) {
            continue;
        }
        let depth = m.mount_point.components().count();
        // ">=": a later mount on the same point is stacked on top and hides the earlier one.
        if best.is_none_or(|(_, d)| depth >= d) {
            best = Some((m, depth));
        }
    }
    best.map(|(m, _)| m)
}

/// Turns a Nitro NVMe serial ("vol0123456789abcdef0", maybe space padded) or a volume id into "vol-…".
pub fn volume_id_from_serial(serial: &str) -> Option<String> {
    let s = serial.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    let hex = s.strip_prefix("vol-").or_else(|| s.strip_prefix("vol"))?;
    // 17 hex digits today; 8 for volumes created before 2018. Real serials are lowercase.
    let valid = matches!(hex.len(), 8 | 17) && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    valid.then(|| format!("vol-{hex}"))
}

/// Maps a partition's kernel name to its whole disk's (nvme0n1p1 -> nvme0n1, xvda1 -> xvda); disks map to themselves.
pub fn disk_of(kernel_name: &str) -> String {
    if kernel_name.starts_with("dm-") {
        return kernel_name.to_string();
    }
    // Disks whose name ends in a digit (nvme0n1, mmcblk0, loop0, md0) separate partitions with "p".
    if let Some(pos) = kernel_name.rfind('p') {
        let (head, tail) = (&kernel_name[..pos], &kernel_name[pos + 1..]);
        if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) && head.ends_with(|c: char| c.is_ascii_digit())
        {
            return head.to_string();
        }
    }
    for prefix in ["xvd", "sd", "vd", "hd"] {
        if let Some(letters) =
            kernel_name.strip_prefix(prefix).map(|r| r.trim_end_matches(|c: char| c.is_ascii_digit()))
        {
            if !letters.is_empty() && letters.bytes().all(|b| b.is_ascii_lowercase()) {
                return format!("{prefix}{letters}");
            }
        }
    }
    kernel_name.to_string()
}

/// Device names under which EC2's block-device mapping may list this disk, the kernel's own name first.
pub fn device_aliases(kernel_name: &str) -> Vec<String> {
    let name = kernel_name.strip_prefix("/dev/").unwrap_or(kernel_name);
    // Xen shows /dev/sdX as /dev/xvdX, and the mapping keeps whichever name was used at attach time.
    let (own, other, letters) = match (letters_after(name, "xvd"), letters_after(name, "sd")) {
        (Some(l), _) => ("xvd", "sd", l),
        (None, Some(l)) => ("sd", "xvd", l),
        (None, None) => return vec![format!("/dev/{name}")],
    };
    let mut aliases = vec![format!("/dev/{own}{letters}"), format!("/dev/{other}{letters}")];
    // EC2 often names the root device "/dev/sda1" (or "/dev/xvda1") although it is attached as the whole disk.
    if letters == "a" {
        aliases.push(format!("/dev/{own}a1"));
        aliases.push(format!("/dev/{other}a1"));
    }
    aliases
}

/// The lowercase letters after `prefix` when that is all the name holds.
fn letters_after<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    name.strip_prefix(prefix).filter(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase()))
}

/// First of /dev/sdf../dev/sdp not in `used`; /dev/xvdX, /dev/sdX and their partitions all claim letter X.
pub fn next_free_device(used: &[String]) -> Option<String> {
    let taken: BTreeSet<char> = used.iter().filter_map(|u| device_letter(u)).collect();
    ('f'..='p').find(|c| !taken.contains(c)).map(|c| format!("/dev/sd{c}"))
}

/// The single drive letter of an sdX/xvdX name (partition digits ignored), if it has exactly one.
fn device_letter(dev: &str) -> Option<char> {
    let dev = dev.trim();
    let name = dev.strip_prefix("/dev/").unwrap_or(dev);
    let rest = name.strip_prefix("xvd").or_else(|| name.strip_prefix("sd"))?;
    let mut letters = rest.trim_end_matches(|c: char| c.is_ascii_digit()).chars();
    let letter = letters.next()?;
    (letters.next().is_none() && letter.is_ascii_lowercase()).then_some(letter)
}

/// Read-only view of a sysfs tree, rooted anywhere so tests can build one in a temp dir.
pub struct Sysfs {
    root: PathBuf,
}

impl Sysfs {
    /// Uses `root` as the sysfs mount point (normally "/sys").
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Resolves a mount's device to its leaf whole disks, through partitions and LVM/md stacks, sorted by name.
    pub fn disks_for(&self, major: u32, minor: u32, source: &str) -> Result<Vec<Disk>, DiscoverError> {
        let name = self.kernel_name(major, minor, source)?;
        let mut leaves = BTreeSet::new();
        self.collect_leaves(&disk_of(&name), 0, &mut leaves)?;
        leaves.iter().map(|leaf| self.disk(leaf)).collect()
    }

    /// Finds the disk whose NVMe serial is this volume (restore side); returns its device node, e.g. "/dev/nvme1n1".
    pub fn find_volume(&self, volume_id: &str) -> Result<Option<String>, DiscoverError> {
        // An id that is not a volume id cannot match any serial.
        let Some(wanted) = volume_id_from_serial(volume_id) else {
            return Ok(None);
        };
        let block = self.root.join("block");
        for name in list_dir(&block)? {
            let serial = read_trimmed(&block.join(&name).join("device/serial"))?;
            if serial.as_deref().and_then(volume_id_from_serial).as_deref() == Some(wanted.as_str()) {
                return Ok(Some(format!("/dev/{name}")));
            }
        }
        Ok(None)
    }

    /// Kernel name of MAJ:MIN from the dev/block link, else from a "/dev/…" source.
    fn kernel_name(&self, major: u32, minor: u32, source: &str) -> Result<String, DiscoverError> {
        let link = self.root.join("dev/block").join(format!("{major}:{minor}"));
        // Major 0 is an anonymous device (btrfs): no link names it, only the source can.
        if major != 0 {
            match fs::read_link(&link) {
                Ok(target) => {
                    if let Some(name) = target.file_name() {
                        return Ok(name.to_string_lossy().into_owned());
                    }
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::InvalidInput) => {}
                Err(source) => return Err(DiscoverError::Io { path: link, source }),
            }
        }
        source
            .strip_prefix("/dev/")
            .and_then(|_| Path::new(source).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| DiscoverError::Io {
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no block-device link, and mount source {source:?} is not a /dev path"),
                ),
                path: link,
            })
    }

    /// Adds `disk`, or the disks under it when it is a dm/md device with slaves, to `out`.
    fn collect_leaves(&self, disk: &str, depth: usize, out: &mut BTreeSet<String>) -> Result<(), DiscoverError> {
        let dir = self.root.join("block").join(disk);
        // A missing dir means the name did not come from sysfs (e.g. "/dev/root"): fail rather than guess.
        fs::metadata(&dir).map_err(|source| DiscoverError::Io { path: dir.clone(), source })?;
        let slaves_dir = dir.join("slaves");
        let slaves: BTreeSet<String> = match list_dir(&slaves_dir) {
            Ok(names) => names.iter().map(|n| disk_of(n)).collect(),
            Err(DiscoverError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(e),
        };
        if slaves.is_empty() {
            out.insert(disk.to_string());
            return Ok(());
        }
        if depth >= MAX_STACK_DEPTH {
            return Err(DiscoverError::Io {
                path: slaves_dir,
                source: io::Error::new(io::ErrorKind::InvalidData, "device stack deeper than 8 levels (a cycle?)"),
            });
        }
        for slave in slaves {
            self.collect_leaves(&slave, depth + 1, out)?;
        }
        Ok(())
    }

    /// Reads a leaf disk's serial and model; an NVMe disk that says it is not EBS is refused.
    fn disk(&self, name: &str) -> Result<Disk, DiscoverError> {
        let device_dir = self.root.join("block").join(name).join("device");
        let serial = read_trimmed(&device_dir.join("serial"))?;
        let model = read_trimmed(&device_dir.join("model"))?;
        let device = format!("/dev/{name}");
        if let Some(model) = model.as_deref().filter(|m| name.starts_with("nvme") && *m != EBS_MODEL) {
            return Err(DiscoverError::NotEbs { device, model: model.to_string() });
        }
        Ok(Disk {
            kernel_name: name.to_string(),
            device,
            volume_id: serial.as_deref().and_then(volume_id_from_serial),
            model,
        })
    }
}

/// Entry names of a directory, sorted so results do not depend on directory order.
fn list_dir(dir: &Path) -> Result<Vec<String>, DiscoverError> {
    let io_err = |source| DiscoverError::Io { path: dir.to_path_buf(), source };
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err)? {
        names.push(entry.map_err(io_err)?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// Contents of a small sysfs attribute, trimmed of padding; None when missing or blank.
fn read_trimmed(path: &Path) -> Result<Option<String>, DiscoverError> {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
            Ok((!text.is_empty()).then(|| text.to_string()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DiscoverError::Io { path: path.to_path_buf(), source }),
    }
}

/// Finds the mount and disks for each (role, canonical path).
pub fn locate(
    mountinfo: &[MountEntry],
    sys: &Sysfs,
    paths: &[(String, PathBuf)],
) -> Result<Vec<Located>, DiscoverError> {
    paths.iter().map(|(role, path)| locate_one(mountinfo, sys, role, path)).collect()
}

/// Locates one path; see [`locate`].
fn locate_one(mountinfo: &[MountEntry], sys: &Sysfs, role: &str, path: &Path) -> Result<Located, DiscoverError> {
    let no_mount = || DiscoverError::NoMount { role: role.to_string(), path: path.to_path_buf() };
    let mount = mount_for(path, mountinfo).ok_or_else(no_mount)?;
    if !is_block_backed(mount) {
        return Err(DiscoverError::NotBlockDevice {
            role: role.to_string(),
            path: path.to_path_buf(),
            fs_type: mount.fs_type.clone(),
            mount_source: mount.source.clone(),
        });
    }
    let Ok(rel) = path.strip_prefix(&mount.mount_point) else {
        return Err(no_mount());
    };
    let disks = sys.disks_for(mount.major, mount.minor, &mount.source)?;
    Ok(Located {
        role: role.to_string(),
        path: path.to_path_buf(),
        mount_point: mount.mount_point.clone(),
        // Bind mounts and btrfs subvolumes show only part of the filesystem; the restore sees all of it.
        path_in_mount: Path::new(mount.root.trim_start_matches('/')).join(rel),
        fs_type: mount.fs_type.clone(),
        source: mount.source.clone(),
        disks,
    })
}

/// True when a mount can sit on a block device we could snapshot.
fn is_block_backed(m: &MountEntry) -> bool {
    if m.fs_type.starts_with("fuse") || NON_BLOCK_FS.contains(&m.fs_type.as_str()) {
        return false;
    }
    // Major 0 is anonymous: virtual and network filesystems, but also btrfs, whose source still names the disk.
    m.major != 0 || m.source.starts_with("/dev/")
}

/// Distinct EBS volume ids across all located paths, sorted.
pub fn volumes(located: &[Located]) -> Vec<String> {
    let ids: BTreeSet<&String> = located.iter().flat_map(|l| &l.disks).filter_map(|d| d.volume_id.as_ref()).collect();
    ids.into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use tempfile::TempDir;

    /// Ubuntu 22.04 on a Nitro instance (m6i): root on nvme0n1p1, PGDATA on nvme1n1 (xfs), pg_wal on /pgwal
    /// (nvme2n1), a tablespace on /tblspc (nvme3n1), snapd loop mounts, and optional fields from none to several.
    const NITRO: &str = "\
22 29 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 29 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
24 29 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=3987560k,nr_inodes=996890,mode=755,inode64
25 24 0:23 / /dev/pts rw,nosuid,noexec,relatime shared:3 - devpts devpts rw,gid=5,mode=620,ptmxmode=000
26 29 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=800804k,mode=755,inode64
29 1 259:1 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw,discard,errors=remount-ro
27 22 0:6 / /sys/kernel/security rw,nosuid,nodev,noexec,relatime shared:8 - securityfs securityfs rw
28 24 0:25 / /dev/shm rw,nosuid,nodev shared:4 - tmpfs tmpfs rw,inode64
30 26 0:26 / /run/lock rw,nosuid,nodev,noexec,relatime shared:6 - tmpfs tmpfs rw,size=5120k,inode64
31 22 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
32 22 0:28 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:10 - pstore pstore rw
33 22 0:29 / /sys/firmware/efi/efivars rw,nosuid,nodev,noexec,relatime shared:11 - efivarfs efivarfs rw
34 22 0:30 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:12 - bpf bpf rw,mode=700
35 23 0:31 / /proc/sys/fs/binfmt_misc rw,relatime shared:14 - autofs systemd-1 rw,fd=29,pgrp=1,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=15766
36 24 0:20 / /dev/mqueue rw,nosuid,nodev,noexec,relatime shared:15 - mqueue mqueue rw
37 24 0:32 / /dev/hugepages rw,relatime shared:16 - hugetlbfs hugetlbfs rw,pagesize=2M
38 22 0:7 / /sys/kernel/debug rw,nosuid,nodev,noexec,relatime shared:17 - debugfs debugfs rw
39 22 0:12 / /sys/kernel/tracing rw,nosuid,nodev,noexec,relatime shared:18 - tracefs tracefs rw
40 22 0:33 / /sys/fs/fuse/connections rw,nosuid,nodev,noexec,relatime shared:19 - fusectl fusectl rw
41 22 0:34 / /sys/kernel/config rw,nosuid,nodev,noexec,relatime shared:20 - configfs configfs rw
61 29 7:0 / /snap/amazon-ssm-agent/7628 ro,nodev,relatime shared:32 - squashfs /dev/loop0 ro,errors=continue
64 29 7:1 / /snap/core18/2812 ro,nodev,relatime shared:34 - squashfs /dev/loop1 ro,errors=continue
67 29 7:2 / /snap/core20/2182 ro,nodev,relatime shared:36 - squashfs /dev/loop2 ro,errors=continue
70 29 7:3 / /snap/lxd/27037 ro,nodev,relatime shared:38 - squashfs /dev/loop3 ro,errors=continue
73 29 7:4 / /snap/snapd/21184 ro,nodev,relatime shared:40 - squashfs /dev/loop4 ro,errors=continue
76 29 259:3 / /boot/efi rw,relatime shared:42 - vfat /dev/nvme0n1p15 rw,fmask=0077,dmask=0077,codepage=437,iocharset=iso8859-1,shortname=mixed,errors=remount-ro
79 29 259:4 / /var/lib/postgresql rw,noatime shared:44 - xfs /dev/nvme1n1 rw,attr2,inode64,logbufs=8,logbsize=32k,noquota
82 29 259:5 / /pgwal rw,noatime shared:46 - xfs /dev/nvme2n1 rw,attr2,inode64,logbufs=8,logbsize=32k,noquota
85 29 259:6 / /tblspc rw,noatime shared:48 - ext4 /dev/nvme3n1 rw
446 26 0:49 / /run/user/1000 rw,nosuid,nodev,relatime shared:250 - tmpfs tmpfs rw,size=800800k,nr_inodes=200200,mode=700,uid=1000,gid=1000,inode64
512 26 0:4 mnt:[4026532341] /run/snapd/ns/lxd.mnt rw - nsfs nsfs rw
530 37 0:32 / /var/snap/lxd/common/hugepages rw,relatime shared:16 master:16 - hugetlbfs hugetlbfs rw,pagesize=2M
541 26 0:50 / /run/containerd/io.containerd.grpc.v1.cri/sandboxes rw,nosuid,nodev shared:251 master:5 propagate_from:5 - tmpfs tmpfs rw,size=800804k,mode=755,inode64
";

    /// Amazon Linux 2 on a Xen (pre-Nitro, t2) instance: /dev/xvda1 root, /dev/xvdf on /data.
    const XEN: &str = "\
17 40 0:16 / /sys rw,nosuid,nodev,noexec,relatime shared:6 - sysfs sysfs rw
18 40 0:3 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw
19 40 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,size=493460k,nr_inodes=123365,mode=755
20 19 0:17 / /dev/shm rw,nosuid,nodev shared:3 - tmpfs tmpfs rw
21 19 0:12 / /dev/pts rw,nosuid,noexec,relatime shared:4 - devpts devpts rw,gid=5,mode=620,ptmxmode=000
22 40 0:18 / /run rw,nosuid,nodev shared:22 - tmpfs tmpfs rw,mode=755
23 17 0:19 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:7 - tmpfs tmpfs ro,mode=755
24 23 0:20 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:8 - cgroup cgroup rw,xattr,release_agent=/usr/lib/systemd/systemd-cgroups-agent,name=systemd
40 1 202:1 / / rw,noatime shared:1 - xfs /dev/xvda1 rw,attr2,inode64,noquota
41 18 0:34 / /proc/sys/fs/binfmt_misc rw,relatime shared:23 - autofs systemd-1 rw,fd=30,pgrp=1,timeout=0,minproto=5,maxproto=5,direct,pipe_ino=12961
42 19 0:15 / /dev/mqueue rw,relatime shared:24 - mqueue mqueue rw
43 17 0:8 / /sys/kernel/debug rw,relatime shared:25 - debugfs debugfs rw
44 19 0:35 / /dev/hugepages rw,relatime shared:26 - hugetlbfs hugetlbfs rw,pagesize=2M
85 40 202:80 / /data rw,noatime shared:40 - ext4 /dev/xvdf rw,data=ordered
";

    /// PGDATA on an LVM volume striped over two NVMe EBS volumes (`lvcreate -i2`), on a Nitro instance.
    const LVM: &str = "\
29 1 259:1 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p1 rw,discard,errors=remount-ro
88 29 253:0 / /var/lib/postgresql rw,noatime shared:41 - xfs /dev/mapper/pgdata-main rw,attr2,inode64,logbufs=8,logbsize=256k,sunit=512,swidth=1024,noquota
";

    /// This sandbox's own /proc/self/mountinfo, captured verbatim when the tests were written.
    const HOST: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334524k,nr_inodes=3083631,mode=755
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684096k
26 24 0:24 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
28 27 0:25 / /mnt/sandboxing/model_tools_env/v1/python ro,nosuid,nodev,relatime - tmpfs model_tools_unavailable ro,size=4k,mode=755
29 26 0:26 / /dev/pts rw,relatime - devpts devpts rw,mode=600,ptmxmode=000
30 25 0:27 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24684096k
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 27 7:0 / /tmp/fzmnt rw,relatime - ext4 /dev/loop0 rw
";

    /// Inside a Docker container (overlay2 root, a bind-mounted /etc/hosts), as PostgreSQL images run it.
    const DOCKER: &str = "\
575 487 0:50 / / rw,relatime master:256 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/5QHEAOBDZKXWYTSJ7VSNCK2NHM:/var/lib/docker/overlay2/l/GBZ2ZYBT3C5EUEPJGOOV3KEBTS,upperdir=/var/lib/docker/overlay2/3c9a1f1e2b/diff,workdir=/var/lib/docker/overlay2/3c9a1f1e2b/work
576 575 0:53 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
577 575 0:54 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755,inode64
578 577 0:55 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666
579 575 0:56 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
580 579 0:27 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup ro,nsdelegate,memory_recursiveprot
581 577 0:52 / /dev/mqueue rw,nosuid,nodev,noexec,relatime - mqueue mqueue rw
582 577 0:57 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k,inode64
583 575 259:1 /var/lib/docker/containers/9f1c/hosts /etc/hosts rw,relatime - ext4 /dev/nvme0n1p1 rw,discard,errors=remount-ro
";

    const ROOT_VOL: &str = "vol-0a1b2c3d4e5f60718";
    const DATA_VOL: &str = "vol-04d3c2b1a09f8e7d6";
    const WAL_VOL: &str = "vol-0f1e2d3c4b5a69788";
    const TBS_VOL: &str = "vol-0123456789abcdef0";
    const INSTANCE_STORE: &str = "Amazon EC2 NVMe Instance Storage";

    /// A sysfs tree in a temp dir, laid out like the kernel's.
    struct FakeSys {
        dir: TempDir,
    }

    impl FakeSys {
        fn new() -> Self {
            let dir = TempDir::new().unwrap();
            fs::create_dir_all(dir.path().join("dev/block")).unwrap();
            fs::create_dir_all(dir.path().join("block")).unwrap();
            Self { dir }
        }

        fn sysfs(&self) -> Sysfs {
            Sysfs::new(self.dir.path())
        }

        /// dev/block/MAJ:MIN -> target, which (as in a real /sys copied elsewhere) does not exist.
        fn dev_link(&self, maj_min: &str, target: &str) {
            symlink(target, self.dir.path().join("dev/block").join(maj_min)).unwrap();
        }

        /// block/<name>/device/{serial,model}, padded the way NVMe pads them (20 and 40 columns).
        fn disk(&self, name: &str, serial: Option<&str>, model: Option<&str>) {
            let device = self.dir.path().join("block").join(name).join("device");
            fs::create_dir_all(&device).unwrap();
            if let Some(serial) = serial {
                fs::write(device.join("serial"), format!("{serial:<20}\n")).unwrap();
            }
            if let Some(model) = model {
                fs::write(device.join("model"), format!("{model:<40}\n")).unwrap();
            }
        }

        /// An NVMe EBS disk: serial without the dash, EBS model.
        fn ebs(&self, name: &str, volume_id: &str) {
            self.disk(name, Some(&volume_id.replace('-', "")), Some(EBS_MODEL));
        }

        /// A dm/md device (no device/ dir) whose slaves/ links point at the given kernel names.
        fn stacked(&self, name: &str, slaves: &[&str]) {
            let dir = self.dir.path().join("block").join(name).join("slaves");
            fs::create_dir_all(&dir).unwrap();
            for slave in slaves {
                symlink(format!("../../../../pci0000:00/0000:00:1f.0/nvme/nvme9/{slave}"), dir.join(slave)).unwrap();
            }
        }
    }

    fn nvme_target(ctrl: u32, disk: &str) -> String {
        format!("../../devices/pci0000:00/0000:00:{:02x}.0/nvme/nvme{ctrl}/{disk}", 0x1c + ctrl)
    }

    /// The sysfs that goes with NITRO.
    fn nitro_sys() -> FakeSys {
        let sys = FakeSys::new();
        sys.dev_link("259:0", &nvme_target(0, "nvme0n1"));
        sys.dev_link("259:1", &format!("{}/nvme0n1p1", nvme_target(0, "nvme0n1")));
        sys.dev_link("259:3", &format!("{}/nvme0n1p15", nvme_target(0, "nvme0n1")));
        sys.dev_link("259:4", &nvme_target(1, "nvme1n1"));
        sys.dev_link("259:5", &nvme_target(2, "nvme2n1"));
        sys.dev_link("259:6", &nvme_target(3, "nvme3n1"));
        sys.dev_link("7:0", "../../devices/virtual/block/loop0");
        sys.ebs("nvme0n1", ROOT_VOL);
        sys.ebs("nvme1n1", DATA_VOL);
        sys.ebs("nvme2n1", WAL_VOL);
        sys.ebs("nvme3n1", TBS_VOL);
        fs::create_dir_all(sys.dir.path().join("block/loop0")).unwrap();
        sys
    }

    fn paths(list: &[(&str, &str)]) -> Vec<(String, PathBuf)> {
        list.iter().map(|(r, p)| (r.to_string(), PathBuf::from(p))).collect()
    }

    fn ebs_disk(name: &str, volume_id: &str) -> Disk {
        Disk {
            kernel_name: name.into(),
            device: format!("/dev/{name}"),
            volume_id: Some(volume_id.into()),
            model: Some(EBS_MODEL.into()),
        }
    }

    fn mount_point_of<'a>(path: &str, mounts: &'a [MountEntry]) -> Option<&'a Path> {
        mount_for(Path::new(path), mounts).map(|m| m.mount_point.as_path())
    }

    fn parse_err(text: &str) -> (usize, String) {
        match parse_mountinfo(text) {
            Err(DiscoverError::Parse { line, reason }) => (line, reason),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    // ---- parse_mountinfo ----

    #[test]
    fn parses_nitro_sample_line_by_line() {
        let mounts = parse_mountinfo(NITRO).unwrap();
        assert_eq!(mounts.len(), 33);
        let root = &mounts[5];
        assert_eq!(
            root,
            &MountEntry {
                mount_id: 29,
                parent_id: 1,
                major: 259,
                minor: 1,
                root: "/".into(),
                mount_point: "/".into(),
                fs_type: "ext4".into(),
                source: "/dev/nvme0n1p1".into(),
            }
        );
        let data = mounts.iter().find(|m| m.mount_point == Path::new("/var/lib/postgresql")).unwrap();
        assert_eq!(
            (data.major, data.minor, data.fs_type.as_str(), data.source.as_str()),
            (259, 4, "xfs", "/dev/nvme1n1")
        );
    }

    #[test]
    fn optional_fields_none_one_or_several() {
        let mounts = parse_mountinfo(NITRO).unwrap();
        let by_id = |id| mounts.iter().find(|m| m.mount_id == id).unwrap();
        // No optional field, and a root that is not a path at all (nsfs).
        assert_eq!(by_id(512).fs_type, "nsfs");
        assert_eq!(by_id(512).root, "mnt:[4026532341]");
        // shared + master.
        assert_eq!(by_id(530).fs_type, "hugetlbfs");
        assert_eq!(by_id(530).mount_point, Path::new("/var/snap/lxd/common/hugepages"));
        // shared + master + propagate_from.
        assert_eq!(by_id(541).source, "tmpfs");
        assert_eq!(by_id(541).parent_id, 26);
        // Only master (container).
        let docker = parse_mountinfo(DOCKER).unwrap();
        assert_eq!(docker[0].fs_type, "overlay");
        assert_eq!(docker[0].source, "overlay");
    }

    #[test]
    fn parses_snap_loop_mounts() {
        let mounts = parse_mountinfo(NITRO).unwrap();
        let loops: Vec<_> = mounts.iter().filter(|m| m.major == 7).map(|m| (m.minor, m.source.as_str())).collect();
        assert_eq!(
            loops,
            [(0, "/dev/loop0"), (1, "/dev/loop1"), (2, "/dev/loop2"), (3, "/dev/loop3"), (4, "/dev/loop4")]
        );
        assert!(mounts.iter().filter(|m| m.major == 7).all(|m| m.fs_type == "squashfs"));
    }

    #[test]
    fn parses_xen_lvm_host_and_docker_samples() {
        assert_eq!(parse_mountinfo(XEN).unwrap().len(), 14);
        assert_eq!(parse_mountinfo(LVM).unwrap()[1].major, 253);
        assert_eq!(parse_mountinfo(HOST).unwrap().len(), 21);
        let docker = parse_mountinfo(DOCKER).unwrap();
        assert_eq!(docker[8].root, "/var/lib/docker/containers/9f1c/hosts");
        assert_eq!(docker[8].mount_point, Path::new("/etc/hosts"));
    }

    #[test]
    fn decodes_octal_escapes() {
        let text = "90 29 259:7 /with\\040root /mnt/pg\\040data rw,relatime shared:50 - ext4 /dev/nvme4n1 rw\n\
                    91 29 259:8 / /mnt/a\\011b\\012c\\134d rw - ext4 /dev/my\\040disk rw\n";
        let mounts = parse_mountinfo(text).unwrap();
        assert_eq!(mounts[0].mount_point, Path::new("/mnt/pg data"));
        assert_eq!(mounts[0].root, "/with root");
        assert_eq!(mounts[1].mount_point, Path::new("/mnt/a\tb\nc\\d"));
        assert_eq!(mounts[1].source, "/dev/my disk");
    }

    #[test]
    fn keeps_backslashes_that_are_not_escapes() {
        let text = "90 29 259:7 / /mnt/x\\9y\\04\\400\\ rw - ext4 /dev/nvme4n1 rw\n";
        let mounts = parse_mountinfo(text).unwrap();
        assert_eq!(mounts[0].mount_point, Path::new("/mnt/x\\9y\\04\\400\\"));
    }

    #[test]
    fn non_utf8_escape_survives_in_mount_point() {
        let text = "90 29 259:7 / /mnt/\\377 rw - ext4 /dev/nvme4n1 rw\n";
        let mounts = parse_mountinfo(text).unwrap();
        assert_eq!(mounts[0].mount_point.as_os_str().as_encoded_bytes(), b"/mnt/\xff");
    }

    #[test]
    fn empty_source_field_is_kept_in_place() {
        let mounts = parse_mountinfo("90 29 0:60 / /mnt/e rw - tmpfs  rw\n").unwrap();
        assert_eq!(mounts[0].fs_type, "tmpfs");
        assert_eq!(mounts[0].source, "");
    }

    #[test]
    fn blank_lines_and_empty_text_are_fine() {
        assert!(parse_mountinfo("").unwrap().is_empty());
        assert_eq!(parse_mountinfo("\n29 1 259:1 / / rw - ext4 /dev/nvme0n1p1 rw\n\n").unwrap().len(), 1);
    }

    #[test]
    fn error_too_few_fields_with_line_number() {
        let (line, reason) = parse_err("29 1 259:1 / / rw - ext4 /dev/nvme0n1p1 rw\n30 29 259:4 /\n");
        assert_eq!(line, 2);
        assert!(reason.contains("too few fields"), "{reason}");
    }

    #[test]
    fn error_missing_separator_counts_blank_lines() {
        let (line, reason) =
            parse_err("29 1 259:1 / / rw - ext4 /dev/nvme0n1p1 rw\n\n79 29 259:4 / /data rw shared:1 xfs\n");
        assert_eq!(line, 3);
        assert!(reason.contains("separator"), "{reason}");
    }

    #[test]
    fn error_too_few_fields_after_separator() {
        let (line, reason) = parse_err("29 1 259:1 / / rw shared:1 - ext4 /dev/nvme0n1p1\n");
        assert_eq!(line, 1);
        assert!(reason.contains("after"), "{reason}");
    }

    #[test]
    fn error_bad_major_minor() {
        for bad in ["259-1", "259:x", "x:1", "259:", ":1", "4294967296:0"] {
            let text = format!("29 1 {bad} / / rw - ext4 /dev/nvme0n1p1 rw\n");
            let (line, reason) = parse_err(&text);
            assert_eq!(line, 1);
            assert!(reason.contains("major") || reason.contains("minor"), "{bad}: {reason}");
        }
    }

    #[test]
    fn error_bad_ids() {
        let (_, reason) = parse_err("x 1 259:1 / / rw - ext4 /dev/nvme0n1p1 rw\n");
        assert!(reason.contains("mount id"), "{reason}");
        let (_, reason) = parse_err("29 -1 259:1 / / rw - ext4 /dev/nvme0n1p1 rw\n");
        assert!(reason.contains("parent id"), "{reason}");
    }

    #[test]
    fn parse_error_display_names_line_and_format() {
        let err = parse_mountinfo("garbage\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("mountinfo line 1: too few fields"), "{msg}");
        assert!(msg.contains("/proc/self/mountinfo"), "{msg}");
    }

    #[test]
    fn read_mountinfo_from_injected_proc_root() {
        let proc_root = TempDir::new().unwrap();
        fs::create_dir_all(proc_root.path().join("self")).unwrap();
        fs::write(proc_root.path().join("self/mountinfo"), NITRO).unwrap();
        assert_eq!(read_mountinfo(proc_root.path()).unwrap(), parse_mountinfo(NITRO).unwrap());
        let empty = TempDir::new().unwrap();
        match read_mountinfo(empty.path()) {
            Err(DiscoverError::Io { path, .. }) => assert_eq!(path, empty.path().join("self/mountinfo")),
            other => panic!("{other:?}"),
        }
    }

    // ---- mount_for ----

    #[test]
    fn mount_for_picks_longest_prefix() {
        let mounts = parse_mountinfo(NITRO).unwrap();
        assert_eq!(mount_point_of("/var/lib/postgresql/15/main", &mounts), Some(Path::new("/var/lib/postgresql")));
        assert_eq!(mount_point_of("/pgwal/15/main/pg_wal", &mounts), Some(Path::new("/pgwal")));
        assert_eq!(mount_point_of("/var/lib/dpkg", &mounts), Some(Path::new("/")));
        assert_eq!(mount_point_of("/run/lock/x", &mounts), Some(Path::new("/run/lock")));
    }

    #[test]
    fn mount_for_needs_whole_components() {
        let mounts = parse_mountinfo(
            "29 1 259:1 / / rw - ext4 /dev/nvme0n1p1 rw\n\
                                      79 29 259:4 / /data rw - xfs /dev/nvme1n1 rw\n",
        )
        .unwrap();
        assert_eq!(mount_point_of("/database/x", &mounts), Some(Path::new("/")));
        assert_eq!(mount_point_of("/data2", &mounts), Some(Path::new("/")));
        assert_eq!(mount_point_of("/data/x", &mounts), Some(Path::new("/data")));
        assert_eq!(mount_point_of("/data/", &mounts), Some(Path::new("/data")));
    }

    #[test]
    fn mount_for_path_equal_to_mount_point_and_root() {
        let mounts = parse_mountinfo(NITRO).unwrap();
        assert_eq!(mount_point_of("/var/lib/postgresql", &mounts), Some(Path::new("/var/lib/postgresql")));
        assert_eq!(mount_point_of("/", &mounts), Some(Path::new("/")));
    }

    #[test]
    fn mount_for_last_duplicate_wins() {
        let text = format!("{NITRO}99 82 259:8 / /pgwal rw,noatime shared:60 - xfs /dev/nvme5n1 rw\n");
        let mounts = parse_mountinfo(&text).unwrap();
        let m = mount_for(Path::new("/pgwal/15"), &mounts).unwrap();
        assert_eq!((m.mount_id, m.source.as_str()), (99, "/dev/nvme5n1"));
        // Order in the file decides, not the mount id.
        let text = "29 1 259:1 / / rw - ext4 /dev/nvme0n1p1 rw\n\
                    90 29 259:5 / /d rw - xfs /dev/nvme2n1 rw\n\
                    80 29 259:4 / /d rw - xfs /dev/nvme1n1 rw\n";
        let mounts = parse_mountinfo(text).unwrap();
        assert_eq!(mount_for(Path::new("/d"), &mounts).unwrap().mount_id, 80);
    }

    #[test]
    fn mount_for_escaped_mount_point() {
        let text =
            "29 1 259:1 / / rw - ext4 /dev/nvme0n1p1 rw\n90 29 259:7 / /mnt/pg\\040data rw - ext4 /dev/nvme4n1 rw\n";
        let mounts = parse_mountinfo(text).unwrap();
        assert_eq!(mount_point_of("/mnt/pg data/15/main", &mounts), Some(Path::new("/mnt/pg data")));
        assert_eq!(mount_point_of("/mnt/pg\\040data/15", &mounts), Some(Path::new("/")));
    }

    #[test]
    fn mount_for_relative_path_or_no_mounts() {
        let mounts = parse_mountinfo(NITRO).unwrap();
        assert!(mount_for(Path::new("var/lib/postgresql"), &mounts).is_none());
        assert!(mount_for(Path::new("/var/lib"), &[]).is_none());
        let only_data = parse_mountinfo("79 29 259:4 / /data rw - xfs /dev/nvme1n1 rw\n").unwrap();
        assert!(mount_for(Path::new("/srv"), &only_data).is_none());
    }

    // ---- volume_id_from_serial ----

    #[test]
    fn volume_id_from_nitro_serials() {
        assert_eq!(volume_id_from_serial("vol0123456789abcdef0").as_deref(), Some("vol-0123456789abcdef0"));
        assert_eq!(volume_id_from_serial("vol0123456789abcdef0   \n").as_deref(), Some("vol-0123456789abcdef0"));
        assert_eq!(volume_id_from_serial("  vol0123456789abcdef0").as_deref(), Some("vol-0123456789abcdef0"));
        assert_eq!(volume_id_from_serial("vol-0123456789abcdef0").as_deref(), Some("vol-0123456789abcdef0"));
        // Pre-2018 short ids.
        assert_eq!(volume_id_from_serial("vol1a2b3c4d").as_deref(), Some("vol-1a2b3c4d"));
        for v in [ROOT_VOL, DATA_VOL, WAL_VOL, TBS_VOL] {
            assert_eq!(volume_id_from_serial(&v.replace('-', "")).as_deref(), Some(v));
        }
    }

    #[test]
    fn volume_id_rejects_everything_else() {
        for bad in [
            "",
            "vol",
            "vol-",
            "AWS1F2E3D4C5B6A79801",   // instance store serial
            "vol0123456789ABCDEF0",   // real serials are lowercase
            "vol0123456789abcdefg",   // not hex
            "vol0123456789abcdef",    // 16 digits
            "vol0123456789abcdef01",  // 18 digits
            "VOL0123456789abcdef0",   // wrong prefix case
            "vol--0123456789abcdef0", // double dash
            "vol 0123456789abcdef0",  // inner space
            "QM00001",                // QEMU disk
            "snap-0123456789abcdef0", // not a volume
            "xvol0123456789abcdef0",  // junk before
        ] {
            assert_eq!(volume_id_from_serial(bad), None, "{bad:?}");
        }
    }

    // ---- disk_of ----

    #[test]
    fn disk_of_partitions_and_disks() {
        for (name, disk) in [
            ("nvme0n1p1", "nvme0n1"),
            ("nvme0n1p15", "nvme0n1"),
            ("nvme12n1p3", "nvme12n1"),
            ("nvme1n1", "nvme1n1"),
            ("xvda1", "xvda"),
            ("xvda", "xvda"),
            ("xvdf", "xvdf"),
            ("xvdp", "xvdp"),
            ("xvdp1", "xvdp"),
            ("sda2", "sda"),
            ("sdp1", "sdp"),
            ("sdaa10", "sdaa"),
            ("vda1", "vda"),
            ("dm-0", "dm-0"),
            ("dm-12", "dm-12"),
            ("md0", "md0"),
            ("md127", "md127"),
            ("md0p1", "md0"),
            ("loop0", "loop0"),
            ("loop0p1", "loop0"),
            ("mmcblk0p2", "mmcblk0"),
        ] {
            assert_eq!(disk_of(name), disk, "{name}");
        }
    }

    // ---- device_aliases ----

    #[test]
    fn device_aliases_xen_and_sd_names() {
        assert_eq!(device_aliases("xvdf"), ["/dev/xvdf", "/dev/sdf"]);
        assert_eq!(device_aliases("sdf"), ["/dev/sdf", "/dev/xvdf"]);
        assert_eq!(device_aliases("/dev/xvdg"), ["/dev/xvdg", "/dev/sdg"]);
        assert_eq!(device_aliases("xvdba"), ["/dev/xvdba", "/dev/sdba"]);
    }

    #[test]
    fn device_aliases_root_disk_includes_partition_style_names() {
        assert_eq!(device_aliases("xvda"), ["/dev/xvda", "/dev/sda", "/dev/xvda1", "/dev/sda1"]);
        assert_eq!(device_aliases("sda"), ["/dev/sda", "/dev/xvda", "/dev/sda1", "/dev/xvda1"]);
    }

    #[test]
    fn device_aliases_other_names_are_just_themselves() {
        assert_eq!(device_aliases("nvme1n1"), ["/dev/nvme1n1"]);
        assert_eq!(device_aliases("dm-0"), ["/dev/dm-0"]);
        assert_eq!(device_aliases("xvdf1"), ["/dev/xvdf1"]);
        assert_eq!(device_aliases("xvd"), ["/dev/xvd"]);
    }

    // ---- next_free_device ----

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn next_free_device_empty_starts_at_f() {
        assert_eq!(next_free_device(&[]).as_deref(), Some("/dev/sdf"));
    }

    #[test]
    fn next_free_device_fills_gaps() {
        assert_eq!(next_free_device(&strings(&["/dev/sdf", "/dev/sdh"])).as_deref(), Some("/dev/sdg"));
        assert_eq!(next_free_device(&strings(&["/dev/sdg"])).as_deref(), Some("/dev/sdf"));
    }

    #[test]
    fn next_free_device_mixed_xvd_and_sd_and_partitions() {
        let used = strings(&["/dev/xvdf", "/dev/sdg", "xvdh", "/dev/sdi1", " /dev/xvdj "]);
        assert_eq!(next_free_device(&used).as_deref(), Some("/dev/sdk"));
    }

    #[test]
    fn next_free_device_ignores_unrelated_names() {
        let used = strings(&["/dev/xvda", "/dev/sda1", "/dev/nvme1n1", "/dev/xvdq", "/dev/sdff", "/dev/sdF", ""]);
        assert_eq!(next_free_device(&used).as_deref(), Some("/dev/sdf"));
    }

    #[test]
    fn next_free_device_all_used() {
        let mut used: Vec<String> = ('f'..='k').map(|c| format!("/dev/sd{c}")).collect();
        used.extend(('l'..='p').map(|c| format!("/dev/xvd{c}")));
        assert_eq!(next_free_device(&used), None);
        used.pop();
        assert_eq!(next_free_device(&used).as_deref(), Some("/dev/sdp"));
    }

    // ---- Sysfs::disks_for ----

    #[test]
    fn disks_for_whole_nvme_disk() {
        let sys = nitro_sys();
        assert_eq!(sys.sysfs().disks_for(259, 4, "/dev/nvme1n1").unwrap(), [ebs_disk("nvme1n1", DATA_VOL)]);
    }

    #[test]
    fn disks_for_partition_maps_to_disk() {
        let sys = nitro_sys();
        assert_eq!(sys.sysfs().disks_for(259, 1, "/dev/nvme0n1p1").unwrap(), [ebs_disk("nvme0n1", ROOT_VOL)]);
        assert_eq!(sys.sysfs().disks_for(259, 3, "/dev/nvme0n1p15").unwrap(), [ebs_disk("nvme0n1", ROOT_VOL)]);
    }

    #[test]
    fn disks_for_prefers_link_over_source() {
        // Sources like /dev/disk/by-label/pgdata do not name the kernel device; the link does.
        let sys = nitro_sys();
        assert_eq!(sys.sysfs().disks_for(259, 5, "/dev/disk/by-label/pgwal").unwrap(), [ebs_disk("nvme2n1", WAL_VOL)]);
    }

    #[test]
    fn disks_for_falls_back_to_source_without_link() {
        let sys = FakeSys::new();
        sys.ebs("nvme1n1", DATA_VOL);
        assert_eq!(sys.sysfs().disks_for(259, 4, "/dev/nvme1n1").unwrap(), [ebs_disk("nvme1n1", DATA_VOL)]);
        // A dev/block entry that is a plain file (not a link) also falls back.
        fs::write(sys.dir.path().join("dev/block/259:9"), "").unwrap();
        assert_eq!(sys.sysfs().disks_for(259, 9, "/dev/nvme1n1").unwrap(), [ebs_disk("nvme1n1", DATA_VOL)]);
    }

    #[test]
    fn disks_for_unknown_device_is_an_io_error() {
        let sys = FakeSys::new();
        // No link and a non-/dev source: nothing names the disk.
        match sys.sysfs().disks_for(259, 4, "pgdata") {
            Err(DiscoverError::Io { path, source }) => {
                assert_eq!(path, sys.dir.path().join("dev/block/259:4"));
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        // "/dev/root" names no sysfs block dir: refuse rather than return a disk we know nothing about.
        match sys.sysfs().disks_for(259, 1, "/dev/root") {
            Err(DiscoverError::Io { path, .. }) => assert_eq!(path, sys.dir.path().join("block/root")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn disks_for_xen_disk_has_no_volume_id() {
        let sys = FakeSys::new();
        sys.dev_link("202:80", "../../devices/vbd-51792/block/xvdf");
        sys.disk("xvdf", None, None);
        let disks = sys.sysfs().disks_for(202, 80, "/dev/xvdf").unwrap();
        assert_eq!(
            disks,
            [Disk { kernel_name: "xvdf".into(), device: "/dev/xvdf".into(), volume_id: None, model: None }]
        );
    }

    #[test]
    fn disks_for_lvm_striped_over_two_ebs_volumes() {
        let sys = FakeSys::new();
        sys.dev_link("253:0", "../../devices/virtual/block/dm-0");
        sys.stacked("dm-0", &["nvme2n1", "nvme1n1"]);
        sys.ebs("nvme1n1", DATA_VOL);
        sys.ebs("nvme2n1", WAL_VOL);
        let disks = sys.sysfs().disks_for(253, 0, "/dev/mapper/pgdata-main").unwrap();
        assert_eq!(disks, [ebs_disk("nvme1n1", DATA_VOL), ebs_disk("nvme2n1", WAL_VOL)]);
    }

    #[test]
    fn disks_for_lvm_on_partitions_dedups_disks() {
        let sys = FakeSys::new();
        sys.dev_link("253:1", "../../devices/virtual/block/dm-1");
        sys.stacked("dm-1", &["nvme1n1p1", "nvme1n1p2", "nvme2n1p1"]);
        sys.ebs("nvme1n1", DATA_VOL);
        sys.ebs("nvme2n1", WAL_VOL);
        let disks = sys.sysfs().disks_for(253, 1, "/dev/mapper/vg-lv").unwrap();
        assert_eq!(disks, [ebs_disk("nvme1n1", DATA_VOL), ebs_disk("nvme2n1", WAL_VOL)]);
    }

    #[test]
    fn disks_for_nested_lvm_on_md_raid() {
        let sys = FakeSys::new();
        sys.dev_link("253:2", "../../devices/virtual/block/dm-2");
        sys.stacked("dm-2", &["md0"]);
        sys.stacked("md0", &["nvme3n1", "nvme1n1", "nvme2n1"]);
        sys.ebs("nvme1n1", DATA_VOL);
        sys.ebs("nvme2n1", WAL_VOL);
        sys.ebs("nvme3n1", TBS_VOL);
        let disks = sys.sysfs().disks_for(253, 2, "/dev/mapper/vg-lv").unwrap();
        let names: Vec<_> = disks.iter().map(|d| d.kernel_name.as_str()).collect();
        assert_eq!(names, ["nvme1n1", "nvme2n1", "nvme3n1"]);
    }

    #[test]
    fn disks_for_slave_cycle_is_an_error_not_a_hang() {
        let sys = FakeSys::new();
        sys.stacked("dm-0", &["dm-1"]);
        sys.stacked("dm-1", &["dm-0"]);
        assert!(matches!(sys.sysfs().disks_for(253, 0, "/dev/dm-0"), Err(DiscoverError::Io { .. })));
    }

    #[test]
    fn disks_for_empty_slaves_dir_is_a_leaf() {
        let sys = FakeSys::new();
        sys.ebs("nvme1n1", DATA_VOL);
        fs::create_dir_all(sys.dir.path().join("block/nvme1n1/slaves")).unwrap();
        assert_eq!(sys.sysfs().disks_for(259, 4, "/dev/nvme1n1").unwrap(), [ebs_disk("nvme1n1", DATA_VOL)]);
    }

    #[test]
    fn disks_for_instance_store_is_not_ebs() {
        let sys = FakeSys::new();
        sys.dev_link("259:0", &nvme_target(1, "nvme1n1"));
        sys.disk("nvme1n1", Some("AWS1F2E3D4C5B6A79801"), Some(INSTANCE_STORE));
        match sys.sysfs().disks_for(259, 0, "/dev/nvme1n1") {
            Err(DiscoverError::NotEbs { device, model }) => {
                assert_eq!(device, "/dev/nvme1n1");
                assert_eq!(model, INSTANCE_STORE);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn disks_for_lvm_mixing_ebs_and_instance_store_is_not_ebs() {
        let sys = FakeSys::new();
        sys.stacked("dm-0", &["nvme1n1", "nvme2n1"]);
        sys.ebs("nvme1n1", DATA_VOL);
        sys.disk("nvme2n1", Some("AWS1F2E3D4C5B6A79801"), Some(INSTANCE_STORE));
        match sys.sysfs().disks_for(253, 0, "/dev/dm-0") {
            Err(DiscoverError::NotEbs { device, .. }) => assert_eq!(device, "/dev/nvme2n1"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn disks_for_nvme_missing_serial_gives_no_volume_id() {
        let sys = FakeSys::new();
        sys.disk("nvme1n1", None, Some(EBS_MODEL));
        let disks = sys.sysfs().disks_for(259, 4, "/dev/nvme1n1").unwrap();
        assert_eq!(disks[0].volume_id, None);
        assert_eq!(disks[0].model.as_deref(), Some(EBS_MODEL));
    }

    #[test]
    fn disks_for_nvme_missing_model_is_accepted() {
        let sys = FakeSys::new();
        sys.disk("nvme1n1", Some("vol04d3c2b1a09f8e7d6"), None);
        let disks = sys.sysfs().disks_for(259, 4, "/dev/nvme1n1").unwrap();
        assert_eq!(disks[0].volume_id.as_deref(), Some(DATA_VOL));
        assert_eq!(disks[0].model, None);
    }

    #[test]
    fn disks_for_non_nvme_model_is_not_checked() {
        let sys = FakeSys::new();
        sys.disk("sdb", Some("0QEMU_QEMU_HARDDISK_drive-scsi1"), Some("QEMU HARDDISK"));
        let disks = sys.sysfs().disks_for(8, 16, "/dev/sdb").unwrap();
        assert_eq!(disks[0].volume_id, None);
        assert_eq!(disks[0].model.as_deref(), Some("QEMU HARDDISK"));
    }

    #[test]
    fn disks_for_btrfs_anonymous_major_uses_source() {
        let sys = nitro_sys();
        // A stray 0:45 link must not be followed: major 0 is never a real block device.
        sys.dev_link("0:45", "../../devices/virtual/block/nvme3n1");
        assert_eq!(sys.sysfs().disks_for(0, 45, "/dev/nvme1n1").unwrap(), [ebs_disk("nvme1n1", DATA_VOL)]);
    }

    // ---- Sysfs::find_volume ----

    fn three_disk_sys() -> FakeSys {
        let sys = FakeSys::new();
        sys.ebs("nvme0n1", ROOT_VOL);
        sys.ebs("nvme1n1", DATA_VOL);
        sys.ebs("nvme2n1", WAL_VOL);
        fs::create_dir_all(sys.dir.path().join("block/loop0")).unwrap();
        sys.disk("nvme3n1", Some("AWS1F2E3D4C5B6A79801"), Some(INSTANCE_STORE));
        sys
    }

    #[test]
    fn find_volume_by_id() {
        let sys = three_disk_sys();
        assert_eq!(sys.sysfs().find_volume(DATA_VOL).unwrap().as_deref(), Some("/dev/nvme1n1"));
        assert_eq!(sys.sysfs().find_volume(ROOT_VOL).unwrap().as_deref(), Some("/dev/nvme0n1"));
        assert_eq!(sys.sysfs().find_volume(WAL_VOL).unwrap().as_deref(), Some("/dev/nvme2n1"));
    }

    #[test]
    fn find_volume_accepts_serial_form() {
        let sys = three_disk_sys();
        assert_eq!(sys.sysfs().find_volume("vol0f1e2d3c4b5a69788").unwrap().as_deref(), Some("/dev/nvme2n1"));
    }

    #[test]
    fn find_volume_absent_or_invalid_is_none() {
        let sys = three_disk_sys();
        assert_eq!(sys.sysfs().find_volume(TBS_VOL).unwrap(), None);
        assert_eq!(sys.sysfs().find_volume("not-a-volume").unwrap(), None);
        assert_eq!(sys.sysfs().find_volume("").unwrap(), None);
    }

    #[test]
    fn find_volume_without_block_dir_is_io_error() {
        let dir = TempDir::new().unwrap();
        match Sysfs::new(dir.path()).find_volume(DATA_VOL) {
            Err(DiscoverError::Io { path, .. }) => assert_eq!(path, dir.path().join("block")),
            other => panic!("{other:?}"),
        }
    }

    // ---- locate / volumes ----

    #[test]
    fn locate_nitro_data_wal_and_tablespace() {
        let mounts = parse_mountinfo(NITRO).unwrap();
        let sys = nitro_sys();
        let located = locate(
            &mounts,
            &sys.sysfs(),
            &paths(&[
                ("data_dir", "/var/lib/postgresql/15/main"),
                ("pg_wal", "/pgwal/15/main/pg_wal"),
                ("tablespace:ts_archive", "/tblspc/ts_archive"),
            ]),
        )
        .unwrap();
        assert_eq!(
            located[0],
            Located {
                role: "data_dir".into(),
                path: "/var/lib/postgresql/15/main".into(),
                mount_point: "/var/lib/postgresql".into(),
                path_in_mount: "15/main".into(),
                fs_type: "xfs".into(),
                source: "/dev/nvme1n1".into(),
                disks: vec![ebs_disk("nvme1n1", DATA_VOL)],
            }
        );
        assert_eq!(located[1].mount_point, Path::new("/pgwal"));
        assert_eq!(located[1].path_in_mount, Path::new("15/main/pg_wal"));
        assert_eq!(located[1].disks, [ebs_disk("nvme2n1", WAL_VOL)]);
        assert_eq!(located[2].role, "tablespace:ts_archive");
        assert_eq!(located[2].fs_type, "ext4");
        assert_eq!(located[2].disks, [ebs_disk("nvme3n1", TBS_VOL)]);
        let mut want = vec![DATA_VOL.to_string(), WAL_VOL.to_string(), TBS_VOL.to_string()];
        want.sort();
        assert_eq!(volumes(&located), want);
    }

    #[test]
    fn locate_data_dir_on_root_volume_partition() {
        let mounts = parse_mountinfo(NITRO).unwrap();
        let sys = nitro_sys();
        let located = locate(&mounts, &sys.sysfs(), &paths(&[("data_dir", "/srv/pg/15/main")])).unwrap();
        assert_eq!(located[0].mount_point, Path::new("/"));
        assert_eq!(located[0].path_in_mount, Path::new("srv/pg/15/main"));
        assert_eq!(volumes(&located), [ROOT_VOL]);
    }

    #[test]
    fn locate_path_equal_to_mount_point() {
        let mounts = parse_mountinfo(NITRO).unwrap();
        let sys = nitro_sys();
        let located = locate(&mounts, &sys.sysfs(), &paths(&[("tablespace:t", "/tblspc")])).unwrap();
        assert_eq!(located[0].mount_point, Path::new("/tblspc"));
        assert_eq!(located[0].path_in_mount, Path::new(""));
    }

    #[test]
    fn locate_bind_mount_keeps_root_in_path_in_mount() {
        // /srv/pg is `mount --bind /var/lib/postgresql/pg /srv/pg`; on the volume the data is under pg/.
        let text = format!("{NITRO}95 29 259:4 /pg /srv/pg rw,noatime shared:44 - xfs /dev/nvme1n1 rw,attr2,inode64\n");
        let mounts = parse_mountinfo(&text).unwrap();
        let sys = nitro_sys();
        let located = locate(
            &mounts,
            &sys.sysfs(),
            &paths(&[("data_dir", "/srv/pg/15/main"), ("tablespace:t", "/var/lib/postgresql/ts")]),
        )
        .unwrap();
        assert_eq!(located[0].mount_point, Path::new("/srv/pg"));
        assert_eq!(located[0].path_in_mount, Path::new("pg/15/main"));
        // Same volume reached two ways counts once.
        assert_eq!(volumes(&located), [DATA_VOL]);
    }

    #[test]
    fn locate_btrfs_subvolume() {
        let text = "29 1 259:1 / / rw - ext4 /dev/nvme0n1p1 rw\n\
                    100 29 0:45 /@pg /var/lib/postgresql rw,relatime shared:60 - btrfs /dev/nvme1n1 rw,ssd,space_cache=v2,subvolid=256,subvol=/@pg\n";
        let mounts = parse_mountinfo(text).unwrap();
        let sys = nitro_sys();
        let located = locate(&mounts, &sys.sysfs(), &paths(&[("data_dir", "/var/lib/postgresql/15/main")])).unwrap();
        assert_eq!(located[0].path_in_mount, Path::new("@pg/15/main"));
        assert_eq!(volumes(&located), [DATA_VOL]);
    }

    #[test]
    fn locate_escaped_mount_point() {
        let text = format!("{NITRO}90 29 259:4 / /mnt/pg\\040data rw - xfs /dev/nvme1n1 rw\n");
        let mounts = parse_mountinfo(&text).unwrap();
        let sys = nitro_sys();
        let located = locate(&mounts, &sys.sysfs(), &paths(&[("data_dir", "/mnt/pg data/main")])).unwrap();
        assert_eq!(located[0].mount_point, Path::new("/mnt/pg data"));
        assert_eq!(located[0].path_in_mount, Path::new("main"));
        assert_eq!(volumes(&located), [DATA_VOL]);
    }

    #[test]
    fn locate_xen_layout() {
        let mounts = parse_mountinfo(XEN).unwrap();
        let sys = FakeSys::new();
        sys.dev_link("202:1", "../../devices/vbd-51712/block/xvda/xvda1");
        sys.dev_link("202:80", "../../devices/vbd-51792/block/xvdf");
        sys.disk("xvda", None, None);
        sys.disk("xvdf", None, None);
        let located =
            locate(&mounts, &sys.sysfs(), &paths(&[("data_dir", "/data/pgsql/15/data"), ("tablespace:t", "/opt/ts")]))
                .unwrap();
        assert_eq!(located[0].disks[0].kernel_name, "xvdf");
        assert_eq!(located[0].disks[0].volume_id, None);
        assert_eq!(device_aliases(&located[0].disks[0].kernel_name), ["/dev/xvdf", "/dev/sdf"]);
        assert_eq!(located[1].disks[0].kernel_name, "xvda");
        assert_eq!(located[1].fs_type, "xfs");
        // Xen volumes are matched by device name later, so there are no ids here.
        assert!(volumes(&located).is_empty());
    }

    #[test]
    fn locate_lvm_striped() {
        let mounts = parse_mountinfo(LVM).unwrap();
        let sys = FakeSys::new();
        sys.dev_link("253:0", "../../devices/virtual/block/dm-0");
        sys.stacked("dm-0", &["nvme1n1", "nvme2n1"]);
        sys.ebs("nvme1n1", DATA_VOL);
        sys.ebs("nvme2n1", WAL_VOL);
        let located = locate(&mounts, &sys.sysfs(), &paths(&[("data_dir", "/var/lib/postgresql/16/main")])).unwrap();
        assert_eq!(located[0].source, "/dev/mapper/pgdata-main");
        assert_eq!(located[0].disks.len(), 2);
        let mut want = vec![DATA_VOL.to_string(), WAL_VOL.to_string()];
        want.sort();
        assert_eq!(volumes(&located), want);
    }

    #[test]
    fn locate_instance_store_is_not_ebs() {
        let mounts = parse_mountinfo(NITRO).unwrap();
        let sys = FakeSys::new();
        sys.dev_link("259:4", &nvme_target(1, "nvme1n1"));
        sys.disk("nvme1n1", Some("AWS1F2E3D4C5B6A79801"), Some(INSTANCE_STORE));
        let err = locate(&mounts, &sys.sysfs(), &paths(&[("data_dir", "/var/lib/postgresql/15/main")])).unwrap_err();
        assert!(matches!(err, DiscoverError::NotEbs { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "/dev/nvme1n1 is \"Amazon EC2 NVMe Instance Storage\", not an EBS volume: instance storage cannot be \
             snapshotted; move the data to EBS or set backup.provider = \"files\""
        );
    }

    #[test]
    fn locate_overlay_root_is_not_a_block_device() {
        let mounts = parse_mountinfo(DOCKER).unwrap();
        let sys = FakeSys::new();
        let err = locate(&mounts, &sys.sysfs(), &paths(&[("data_dir", "/var/lib/postgresql/15/main")])).unwrap_err();
        match &err {
            DiscoverError::NotBlockDevice { role, path, fs_type, mount_source } => {
                assert_eq!(role, "data_dir");
                assert_eq!(path, Path::new("/var/lib/postgresql/15/main"));
                assert_eq!(fs_type, "overlay");
                assert_eq!(mount_source, "overlay");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "data_dir /var/lib/postgresql/15/main is on overlay (\"overlay\"), not on an EBS volume: \
             set backup.provider = \"files\""
        );
    }

    #[test]
    fn locate_rejects_virtual_and_network_filesystems() {
        let text = "29 1 259:1 / / rw - ext4 /dev/nvme0n1p1 rw\n\
                    110 29 0:50 / /mnt/nfs rw,relatime shared:70 - nfs4 10.0.0.5:/export rw,vers=4.1,rsize=1048576\n\
                    111 29 0:51 / /mnt/9p rw,relatime - 9p hostshare rw,trans=virtio\n\
                    112 29 0:52 / /mnt/sshfs rw,nosuid,nodev,relatime - fuse.sshfs pg@db1:/data rw,user_id=0\n\
                    113 29 0:53 / /mnt/tmp rw - tmpfs tmpfs rw\n\
                    114 29 0:54 / /mnt/efs rw - nfs4 fs-0123abcd.efs.us-east-1.amazonaws.com:/ rw\n\
                    115 29 0:55 / /mnt/ntfs rw - fuseblk /dev/nvme4n1p1 rw\n\
                    116 29 0:56 / /mnt/zfs rw - zfs tank/pg rw,xattr\n\
                    117 29 0:57 / /mnt/odd rw - weirdfs something rw\n";
        let mounts = parse_mountinfo(text).unwrap();
        let sys = nitro_sys();
        for (dir, fs) in [
            ("/mnt/nfs", "nfs4"),
            ("/mnt/9p", "9p"),
            ("/mnt/sshfs", "fuse.sshfs"),
            ("/mnt/tmp", "tmpfs"),
            ("/mnt/efs", "nfs4"),
            ("/mnt/ntfs", "fuseblk"),
            ("/mnt/zfs", "zfs"),
            ("/mnt/odd", "weirdfs"),
        ] {
            let err = locate(&mounts, &sys.sysfs(), &paths(&[("data_dir", &format!("{dir}/pg"))])).unwrap_err();
            match err {
                DiscoverError::NotBlockDevice { fs_type, .. } => assert_eq!(fs_type, fs, "{dir}"),
                other => panic!("{dir}: {other:?}"),
            }
        }
    }

    #[test]
    fn locate_relative_path_has_no_mount() {
        let mounts = parse_mountinfo(NITRO).unwrap();
        let sys = nitro_sys();
        let err = locate(&mounts, &sys.sysfs(), &paths(&[("data_dir", "var/lib/postgresql")])).unwrap_err();
        assert!(matches!(&err, DiscoverError::NoMount { role, .. } if role == "data_dir"), "{err:?}");
        assert_eq!(
            err.to_string(),
            "data_dir var/lib/postgresql is not under any mount in mountinfo: pass an absolute, canonical path"
        );
    }

    #[test]
    fn locate_first_error_wins_and_empty_input_is_empty() {
        let mounts = parse_mountinfo(NITRO).unwrap();
        let sys = nitro_sys();
        assert!(locate(&mounts, &sys.sysfs(), &[]).unwrap().is_empty());
        let err = locate(
            &mounts,
            &sys.sysfs(),
            &paths(&[("data_dir", "/var/lib/postgresql/15/main"), ("pg_wal", "/run/wal")]),
        )
        .unwrap_err();
        assert!(matches!(&err, DiscoverError::NotBlockDevice { role, .. } if role == "pg_wal"), "{err:?}");
    }

    #[test]
    fn locate_unknown_sysfs_device_is_io_error() {
        let mounts = parse_mountinfo("29 1 259:1 / / rw - ext4 /dev/root rw\n").unwrap();
        let sys = FakeSys::new();
        let err = locate(&mounts, &sys.sysfs(), &paths(&[("data_dir", "/var/lib/postgresql")])).unwrap_err();
        assert!(matches!(err, DiscoverError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("needs read access to /proc and /sys"), "{err}");
    }

    // ---- this sandbox's real mountinfo ----

    #[test]
    fn host_capture_duplicate_mount_points_last_wins() {
        let mounts = parse_mountinfo(HOST).unwrap();
        assert_eq!(mount_for(Path::new("/dev/pts/0"), &mounts).unwrap().mount_id, 29);
        assert_eq!(mount_for(Path::new("/dev/shm/x"), &mounts).unwrap().mount_id, 30);
        assert_eq!(mount_for(Path::new("/dev/null"), &mounts).unwrap().mount_id, 24);
    }

    #[test]
    fn host_capture_virtual_mounts_are_not_block_devices() {
        let mounts = parse_mountinfo(HOST).unwrap();
        let sys = FakeSys::new();
        for (path, fs, source) in [
            ("/dev/shm/pgdata", "tmpfs", "tmpfs"),
            ("/mnt/sandboxing/model_tools_env/v1/python/pg", "tmpfs", "model_tools_unavailable"),
            ("/sys/fs/cgroup/memory/pg", "cgroup", "cgroup"),
            ("/proc/1", "proc", "proc"),
        ] {
            match locate(&mounts, &sys.sysfs(), &paths(&[("data_dir", path)])) {
                Err(DiscoverError::NotBlockDevice { fs_type, mount_source, .. }) => {
                    assert_eq!((fs_type.as_str(), mount_source.as_str()), (fs, source), "{path}");
                }
                other => panic!("{path}: {other:?}"),
            }
        }
    }

    #[test]
    fn host_capture_root_is_virtio_ext4_without_volume_id() {
        // Here / is ext4 on a virtio disk, not overlay: it is a block device, but no EBS id can be derived.
        let mounts = parse_mountinfo(HOST).unwrap();
        let sys = FakeSys::new();
        sys.dev_link("254:0", "../../devices/pci0000:00/0000:00:05.0/virtio2/block/vda");
        sys.disk("vda", None, None);
        sys.dev_link("7:0", "../../devices/virtual/block/loop0");
        fs::create_dir_all(sys.dir.path().join("block/loop0")).unwrap();
        let located = locate(
            &mounts,
            &sys.sysfs(),
            &paths(&[("data_dir", "/var/lib/postgresql/15/main"), ("tablespace:t", "/tmp/fzmnt/ts")]),
        )
        .unwrap();
        assert_eq!((located[0].fs_type.as_str(), located[0].source.as_str()), ("ext4", "/dev/vda"));
        assert_eq!(located[0].disks[0].kernel_name, "vda");
        assert_eq!(located[1].disks[0].kernel_name, "loop0");
        assert!(volumes(&located).is_empty());
    }

    // ---- error messages ----

    #[test]
    fn io_error_display_names_path_and_fix() {
        let err = DiscoverError::Io {
            path: "/sys/block/nvme1n1/device/serial".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        let msg = err.to_string();
        assert!(msg.starts_with("cannot read /sys/block/nvme1n1/device/serial: permission denied"), "{msg}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn volumes_dedups_and_skips_missing_ids() {
        let loc = |disks: Vec<Disk>| Located {
            role: "r".into(),
            path: "/p".into(),
            mount_point: "/".into(),
            path_in_mount: "p".into(),
            fs_type: "xfs".into(),
            source: "/dev/x".into(),
            disks,
        };
        let xen = Disk { kernel_name: "xvdf".into(), device: "/dev/xvdf".into(), volume_id: None, model: None };
        let located = [
            loc(vec![ebs_disk("nvme2n1", WAL_VOL), ebs_disk("nvme1n1", DATA_VOL)]),
            loc(vec![ebs_disk("nvme1n1", DATA_VOL), xen]),
        ];
        let mut want = vec![DATA_VOL.to_string(), WAL_VOL.to_string()];
        want.sort();
        assert_eq!(volumes(&located), want);
        assert!(volumes(&[]).is_empty());
    }
}
