//! The block references of archived segments (`wal-index/<TLI>/blocks/<FIRST>-<LAST>`):
//! which relation blocks and files each segment's records change, what an incremental backup
//! reads to copy only those. Written at push time beside the commit-time summaries, in packs
//! (one per batch the daemon writes, one per segment a direct push writes), sealed. A
//! segment with no references (a pusher killed before its pack, a summary that failed) is a
//! gap the consumer must cover by copying in full: never a silently stale block.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::repo::{RepoError, Repository};
use crate::wal::name::{timeline_hex, Segment};
use crate::wal::record::BlockRefs;

/// The pack format's first bytes and version.
const MAGIC: &[u8; 4] = b"TMBR";
/// Version of the pack layout (each entry is [`BlockRefs::encode`], versioned on its own).
pub const PACK_VERSION: u8 = 1;

/// Encodes segments' encoded block references into one pack (pure): magic, version, count,
/// then per segment its number, length and bytes, in segment order.
pub fn encode_pack(entries: &BTreeMap<u64, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + entries.values().map(|v| v.len() + 12).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.push(PACK_VERSION);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (n, blob) in entries {
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&(blob.len() as u32).to_le_bytes());
        out.extend_from_slice(blob);
    }
    out
}

/// Decodes a pack (pure); the error says what is wrong with it.
pub fn decode_pack(blob: &[u8]) -> Result<BTreeMap<u64, Vec<u8>>, String> {
    let take = |at: usize, n: usize| blob.get(at..at + n).ok_or_else(|| format!("pack cut short at byte {at}"));
    if take(0, 4)? != MAGIC {
        return Err("not a block-reference pack (bad magic)".into());
    }
    let version = take(4, 1)?[0];
    if version != PACK_VERSION {
        return Err(format!(
            "block-reference pack version {version} is not readable by this tidemark (it reads {PACK_VERSION})"
        ));
    }
    let count = u32::from_le_bytes(take(5, 4)?.try_into().map_err(|_| "count")?) as usize;
    let mut at = 9;
    let mut out = BTreeMap::new();
    for _ in 0..count {
        let n = u64::from_le_bytes(take(at, 8)?.try_into().map_err(|_| "segment")?);
        let len = u32::from_le_bytes(take(at + 8, 4)?.try_into().map_err(|_| "length")?) as usize;
        out.insert(n, take(at + 12, len)?.to_vec());
        at += 12 + len;
    }
    if at != blob.len() {
        return Err(format!("{} bytes after the pack's last entry", blob.len() - at));
    }
    Ok(out)
}

fn prefix(repo: &Repository, timeline: u32) -> String {
    format!("clusters/{}/wal-index/{}/blocks/", repo.cluster(), timeline_hex(timeline))
}

/// Key of the pack of segments `first..=last`.
pub fn pack_key(repo: &Repository, timeline: u32, first: u64, last: u64, seg_size: u64) -> String {
    let name = |n| Segment { timeline, number: n }.name(seg_size);
    format!("{}{}-{}", prefix(repo, timeline), name(first), name(last))
}

/// The segment range a pack's name covers (pure).
pub fn pack_range(name: &str, seg_size: u64) -> Option<(u64, u64)> {
    let (a, b) = name.split_once('-')?;
    let (a, b) = (Segment::parse(a, seg_size).ok()?, Segment::parse(b, seg_size).ok()?);
    (a.timeline == b.timeline && a.number <= b.number).then_some((a.number, b.number))
}

/// The timeline's packs: key and the segment range its name covers.
async fn packs(repo: &Repository, timeline: u32, seg_size: u64) -> Result<Vec<(String, u64, u64)>, RepoError> {
    let listed = repo.store().list(&prefix(repo, timeline)).await?;
    Ok(listed
        .into_iter()
        .filter_map(|o| {
            let (a, b) = pack_range(o.key.rsplit('/').next()?, seg_size)?;
            Some((o.key, a, b))
        })
        .collect())
}

