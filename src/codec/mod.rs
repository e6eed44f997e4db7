//! Sealing objects: zstd compression, then a streaming AES-256-GCM envelope, and the keyring.

pub mod envelope;
pub mod keyring;

pub use envelope::{open, open_to_vec, seal, seal_to_vec, SealStats, Sealer, CHUNK};
pub use keyring::{Keyring, KeyringError};

/// Why a sealed object could not be opened (each names the object).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// No magic bytes: not produced by tidemark.
    #[error("{0}: not a tidemark sealed object (bad magic); was it written by another tool or damaged?")]
    NotSealed(String),
    /// A format version this build cannot read.
    #[error("{0}: sealed with format version {1}, which this tidemark cannot read; upgrade tidemark")]
    UnsupportedVersion(String, u8),
    /// The key id in the header is not in the keyring.
    #[error("{0}: sealed with key '{1}', which is not in the keyring; add that key to the keyring file (keys are never removed on rotation)")]
    UnknownKey(String, String),
    /// The keyring has a key of that name, but not the one the object was sealed with.
    #[error(
        "{0}: the keyring's key '{1}' is not the key this object was sealed with (wrong keyring for this repository?)"
    )]
    WrongKey(String, String),
    /// The header failed its authentication check.
    #[error("{0}: header is corrupted or was tampered with")]
    HeaderCorrupt(String),
    /// The object was sealed under another repository key (copied or renamed).
    #[error(
        "{0}: this object was sealed under a different name; it was copied or renamed from another key and is refused"
    )]
    WrongName(String),
    /// A chunk failed authentication.
    #[error("{0}: chunk {1} failed authentication: the object is corrupted or was tampered with")]
    ChunkCorrupt(String, u64),
    /// Chunks are out of order.
    #[error("{0}: chunk {1} holds chunk {2}'s data: chunks were reordered")]
    Reordered(String, u64, u64),
    /// The object ends before its final chunk.
    #[error("{0}: truncated after {1} chunk(s): the final chunk is missing")]
    Truncated(String, u64),
    /// Authenticated data failed to decompress (a bug or a foreign writer).
    #[error("{0}: authenticated payload failed to decompress: {1}")]
    Decompress(String, String),
    /// Reading or writing failed.
    #[error("{0}: I/O error: {1}")]
    Io(String, #[source] std::io::Error),
}
