//! Bounded fuzzing of the reader: mutated real-looking segments never panic or hang; nor do
//! mutated or random block-reference blobs.

use proptest::prelude::*;
use std::sync::OnceLock;

use super::constants::{
    BKPBLOCK_HAS_DATA, BKPBLOCK_HAS_IMAGE, BKPBLOCK_SAME_REL, BKPIMAGE_HAS_HOLE, RM_XACT_ID, SIZE_OF_LONG_PHD,
    XACT_XINFO_HAS_INVALS, XACT_XINFO_HAS_RELFILENODES, XACT_XINFO_HAS_SUBXACTS, XLOG_XACT_ABORT, XLOG_XACT_COMMIT,
    XLOG_XACT_HAS_INFO,
};
use super::decode::{le_u32, record_crc};
use super::synth::*;
use super::{summarize_segment, summarize_segment_at, xact_end_from_record, BlockRefs, SegmentSummarizer, WalReader};

/// WAL bytes, and (offset, length) of its single-page records.
type Wal = (Vec<u8>, Vec<(usize, usize)>);

/// Two segments of real-looking WAL (block references with and without images, commits
/// and aborts with optional sections, records split across pages and one across the
/// segment edge) and the single-page records in it, as (offset, length).
fn wal() -> &'static Wal {
    static WAL: OnceLock<Wal> = OnceLock::new();
    WAL.get_or_init(|| {
        let mut b = WalBuilder::new(2);
        let mut lsns = Vec::new();
        let sub = [2u32.to_le_bytes(), 901u32.to_le_bytes(), 902u32.to_le_bytes()].concat();
        let mut inval = 3i32.to_le_bytes().to_vec();
        inval.extend([0x44u8; 3 * 16]);
        let mut x = 1u32;
        while b.pos < START + SEG + SEG / 2 {
            let lsn = match x % 8 {
                0 => b.commit(x, 1_000_000 + i64::from(x)),
                1 => {
                    let image = Some((vec![0x55; 900], 300, BKPIMAGE_HAS_HOLE | 0x04, Some(500)));
                    let frags = [
                        Frag::Block {
                            id: 0,
                            fork_flags: BKPBLOCK_HAS_IMAGE | BKPBLOCK_HAS_DATA,
                            data: vec![1; 40],
                            image,
                        },
                        block(1, BKPBLOCK_SAME_REL | BKPBLOCK_HAS_DATA, &[2; 17]),
                        Frag::Origin(3),
                    ];
                    b.add(x, 0, 10, &frags, &[3; 30])
                }
                2 => {
                    let main = xact_main(2_000_000, Some((XACT_XINFO_HAS_SUBXACTS, &sub)));
                    b.add(x, XLOG_XACT_ABORT | XLOG_XACT_HAS_INFO, RM_XACT_ID, &[Frag::Toplevel(7)], &main)
                }
                3 => b.add(0, 0, 21, &[], &vec![0xAB; (x as usize * 977) % 12_000 + 1]),
                4 => {
                    let main = xact_main(3_000_000, Some((XACT_XINFO_HAS_INVALS, &inval)));
                    b.add(x, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, RM_XACT_ID, &[], &main)
                }
                5 => b.add(x, 0, 10, &[block(0, BKPBLOCK_HAS_DATA, &[9; 300]), at(1, rel(x % 50), 2, x / 3)], &[]),
                // A storage record and a commit dropping a relation: record-level changes.
                6 => b.add(x, 0x10 | 0x01, 2, &[], &[[0x22u8; 12].as_slice(), &0u32.to_le_bytes()].concat()),
                _ => {
                    let mut rels = 1i32.to_le_bytes().to_vec();
                    rels.extend([0x33u8; 12]);
                    let main = xact_main(4_000_000, Some((XACT_XINFO_HAS_RELFILENODES, &rels)));
                    b.add(x, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, RM_XACT_ID, &[], &main)
                }
            };
            lsns.push(lsn);
            x += 1;
        }
        let single_page = lsns
            .iter()
            .map(|&l| (b.idx(l), le_u32(&b.buf, b.idx(l)).unwrap() as usize))
            .filter(|&(i, len)| i / PAGE == (i + len - 1) / PAGE)
            .collect();
        (b.buf, single_page)
    })
}

/// One change to the two segments.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR a byte anywhere.
    Xor(usize, u8),
    /// XOR a byte of a page header (magic, flags, timeline, address, remaining length).
    PageHeader(usize, usize, u8),
    /// Change a byte of a record past its length field and fix its CRC, so the layout
    /// decoder (block headers, lengths, xact sections) sees it.
    Record(usize, usize, u8),
    /// Zero a range.
    Zero(usize, usize),
    /// Copy a range over another (stale pages, torn writes).
    Copy(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let len = 2 * SEG as usize;
    prop_oneof![
        (0..len, 1u8..).prop_map(|(i, m)| Mutation::Xor(i, m)),
        (0..2 * PAGES_PER_SEG as usize, 0..40usize, 1u8..).prop_map(|(p, o, m)| Mutation::PageHeader(p, o, m)),
        (any::<usize>(), 4..4096usize, 1u8..).prop_map(|(r, o, m)| Mutation::Record(r, o, m)),
        (0..len, 1..20_000usize).prop_map(|(i, n)| Mutation::Zero(i, n)),
        (0..len, 0..len, 1..20_000usize).prop_map(|(a, b, n)| Mutation::Copy(a, b, n)),
    ]
}