/// Stores the block references of some segments of `timeline` as one pack (no-op for none).
pub async fn save(
    repo: &Repository,
    timeline: u32,
    seg_size: u64,
    entries: &BTreeMap<u64, Vec<u8>>,
) -> Result<(), RepoError> {
    let (Some(first), Some(last)) = (entries.keys().next(), entries.keys().next_back()) else { return Ok(()) };
    let key = pack_key(repo, timeline, *first, *last, seg_size);
    repo.put_sealed(&key, Bytes::from(encode_pack(entries))).await
}

/// The block references of a stretch of archived WAL.
#[derive(Debug, Default)]
pub struct Stretch {
    /// Per segment that has them, its references, in order.
    pub segments: BTreeMap<u64, BlockRefs>,
    /// Segments of the stretch with no references stored.
    pub missing: Vec<u64>,
    /// Segments whose stored references do not decode, with why.
    pub unreadable: Vec<(u64, String)>,
}

impl Stretch {
    /// Whether every segment of the stretch has references that decoded.
    pub fn whole(&self) -> bool {
        self.missing.is_empty() && self.unreadable.is_empty()
    }

    /// The segments' references merged (records crossing segment edges joined).
    pub fn merged(&self) -> BlockRefs {
        BlockRefs::merge(self.segments.values())
    }
}

/// Reads the block references of segments `from..=to` of `timeline`: one listing of the
/// timeline's packs, and the packs that overlap the stretch.
pub async fn between(
    repo: &Repository,
    timeline: u32,
    seg_size: u64,
    from: u64,
    to: u64,
) -> Result<Stretch, RepoError> {
    let mut blobs: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut out = Stretch::default();
    for (key, a, b) in packs(repo, timeline, seg_size).await? {
        if b < from || a > to {
            continue;
        }
        let Some(plain) = repo.get_opened(&key).await? else { continue };
        match decode_pack(&plain) {
            Ok(entries) => blobs.extend(entries.into_iter().filter(|(n, _)| (from..=to).contains(n))),
            Err(why) => {
                for n in a.max(from)..=b.min(to) {
                    out.unreadable.push((n, format!("{key}: {why}")));
                }
            }
        }
    }
    for n in from..=to {
        match blobs.remove(&n) {
            Some(blob) => match BlockRefs::decode(&blob) {
                Ok(r) => {
                    out.segments.insert(n, r);
                }
                Err(e) => out.unreadable.push((n, e.to_string())),
            },
            None if out.unreadable.iter().any(|(u, _)| *u == n) => {}
            None => out.missing.push(n),
        }
    }
    out.unreadable.sort();
    out.unreadable.dedup_by_key(|(n, _)| *n);
    Ok(out)
}

/// Takes segment `seg` out of every pack holding it (`wal-remove` of a foreign segment: the
/// segment archived in its place later brings its own).
pub async fn forget_segment(repo: &Repository, seg: Segment, seg_size: u64) -> Result<(), RepoError> {
    for (key, a, b) in packs(repo, seg.timeline, seg_size).await? {
        if !(a..=b).contains(&seg.number) {
            continue;
        }
        let Some(plain) = repo.get_opened(&key).await? else { continue };
        // A pack that does not decode is unreadable for all its segments anyway.
        let Ok(mut entries) = decode_pack(&plain) else { continue };
        if entries.remove(&seg.number).is_some() {
            if entries.is_empty() {
                repo.store().delete(&key).await?;
            } else {
                repo.put_sealed(&key, Bytes::from(encode_pack(&entries))).await?;
            }
        }
    }
    Ok(())
}

