//! The sealed object format: zstd (one or more concatenated frames), then a streaming
//! AES-256-GCM envelope.
//!
//! Layout (all integers big-endian):
//! ```text
//! "TDMK" | version u8 = 1 | key id len u8 | key id | key check [8] | salt [32]
//! | nonce prefix [7] | name check [16] | header mac [16] | chunk*
//! ```
//! Each chunk is at most 1 MiB of compressed plaintext sealed with AES-256-GCM under the
//! per-object key HKDF-SHA256(master, salt, info = object key); its nonce is
//! prefix ‖ counter u32 ‖ last-flag u8 and its associated data is the object key. The
//! final chunk (possibly empty) carries last-flag 1, so truncation at a chunk boundary is
//! detected. The key check, name check and header MAC only exist to tell the failure
//! modes apart; the AEAD tags alone already make every one of them fail.

use std::io::{self, Read, Write};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use super::keyring::{Key, Keyring};
use super::CodecError;

/// Size of one plaintext chunk.
pub const CHUNK: usize = 1 << 20;
const TAG: usize = 16;
const MAGIC: &[u8; 4] = b"TDMK";
const VERSION: u8 = 1;
const SALT: usize = 32;
const PREFIX: usize = 7;

type HmacSha256 = Hmac<Sha256>;

fn hmac16(key: &Key, parts: &[&[u8]]) -> [u8; 16] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key.bytes()).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    let out = mac.finalize().into_bytes();
    let mut r = [0u8; 16];
    r.copy_from_slice(&out[..16]);
    r
}

fn key_check(key: &Key) -> [u8; 8] {
    let full = hmac16(key, &[b"tidemark key check v1"]);
    let mut r = [0u8; 8];
    r.copy_from_slice(&full[..8]);
    r
}

fn name_check(key: &Key, salt: &[u8], object_key: &str) -> [u8; 16] {
    hmac16(key, &[b"tidemark name v1", salt, object_key.as_bytes()])
}

fn object_cipher(key: &Key, salt: &[u8], object_key: &str) -> Aes256Gcm {
    let hk = Hkdf::<Sha256>::new(Some(salt), key.bytes());
    let mut okm = [0u8; 32];
    hk.expand(object_key.as_bytes(), &mut okm).expect("32 bytes is a valid HKDF-SHA256 length");
    Aes256Gcm::new_from_slice(&okm).expect("AES-256 key is 32 bytes")
}

fn nonce(prefix: &[u8; PREFIX], counter: u32, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..PREFIX].copy_from_slice(prefix);
    n[PREFIX..PREFIX + 4].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// Sizes of a sealed object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SealStats {
    /// Bytes read from the input.
    pub plain_bytes: u64,
    /// Bytes of the sealed object.
    pub sealed_bytes: u64,
}

/// Streaming encryptor: compressed bytes in, sealed chunks out.
struct SealWriter<W: Write> {
    out: W,
    cipher: Aes256Gcm,
    prefix: [u8; PREFIX],
    aad: Vec<u8>,
    buf: Vec<u8>,
    counter: u32,
    written: u64,
}