fn apply(buf: &mut [u8], m: &Mutation, records: &[(usize, usize)]) {
    let len = buf.len();
    match *m {
        Mutation::Xor(i, x) => buf[i] ^= x,
        Mutation::PageHeader(p, o, x) => buf[p * PAGE + o] ^= x,
        Mutation::Record(r, o, x) => {
            let (at, n) = records[r % records.len()];
            buf[at + o % n.max(5)] ^= x;
            let crc = record_crc(&buf[at..at + n]);
            buf[at + 20..at + 24].copy_from_slice(&crc.to_le_bytes());
        }
        Mutation::Zero(i, n) => buf[i..(i + n).min(len)].fill(0),
        Mutation::Copy(from, to, n) => {
            let n = n.min(len - from).min(len - to);
            buf.copy_within(from..from + n, to);
        }
    }
}

/// Runs every entry point over the two segments; only their results are allowed out.
fn read_all(buf: &[u8]) {
    let (s0, s1) = buf.split_at(SEG as usize);
    let _ = summarize_segment(s0, SEG);
    let a = summarize_segment_at(s0, SEG, START);
    let b = summarize_segment_at(s1, SEG, START + SEG);
    // Whatever the walk made of the bytes, its block summary encodes, reads back, merges.
    let parts: Vec<BlockRefs> = [a, b].into_iter().filter_map(|s| s.ok()).map(|s| s.block_refs).collect();
    for p in &parts {
        assert_eq!(BlockRefs::decode(&p.encode()).as_ref(), Ok(p));
    }
    let m = BlockRefs::merge(&parts);
    assert_eq!(BlockRefs::decode(&m.encode()), Ok(m));
    let mut r = WalReader::starting_at(SEG, START).unwrap();
    for seg in [s0, s1] {
        let res = r.feed_segment(seg, |rec| {
            let _ = xact_end_from_record(rec);
        });
        if res.is_err() {
            break;
        }
        let _ = (r.pending_record(), r.pending_xact_end(), r.end_of_wal(), r.last_record_end_lsn());
    }
    if let Ok(mut s) = SegmentSummarizer::starting_at(SEG, START) {
        let fed = s0.chunks(64 * PAGE).try_for_each(|piece| s.feed(piece));
        if fed.is_ok() {
            let _ = s.finish();
        }
    }
}

#[test]
fn fuzz_unmutated_wal_reads_cleanly() {
    let (buf, records) = wal();
    assert!(records.len() > 100, "{} single-page records", records.len());
    let s = summarize_segment_at(&buf[..SEG as usize], SEG, START).unwrap();
    assert!(s.records > 100 && s.incomplete.is_some(), "{s:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn fuzz_mutated_segments_never_panic(muts in proptest::collection::vec(mutation(), 1..6)) {
        let (orig, records) = wal();
        let mut buf = orig.clone();
        for m in &muts {
            apply(&mut buf, m, records);
        }
        read_all(&buf);
    }

    #[test]
    fn fuzz_short_or_random_input_is_an_error(len in 0..3 * PAGE, seed in any::<u64>(), keep_header in any::<bool>()) {
        let mut x = seed | 1;
        let mut buf: Vec<u8> = (0..len).map(|_| { x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8 }).collect();
        if keep_header {
            let n = len.min(SIZE_OF_LONG_PHD);
            buf[..n].copy_from_slice(&wal().0[..n]);
        }
        prop_assert!(summarize_segment(&buf, SEG).is_err());
        let mut r = WalReader::starting_at(SEG, START).unwrap();
        let _ = r.feed_pages(&buf, |_| {});
    }
}

/// A block summary of the fuzz WAL's first segment, as a blob.
fn blob() -> &'static [u8] {
    static BLOB: OnceLock<Vec<u8>> = OnceLock::new();
    BLOB.get_or_init(|| summarize_segment_at(&wal().0[..SEG as usize], SEG, START).unwrap().block_refs.encode())
}

#[test]
fn fuzz_blob_holds_every_part() {
    let r = BlockRefs::decode(blob()).unwrap();
    assert!(
        r.block_count() > 100 && r.changes().len() > 100,
        "{} blocks, {} changes",
        r.block_count(),
        r.changes().len()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn fuzz_mutated_block_blobs_never_panic(
        muts in proptest::collection::vec((any::<usize>(), 1u8..), 1..6),
        cut in any::<usize>(),
        random in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut b = blob().to_vec();
        for (i, x) in &muts {
            let n = b.len();
            b[i % n] ^= x;
        }
        // What reads back reads back the same once more.
        if let Ok(r) = BlockRefs::decode(&b) {
            prop_assert_eq!(BlockRefs::decode(&r.encode()), Ok(r));
        }
        let _ = BlockRefs::decode(&b[..cut % (b.len() + 1)]);
        let mut framed = b"TMBR\x01".to_vec();
        framed.extend(&random);
        let _ = BlockRefs::decode(&framed);
        let _ = BlockRefs::decode(&random);
    }
}