/// Deletes the packs that end below segment `floor` (the WAL purge removed their segments).
pub async fn forget_below(repo: &Repository, timeline: u32, seg_size: u64, floor: u64) -> Result<usize, RepoError> {
    let mut gone = 0;
    for (key, _, b) in packs(repo, timeline, seg_size).await? {
        if b < floor {
            repo.store().delete(&key).await?;
            gone += 1;
        }
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    #[test]
    fn packs_round_trip_and_say_what_is_wrong() {
        let entries: BTreeMap<u64, Vec<u8>> = [(5, vec![1, 2, 3]), (6, vec![]), (9, vec![7; 300])].into();
        let blob = encode_pack(&entries);
        assert_eq!(decode_pack(&blob).unwrap(), entries);
        assert_eq!(decode_pack(&encode_pack(&BTreeMap::new())).unwrap(), BTreeMap::new());
        assert!(decode_pack(&blob[..blob.len() - 1]).unwrap_err().contains("cut short"));
        let mut extra = blob.clone();
        extra.push(0);
        assert!(decode_pack(&extra).unwrap_err().contains("after the pack's last entry"));
        let mut v2 = blob.clone();
        v2[4] = 2;
        assert!(decode_pack(&v2).unwrap_err().contains("version 2"));
        assert!(decode_pack(b"{\"json\": 1}").unwrap_err().contains("bad magic"));
        assert!(decode_pack(b"TM").unwrap_err().contains("cut short"));
    }

    #[test]
    fn pack_names_give_their_range() {
        let name = |n| Segment { timeline: 2, number: n }.name(SEG);
        assert_eq!(pack_range(&format!("{}-{}", name(0x105), name(0x10A)), SEG), Some((0x105, 0x10A)));
        assert_eq!(pack_range(&format!("{}-{}", name(7), name(7)), SEG), Some((7, 7)));
        assert_eq!(pack_range(&format!("{}-{}", name(8), name(7)), SEG), None);
        let other = Segment { timeline: 3, number: 9 }.name(SEG);
        assert_eq!(pack_range(&format!("{}-{other}", name(7)), SEG), None);
        assert_eq!(pack_range("summary", SEG), None);
        assert_eq!(pack_range(&name(7), SEG), None);
    }

    fn repo() -> Repository {
        crate::store::memory::repo_over(std::sync::Arc::new(crate::store::memory::MemoryStore::new()), "c")
    }

    fn refs(n: u64) -> Vec<u8> {
        BlockRefs::new(n * SEG, (n + 1) * SEG).encode()
    }

    #[tokio::test]
    async fn a_stretch_reads_its_packs_and_names_its_gaps() {
        let r = repo();
        save(&r, 1, SEG, &[(3, refs(3)), (4, refs(4))].into()).await.unwrap();
        save(&r, 1, SEG, &[(6, refs(6))].into()).await.unwrap();
        save(&r, 1, SEG, &[(7, b"not refs".to_vec())].into()).await.unwrap();
        save(&r, 2, SEG, &[(5, refs(5))].into()).await.unwrap();
        let s = between(&r, 1, SEG, 4, 8).await.unwrap();
        assert_eq!(s.segments.keys().copied().collect::<Vec<_>>(), [4, 6]);
        assert_eq!(s.missing, [5, 8], "timeline 2's segment 5 is not timeline 1's");
        assert_eq!(s.unreadable.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [7]);
        assert!(!s.whole());
        let whole = between(&r, 1, SEG, 3, 4).await.unwrap();
        assert!(whole.whole());
        assert_eq!(whole.merged().start_lsn(), 3 * SEG);
        assert_eq!(forget_below(&r, 1, SEG, 6).await.unwrap(), 1);
        assert_eq!(between(&r, 1, SEG, 3, 4).await.unwrap().missing, [3, 4]);
        assert_eq!(between(&r, 1, SEG, 6, 6).await.unwrap().segments.len(), 1);
        // A removed segment leaves its pack; the last one of a pack takes the pack with it.
        save(&r, 1, SEG, &[(10, refs(10)), (11, refs(11))].into()).await.unwrap();
        forget_segment(&r, Segment { timeline: 1, number: 10 }, SEG).await.unwrap();
        assert_eq!(between(&r, 1, SEG, 10, 11).await.unwrap().missing, [10]);
        forget_segment(&r, Segment { timeline: 1, number: 11 }, SEG).await.unwrap();
        assert!(r.store().list(&prefix(&r, 1)).await.unwrap().iter().all(|o| !o.key.contains("0000000B")));
    }

    #[tokio::test]
    async fn a_damaged_pack_makes_its_segments_unreadable() {
        let r = repo();
        let key = pack_key(&r, 1, 3, 4, SEG);
        r.put_sealed(&key, Bytes::from_static(b"TMBR\x01\x09\x00\x00\x00")).await.unwrap();
        let s = between(&r, 1, SEG, 3, 4).await.unwrap();
        assert_eq!(s.unreadable.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [3, 4]);
        assert!(s.unreadable[0].1.contains("cut short"), "{:?}", s.unreadable);
        assert!(s.missing.is_empty());
    }
}