impl<W: Write> SealWriter<W> {
    fn emit(&mut self, last: bool) -> io::Result<()> {
        let n = nonce(&self.prefix, self.counter, last);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&n), &self.aad, &mut self.buf)
            .map_err(|_| io::Error::other("AES-GCM encryption failed"))?;
        self.out.write_all(&self.buf)?;
        self.out.write_all(&tag)?;
        self.written += (self.buf.len() + TAG) as u64;
        self.buf.clear();
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| io::Error::other("object too large for the envelope (2^32 chunks)"))?;
        Ok(())
    }

    fn finish(mut self) -> io::Result<(W, u64)> {
        self.emit(true)?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            // A full buffer is only sealed as non-last once more data proves it is not last.
            if self.buf.len() == CHUNK {
                self.emit(false)?;
            }
            let take = (CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compresses and seals `input` as the object `object_key`, writing the sealed bytes to `out`.
pub fn seal<R: Read, W: Write>(
    keyring: &Keyring,
    object_key: &str,
    level: i32,
    mut input: R,
    out: W,
) -> Result<SealStats, CodecError> {
    let mut sealer = Sealer::new(keyring, object_key, level, out)?;
    io::copy(&mut input, &mut sealer).map_err(|e| CodecError::Io(object_key.to_string(), e))?;
    sealer.finish().map(|(_, stats)| stats)
}

/// Plaintext compressed per zstd frame. Each frame is compressed from one contiguous buffer,
/// which keeps zstd on its fast single-buffer match finder (a streaming window that wraps
/// around sends it to the slower two-segment one: about a third slower on WAL). Frames are
/// concatenated, which every zstd decoder reads as one stream.
const FRAME: usize = 1 << 20;

/// A streaming sealer: write the plaintext to it, then [`Sealer::finish`] (a caller that
/// streams a file holds about one frame of it, not the whole file).
pub struct Sealer<W: Write> {
    comp: zstd::bulk::Compressor<'static>,
    frame: Vec<u8>,
    compressed: Vec<u8>,
    writer: SealWriter<W>,
    object_key: String,
    plain: u64,
    frames: u64,
}

impl<W: Write> Sealer<W> {
    /// Writes the header to `out` and returns the sealer for the object `object_key`.
    pub fn new(keyring: &Keyring, object_key: &str, level: i32, out: W) -> Result<Sealer<W>, CodecError> {
        let writer = sealer(keyring, object_key, out)?;
        let comp = zstd::bulk::Compressor::new(level).map_err(|e| CodecError::Io(object_key.to_string(), e))?;
        Ok(Sealer {
            comp,
            frame: Vec::new(),
            compressed: Vec::new(),
            writer,
            object_key: object_key.to_string(),
            plain: 0,
            frames: 0,
        })
    }

    /// Compresses the pending plaintext as one frame and seals it.
    fn emit_frame(&mut self) -> io::Result<()> {
        self.compressed.clear();
        self.compressed.reserve(zstd::zstd_safe::compress_bound(self.frame.len()));
        self.comp.compress_to_buffer(&self.frame, &mut self.compressed)?;
        self.writer.write_all(&self.compressed)?;
        self.frame.clear();
        self.frames += 1;
        Ok(())
    }

    /// Seals the last chunk and returns the output with the object's sizes.
    pub fn finish(mut self) -> Result<(W, SealStats), CodecError> {
        let key = self.object_key.clone();
        let io_err = |e| CodecError::Io(key.clone(), e);
        // An empty object still gets one (empty) frame: the payload is always valid zstd.
        if !self.frame.is_empty() || self.frames == 0 {
            self.emit_frame().map_err(io_err)?;
        }
        let (out, sealed_bytes) = self.writer.finish().map_err(io_err)?;
        Ok((out, SealStats { plain_bytes: self.plain, sealed_bytes }))
    }
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.frame.capacity() == 0 {
            self.frame.reserve_exact(FRAME);
        }
        let n = (FRAME - self.frame.len()).min(data.len());
        self.frame.extend_from_slice(&data[..n]);
        self.plain += n as u64;
        if self.frame.len() == FRAME {
            self.emit_frame()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Frames end only at FRAME bytes or in `finish`.
        Ok(())
    }
}

/// Writes the header and returns the chunk writer for the (already compressed) payload.
fn sealer<W: Write>(keyring: &Keyring, object_key: &str, mut out: W) -> Result<SealWriter<W>, CodecError> {
    let (key_id, key) = keyring.active();
    let mut salt = [0u8; SALT];
    let mut prefix = [0u8; PREFIX];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    rand::rngs::OsRng.fill_bytes(&mut prefix);

    let mut header = Vec::with_capacity(128);
    header.extend_from_slice(MAGIC);
    header.push(VERSION);
    header.push(key_id.len() as u8);
    header.extend_from_slice(key_id.as_bytes());
    header.extend_from_slice(&key_check(key));
    header.extend_from_slice(&salt);
    header.extend_from_slice(&prefix);
    header.extend_from_slice(&name_check(key, &salt, object_key));
    // The MAC leaves out the key check, so a damaged key check is told apart from a wrong key.
    let kc_at = 6 + key_id.len();
    let mac = hmac16(key, &[b"tidemark header v1", &header[..kc_at], &header[kc_at + 8..]]);
    header.extend_from_slice(&mac);
    out.write_all(&header).map_err(|e| CodecError::Io(object_key.to_string(), e))?;

    Ok(SealWriter {
        out,
        cipher: object_cipher(key, &salt, object_key),
        prefix,
        aad: object_key.as_bytes().to_vec(),
        buf: Vec::with_capacity(CHUNK),
        counter: 0,
        written: header.len() as u64,
    })
}

/// Seals an in-memory buffer.
pub fn seal_to_vec(keyring: &Keyring, object_key: &str, level: i32, data: &[u8]) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(data.len() / 2 + 256);
    seal(keyring, object_key, level, data, &mut out)?;
    Ok(out)
}

/// Parsed and verified header.
struct Header {
    cipher: Aes256Gcm,
    prefix: [u8; PREFIX],
}

fn read_header<R: Read>(keyring: &Keyring, object_key: &str, r: &mut R) -> Result<Header, CodecError> {
    let obj = || object_key.to_string();
    let mut fixed = [0u8; 6];
    read_full(r, &mut fixed).map_err(|e| CodecError::Io(obj(), e))?;
    if &fixed[..4] != MAGIC {
        return Err(CodecError::NotSealed(obj()));
    }
    if fixed[4] != VERSION {
        return Err(CodecError::UnsupportedVersion(obj(), fixed[4]));
    }
    let id_len = fixed[5] as usize;
    let mut rest = vec![0u8; id_len + 8 + SALT + PREFIX + 16 + 16];
    let got = read_full(r, &mut rest).map_err(|e| CodecError::Io(obj(), e))?;
    if got < rest.len() {
        return Err(CodecError::Truncated(obj(), 0));
    }
    let key_id = String::from_utf8_lossy(&rest[..id_len]).into_owned();
    let key = keyring.get(&key_id).ok_or_else(|| CodecError::UnknownKey(obj(), key_id.clone()))?;
    let mut p = id_len;
    let kc = &rest[p..p + 8];
    p += 8;
    let salt = &rest[p..p + SALT];
    p += SALT;
    let mut prefix = [0u8; PREFIX];
    prefix.copy_from_slice(&rest[p..p + PREFIX]);
    p += PREFIX;
    let nc = &rest[p..p + 16];
    p += 16;
    let mac = &rest[p..p + 16];

    let mac_ok = hmac16(key, &[b"tidemark header v1", &fixed, &rest[..id_len], &rest[id_len + 8..p]]) == mac;
    if kc != key_check(key) {
        // A header that still verifies under this key means the key check itself was damaged.
        return Err(if mac_ok { CodecError::HeaderCorrupt(obj()) } else { CodecError::WrongKey(obj(), key_id) });
    }
    if !mac_ok {
        return Err(CodecError::HeaderCorrupt(obj()));
    }
    if nc != name_check(key, salt, object_key) {
        return Err(CodecError::WrongName(obj()));
    }
    Ok(Header { cipher: object_cipher(key, salt, object_key), prefix })
}

/// Reads until `buf` is full or EOF; returns bytes read.
pub(crate) fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Streaming decryptor: sealed chunks in, compressed bytes out.
struct OpenReader<R: Read> {
    inner: R,
    object_key: String,
    header: Header,
    /// Ciphertext read ahead: one chunk plus one byte tells whether this chunk is the last.
    raw: Vec<u8>,
    plain: Vec<u8>,
    pos: usize,
    counter: u32,
    done: bool,
    error: Option<CodecError>,
}

impl<R: Read> OpenReader<R> {
    fn fail(&mut self, e: CodecError) -> io::Error {
        let msg = e.to_string();
        self.error = Some(e);
        io::Error::other(msg)
    }

    fn try_open(&self, data: &[u8], counter: u32, last: bool) -> Option<Vec<u8>> {
        if data.len() < TAG {
            return None;
        }
        let (ct, tag) = data.split_at(data.len() - TAG);
        let mut buf = ct.to_vec();
        let n = nonce(&self.header.prefix, counter, last);
        self.header
            .cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(&n),
                self.object_key.as_bytes(),
                &mut buf,
                Tag::from_slice(tag),
            )
            .ok()
            .map(|_| buf)
    }

    /// Explains why chunk `self.counter` did not open: reordered, truncated, or corrupt.
    fn diagnose(&self, data: &[u8], at_eof: bool) -> CodecError {
        let obj = self.object_key.clone();
        let i = self.counter;
        if at_eof && self.try_open(data, i, false).is_some() {
            return CodecError::Truncated(obj, i as u64 + 1);
        }
        let lo = i.saturating_sub(64);
        for j in lo..i.saturating_add(64) {
            if j != i && (self.try_open(data, j, false).is_some() || self.try_open(data, j, true).is_some()) {
                return CodecError::Reordered(obj, i as u64, j as u64);
            }
        }
        CodecError::ChunkCorrupt(obj, i as u64)
    }

    fn next_chunk(&mut self) -> Result<(), CodecError> {
        let want = CHUNK + TAG + 1;
        let have = self.raw.len();
        // Into the spare capacity: zero-filling a whole chunk first cost every object,
        // however small, a 1 MiB memset (and a debug build milliseconds).
        (&mut self.inner)
            .take((want - have) as u64)
            .read_to_end(&mut self.raw)
            .map_err(|e| CodecError::Io(self.object_key.clone(), e))?;
        let last = self.raw.len() < want;
        let chunk_len = if last { self.raw.len() } else { CHUNK + TAG };
        if last && chunk_len < TAG {
            return Err(CodecError::Truncated(self.object_key.clone(), self.counter as u64));
        }
        let data = self.raw[..chunk_len].to_vec();
        match self.try_open(&data, self.counter, last) {
            Some(p) => {
                self.plain = p;
                self.pos = 0;
            }
            None => return Err(self.diagnose(&data, last)),
        }
        self.raw.drain(..chunk_len);
        self.counter += 1;
        self.done = last;
        Ok(())
    }
}

impl<R: Read> Read for OpenReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            if let Err(e) = self.next_chunk() {
                return Err(self.fail(e));
            }
        }
        let n = (self.plain.len() - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Verifies, decrypts and decompresses the sealed object `object_key` from `input` into `out`.
///
/// Bytes may reach `out` before a later chunk fails, so callers write to a temporary
/// file and only rename it into place on success.
pub fn open<R: Read, W: Write>(keyring: &Keyring, object_key: &str, input: R, mut out: W) -> Result<u64, CodecError> {
    let mut reader = opener(keyring, object_key, input)?;
    match decode_frames(&mut reader, &mut out).and_then(|n| out.flush().map(|_| n)) {
        Ok(n) => Ok(n),
        // A chunk that failed verification explains itself better than the decoder would.
        Err(e) => {
            Err(reader.error.take().unwrap_or_else(|| CodecError::Decompress(object_key.to_string(), e.to_string())))
        }
    }
}

/// Reads until `buf` holds `want` bytes; sets `eof` when the input ends first.
fn fill<R: Read>(buf: &mut Vec<u8>, want: usize, eof: &mut bool, input: &mut R) -> io::Result<()> {
    if *eof || buf.len() >= want {
        return Ok(());
    }
    let have = buf.len();
    buf.resize(want, 0);
    let got = read_full(input, &mut buf[have..])?;
    buf.truncate(have + got);
    *eof = have + got < want;
    Ok(())
}

/// zstd's largest frame header (ZSTD_FRAMEHEADERSIZE_MAX).
const FRAME_HEADER_MAX: usize = 18;

/// Largest frame `decode_frames` decodes in one call; the sealer writes 1 MiB frames.
const MAX_DIRECT_FRAME: u64 = 4 << 20;

/// Decodes the concatenated zstd frames of `input` into `out`.
///
/// A frame that states its size (every frame the sealer writes) is decoded in one call into
/// one buffer and written with one call: the streaming decoder would decode into its window
/// and copy out 8 KiB at a time, which was an eighth of read-ahead's CPU. Anything else (an
/// object sealed before frames, one frame per object) goes through the streaming decoder.
fn decode_frames<R: Read, W: Write>(input: &mut R, out: &mut W) -> io::Result<u64> {
    use zstd::zstd_safe;
    let corrupt = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut dctx = zstd::bulk::Decompressor::new()?;
    let (mut comp, mut plain) = (Vec::new(), Vec::new());
    let (mut total, mut eof) = (0u64, false);
    loop {
        fill(&mut comp, FRAME_HEADER_MAX, &mut eof, input)?;
        if comp.is_empty() {
            return Ok(total);
        }
        let size = match zstd_safe::get_frame_content_size(&comp) {
            Ok(Some(n)) if n <= MAX_DIRECT_FRAME => n as usize,
            _ => {
                let rest = io::Cursor::new(std::mem::take(&mut comp)).chain(input);
                return Ok(total + io::copy(&mut zstd::stream::read::Decoder::new(rest)?, out)?);
            }
        };
        // A frame is at most its bound plus the header and checksum.
        fill(&mut comp, zstd_safe::compress_bound(size) + FRAME_HEADER_MAX + 4, &mut eof, input)?;
        let len =
            zstd_safe::find_frame_compressed_size(&comp).map_err(|_| corrupt("truncated or corrupt zstd frame"))?;
        plain.clear();
        plain.reserve(size);
        let n = dctx.decompress_to_buffer(&comp[..len], &mut plain)?;
        if n != size {
            return Err(corrupt("zstd frame shorter than its stated size"));
        }
        out.write_all(&plain)?;
        total += n as u64;
        comp.drain(..len);
    }
}

/// Verifies the header and returns the chunk reader for the compressed payload.
fn opener<R: Read>(keyring: &Keyring, object_key: &str, mut input: R) -> Result<OpenReader<R>, CodecError> {
    let header = read_header(keyring, object_key, &mut input)?;
    Ok(OpenReader {
        inner: input,
        object_key: object_key.to_string(),
        header,
        raw: Vec::with_capacity(CHUNK + TAG + 1),
        plain: Vec::new(),
        pos: 0,
        counter: 0,
        done: false,
        error: None,
    })
}

/// Opens an in-memory sealed object.
pub fn open_to_vec(keyring: &Keyring, object_key: &str, sealed: &[u8]) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(sealed.len() * 3);
    open(keyring, object_key, sealed, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Keyring {
        Keyring::generate("k1")
    }

    /// Incompressible-ish but deterministic data, so sealed size tracks plaintext size.
    fn data(n: usize) -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Level 1 and random input keep the compressed stream about as long as the input,
    /// so inputs of chunk ± 1 bytes exercise chunk boundaries of the envelope itself.
    fn raw_chunks(sealed: &[u8]) -> (usize, Vec<(usize, usize)>) {
        let hdr = 4 + 1 + 1 + sealed[5] as usize + 8 + SALT + PREFIX + 16 + 16;
        let mut chunks = Vec::new();
        let mut p = hdr;
        while p < sealed.len() {
            let len = (sealed.len() - p).min(CHUNK + TAG);
            // The last full-size chunk is only last if nothing follows it.
            chunks.push((p, len));
            p += len;
        }
        (hdr, chunks)
    }

    #[test]
    fn round_trips_at_boundary_sizes() {
        let r = ring();
        for n in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let d = data(n);
            let s = seal_to_vec(&r, "wal/1/x", 1, &d).unwrap();
            assert_eq!(open_to_vec(&r, "wal/1/x", &s).unwrap(), d, "size {n}");
        }
    }

    #[test]
    fn round_trips_64_mib_compressible() {
        let r = ring();
        let mut d = data(1 << 20);
        d.extend(std::iter::repeat_n(7u8, 63 << 20));
        let s = seal_to_vec(&r, "big", 3, &d).unwrap();
        assert!(s.len() < d.len() / 10);
        assert_eq!(open_to_vec(&r, "big", &s).unwrap(), d);
    }

    /// Seals and opens without zstd, so payload sizes hit the envelope's chunk edges exactly.
    fn raw_round_trip(r: &Keyring, payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut sealed = Vec::new();
        let mut w = sealer(r, "raw", &mut sealed).unwrap();
        w.write_all(payload).unwrap();
        w.finish().unwrap();
        let mut rd = opener(r, "raw", &sealed[..]).unwrap();
        let mut back = Vec::new();
        rd.read_to_end(&mut back).unwrap();
        (sealed, back)
    }

    #[test]
    fn envelope_round_trips_at_chunk_edges() {
        let r = ring();
        for (n, chunks) in [(0, 1), (1, 1), (CHUNK - 1, 1), (CHUNK, 1), (CHUNK + 1, 2), (2 * CHUNK, 2)] {
            let d = data(n);
            let (sealed, back) = raw_round_trip(&r, &d);
            assert_eq!(back, d, "size {n}");
            let (hdr, _) = raw_chunks(&sealed);
            assert_eq!(sealed.len() - hdr, n + chunks * TAG, "size {n}");
        }
    }

    /// Seals an already-compressed payload, as other sealers (or older versions) may have.
    fn seal_payload(r: &Keyring, payload: &[u8]) -> Vec<u8> {
        let mut sealed = Vec::new();
        let mut w = sealer(r, "o", &mut sealed).unwrap();
        w.write_all(payload).unwrap();
        w.finish().unwrap();
        sealed
    }

    #[test]
    fn payloads_of_any_zstd_framing_open() {
        let r = ring();
        let (a, b) = (data(3 << 20), vec![7u8; 5 << 20]);
        let both: Vec<u8> = a.iter().chain(b.iter()).copied().collect();
        // One streaming frame without a stated size (objects sealed before 1 MiB frames).
        let mut one_frame = Vec::new();
        let mut enc = zstd::stream::write::Encoder::new(&mut one_frame, 3).unwrap();
        enc.write_all(&both).unwrap();
        enc.finish().unwrap();
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&one_frame).unwrap(), None);
        assert_eq!(open_to_vec(&r, "o", &seal_payload(&r, &one_frame)).unwrap(), both);
        // Sized frames, one larger than decode_frames takes in one call, then one without a stated size.
        let sized_a = zstd::bulk::compress(&a, 3).unwrap();
        let sized_b = zstd::bulk::compress(&b, 3).unwrap();
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&sized_b).unwrap(), Some(5 << 20));
        let mut tail = Vec::new();
        let mut enc = zstd::stream::write::Encoder::new(&mut tail, 3).unwrap();
        enc.write_all(b"tail").unwrap();
        enc.finish().unwrap();
        let mixed = [sized_a.as_slice(), &sized_b, &sized_a, &tail].concat();
        let want = [a.as_slice(), &b, &a, b"tail"].concat();
        assert_eq!(open_to_vec(&r, "o", &seal_payload(&r, &mixed)).unwrap(), want);
        // A sized frame cut short, or followed by bytes that are no frame, is an error.
        let cut = &sized_a[..sized_a.len() - 3];
        assert!(matches!(open_to_vec(&r, "o", &seal_payload(&r, cut)), Err(CodecError::Decompress(..))));
        let junk = [sized_a.as_slice(), b"not zstd"].concat();
        assert!(matches!(open_to_vec(&r, "o", &seal_payload(&r, &junk)), Err(CodecError::Decompress(..))));
    }

    #[test]
    fn wrong_key_is_reported_as_such() {
        let s = seal_to_vec(&ring(), "o", 3, b"hello").unwrap();
        let other = Keyring::generate("k1");
        assert!(matches!(open_to_vec(&other, "o", &s), Err(CodecError::WrongKey(_, id)) if id == "k1"));
        let third = Keyring::generate("k2");
        assert!(matches!(open_to_vec(&third, "o", &s), Err(CodecError::UnknownKey(_, id)) if id == "k1"));
    }

    #[test]
    fn flipped_bits_are_detected_where_they_are() {
        let r = ring();
        let d = data(CHUNK * 2 + 100);
        let s = seal_to_vec(&r, "o", 1, &d).unwrap();
        let (hdr, chunks) = raw_chunks(&s);
        assert!(chunks.len() >= 3);

        let mut h = s.clone();
        h[hdr - 40] ^= 1; // inside the salt
        assert!(matches!(open_to_vec(&r, "o", &h), Err(CodecError::HeaderCorrupt(_))));
        let mut h = s.clone();
        h[0] ^= 1;
        assert!(matches!(open_to_vec(&r, "o", &h), Err(CodecError::NotSealed(_))));
        let mut h = s.clone();
        h[4] = 9;
        assert!(matches!(open_to_vec(&r, "o", &h), Err(CodecError::UnsupportedVersion(_, 9))));
        let mut h = s.clone();
        h[6 + 2] ^= 1; // key check byte, header MAC still fine
        assert!(matches!(open_to_vec(&r, "o", &h), Err(CodecError::HeaderCorrupt(_))));

        let (p, len) = chunks[1];
        let mut b = s.clone();
        b[p + 10] ^= 0x80; // body of chunk 1
        assert!(matches!(open_to_vec(&r, "o", &b), Err(CodecError::ChunkCorrupt(_, 1))));
        let mut t = s.clone();
        t[p + len - 1] ^= 1; // tag of chunk 1
        assert!(matches!(open_to_vec(&r, "o", &t), Err(CodecError::ChunkCorrupt(_, 1))));
        let (p, len) = *chunks.last().unwrap();
        let mut t = s.clone();
        t[p + len - 3] ^= 4; // tag of the last chunk
        assert!(matches!(open_to_vec(&r, "o", &t), Err(CodecError::ChunkCorrupt(_, 2))));
    }

    #[test]
    fn truncation_at_chunk_boundary_is_detected() {
        let r = ring();
        let s = seal_to_vec(&r, "o", 1, &data(CHUNK * 2 + 100)).unwrap();
        let (_, chunks) = raw_chunks(&s);
        let (p, _) = chunks[2];
        assert!(matches!(open_to_vec(&r, "o", &s[..p]), Err(CodecError::Truncated(_, 2))));
        let (p, _) = chunks[1];
        assert!(matches!(open_to_vec(&r, "o", &s[..p]), Err(CodecError::Truncated(_, 1))));
        // Inside the header.
        assert!(matches!(open_to_vec(&r, "o", &s[..20]), Err(CodecError::Truncated(_, 0))));
        // Mid-chunk.
        assert!(open_to_vec(&r, "o", &s[..p + 100]).is_err());
    }

    #[test]
    fn swapped_chunks_are_detected() {
        let r = ring();
        let s = seal_to_vec(&r, "o", 1, &data(CHUNK * 3 + 5)).unwrap();
        let (hdr, chunks) = raw_chunks(&s);
        let mut w = s[..hdr].to_vec();
        let (a, al) = chunks[0];
        let (b, bl) = chunks[1];
        w.extend_from_slice(&s[b..b + bl]);
        w.extend_from_slice(&s[a..a + al]);
        for &(p, l) in &chunks[2..] {
            w.extend_from_slice(&s[p..p + l]);
        }
        assert!(matches!(open_to_vec(&r, "o", &w), Err(CodecError::Reordered(_, 0, 1))));
    }

    #[test]
    fn object_copied_under_another_name_fails() {
        let r = ring();
        let s = seal_to_vec(&r, "clusters/a/wal/00000001/000000010000000000000001", 3, b"x").unwrap();
        let e = open_to_vec(&r, "clusters/a/wal/00000001/000000010000000000000002", &s).unwrap_err();
        assert!(matches!(e, CodecError::WrongName(_)), "{e}");
        assert!(e.to_string().contains("000000010000000000000002"));
    }

    #[test]
    fn rotated_keyring_reads_old_objects() {
        let mut r = Keyring::generate("old");
        let s = seal_to_vec(&r, "o", 3, b"payload").unwrap();
        r.add_generated("new");
        assert_eq!(r.active().0, "new");
        assert_eq!(open_to_vec(&r, "o", &s).unwrap(), b"payload");
        let s2 = seal_to_vec(&r, "o", 3, b"payload2").unwrap();
        assert_eq!(s2[6..9], *b"new");
    }

    #[test]
    fn not_a_sealed_object() {
        let r = ring();
        assert!(matches!(open_to_vec(&r, "o", b"hello world, plain"), Err(CodecError::NotSealed(_))));
        assert!(matches!(open_to_vec(&r, "o", b""), Err(CodecError::NotSealed(_))));
    }
}

/// Bounded fuzzing of the opener: random and mutated sealed objects never panic, always fail
/// with a clean error, and nothing reaches the destination on error.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    const NAME: &str = "clusters/c/wal/00000001/000000010000000000000001";

    fn ring() -> &'static Keyring {
        static RING: OnceLock<Keyring> = OnceLock::new();
        RING.get_or_init(|| {
            let mut r = Keyring::generate("k1");
            r.add_generated("k2");
            r
        })
    }

    /// One change to a sealed object.
    #[derive(Debug, Clone)]
    enum Mutation {
        Xor(usize, u8),
        Truncate(usize),
        Insert(usize, Vec<u8>),
        Remove(usize, usize),
        Append(Vec<u8>),
        /// Swap two ranges of equal length (chunks moved around).
        Swap(usize, usize, usize),
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        let bytes = proptest::collection::vec(any::<u8>(), 1..64);
        prop_oneof![
            4 => (any::<usize>(), 1u8..).prop_map(|(i, m)| Mutation::Xor(i, m)),
            // The header is where the parser branches: aim there too.
            4 => (0..120usize, 1u8..).prop_map(|(i, m)| Mutation::Xor(i, m)),
            1 => any::<usize>().prop_map(Mutation::Truncate),
            1 => (any::<usize>(), bytes.clone()).prop_map(|(i, b)| Mutation::Insert(i, b)),
            1 => (any::<usize>(), 1..64usize).prop_map(|(i, n)| Mutation::Remove(i, n)),
            1 => bytes.prop_map(Mutation::Append),
            1 => (any::<usize>(), any::<usize>(), 1..4096usize).prop_map(|(a, b, n)| Mutation::Swap(a, b, n)),
        ]
    }

    fn apply(obj: &mut Vec<u8>, m: &Mutation) {
        let len = obj.len().max(1);
        match m {
            Mutation::Xor(i, x) => {
                if !obj.is_empty() {
                    obj[i % len] ^= x;
                }
            }
            Mutation::Truncate(n) => obj.truncate(n % len),
            Mutation::Insert(i, b) => {
                let at = i % (obj.len() + 1);
                obj.splice(at..at, b.iter().copied());
            }
            Mutation::Remove(i, n) => {
                let at = i % len;
                let end = (at + n).min(obj.len());
                if at < end {
                    obj.drain(at..end);
                }
            }
            Mutation::Append(b) => obj.extend(b),
            Mutation::Swap(a, b, n) => {
                let n = (*n).min(obj.len() / 2);
                if n > 0 {
                    let (a, b) = (a % (obj.len() - n + 1), b % (obj.len() - n + 1));
                    let (lo, hi) = (a.min(b), a.max(b));
                    if hi >= lo + n {
                        let (x, y) = obj.split_at_mut(hi);
                        x[lo..lo + n].swap_with_slice(&mut y[..n]);
                    }
                }
            }
        }
    }

    /// Opens `sealed` the way wal-fetch does (temp file, rename on success) into an empty
    /// directory: on error the directory must still be empty.
    fn open_into_dir(sealed: &[u8]) -> Result<Vec<u8>, CodecError> {
        let dir = tempfile::tempdir().map_err(|e| CodecError::Io("tempdir".into(), e))?;
        let dest = dir.path().join("RECOVERYXLOG");
        let res = crate::wal::spool::write_atomic_with(
            &dest,
            crate::wal::spool::DEST_TMP,
            |e| CodecError::Io(NAME.into(), e),
            |out| open(ring(), NAME, sealed, out).map(drop),
        );
        let left: Vec<_> =
            std::fs::read_dir(dir.path()).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
        match res {
            Ok(()) => Ok(std::fs::read(&dest).map_err(|e| CodecError::Io(NAME.into(), e))?),
            Err(e) => {
                assert!(left.is_empty(), "{e}: left {left:?} behind");
                Err(e)
            }
        }
    }

    /// A sealed object of two chunks (incompressible payload), made once.
    fn big() -> &'static (Vec<u8>, Vec<u8>) {
        static BIG: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
        BIG.get_or_init(|| {
            let mut x = 0x9E37_79B9_7F4A_7C15u64;
            let plain: Vec<u8> = (0..CHUNK + 4096)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let sealed = seal_to_vec(ring(), NAME, 1, &plain).unwrap();
            (plain, sealed)
        })
    }

    fn payload() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048),
            // Compressible: zstd frames with repeat codes.
            (any::<u8>(), 0..50_000usize).prop_map(|(b, n)| vec![b; n]),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn fuzz_mutated_small_objects_fail_cleanly(plain in payload(), muts in proptest::collection::vec(mutation(), 1..4)) {
            let sealed = seal_to_vec(ring(), NAME, 3, &plain).unwrap();
            let mut bad = sealed.clone();
            for m in &muts {
                apply(&mut bad, m);
            }
            let mut out = Vec::new();
            match open(ring(), NAME, &bad[..], &mut out) {
                // Only a mutation that changed nothing may open, and then to the plaintext.
                Ok(_) => prop_assert!(bad == sealed && out == plain, "a changed object opened"),
                // One chunk: nothing is written before it authenticates.
                Err(e) => prop_assert!(out.is_empty(), "{e}: {} bytes written", out.len()),
            }
        }

        #[test]
        fn fuzz_random_bytes_fail_cleanly(mut junk in proptest::collection::vec(any::<u8>(), 0..512), headed in 0..3u8) {
            // Past the magic, and past the key lookup, as often as not.
            if headed > 0 && junk.len() > 8 {
                junk[..5].copy_from_slice(b"TDMK\x01");
                if headed == 2 {
                    junk[5] = 2;
                    junk[6..8].copy_from_slice(b"k1");
                }
            }
            let mut out = Vec::new();
            prop_assert!(open(ring(), NAME, &junk[..], &mut out).is_err());
            prop_assert!(out.is_empty());
        }
    }

    proptest! {
        // Few cases: a damaged chunk is tried under 256 neighbouring nonces to name the damage,
        // which is slow in the unoptimised test build.
        #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn fuzz_mutated_large_objects_never_reach_the_destination(muts in proptest::collection::vec(mutation(), 1..3)) {
            let (plain, sealed) = big();
            let mut bad = sealed.clone();
            for m in &muts {
                apply(&mut bad, m);
            }
            if let Ok(got) = open_into_dir(&bad) {
                prop_assert!(&bad == sealed && &got == plain, "a changed object opened");
            }
        }
    }
}
