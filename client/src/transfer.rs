//! What uploads and downloads share: their saved records (so either side
//! can resume after a lost connection), progress reports, the chunk layout,
//! and turning a sender's title into a safe file name.

use std::path::{Path, PathBuf};

use fastchat_crypto::ConversationKey;
use fastchat_crypto::chunked::ChunkCipher;
use fastchat_proto::image::{AttachmentKind, ImageHeader, ImageTarget};
use fastchat_proto::limits::{IMAGE_CHUNK, IMAGE_TAG};

use crate::error::ClientError;

/// An upload as saved in the keystore until the node has all of it. `key`
/// is the file's own chunk key.
#[derive(bincode::Encode, bincode::Decode, Clone, Debug)]
pub(crate) struct UploadRecord {
    pub id: [u8; 16],
    pub path: PathBuf,
    pub to: ImageTarget,
    /// The friend's or group's name, for progress and errors.
    pub label: String,
    pub key: [u8; 32],
    pub aad: Vec<u8>,
    pub nonce_prefix: [u8; 7],
    pub header: Vec<u8>,
    pub signature: Vec<u8>,
    pub size: u64,
    pub total_len: u64,
    /// The file as the upload found it: a resume re-encrypts under the same
    /// key and nonces, so it goes on only if the file is unchanged (else it
    /// starts over under a new key).
    pub stamp: FileStamp,
    pub kind: AttachmentKind,
}

/// What changes when a file's content does: its length, modification and
/// status-change times, and which file it is. The status-change time is
/// set by the kernel on every write and no tool can set it back, so an
/// edited file never passes for the one an upload began with (the check
/// git and rsync make, without a second read of the whole file).
#[derive(bincode::Encode, bincode::Decode, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FileStamp {
    len: u64,
    modified: (i64, i64),
    changed: (i64, i64),
    device: u64,
    inode: u64,
}

impl FileStamp {
    /// The stamp of the file at `path` now.
    pub async fn of(path: &Path) -> Result<Self, ClientError> {
        use std::os::unix::fs::MetadataExt;
        let m = tokio::fs::metadata(path)
            .await
            .map_err(ClientError::io(path))?;
        Ok(Self {
            len: m.len(),
            modified: (m.mtime(), m.mtime_nsec()),
            changed: (m.ctime(), m.ctime_nsec()),
            device: m.dev(),
            inode: m.ino(),
        })
    }
}

/// A download as saved in the keystore until the file is in place. `key`
/// is the file's chunk key, from its header.
#[derive(bincode::Encode, bincode::Decode, Clone, Debug)]
pub(crate) struct DownloadRecord {
    pub id: [u8; 16],
    pub from: String,
    pub group: Option<String>,
    pub header: ImageHeader,
    pub key: [u8; 32],
    pub aad: Vec<u8>,
    pub nonce_prefix: [u8; 7],
    pub total_len: u64,
    /// In a group, who must have signed the trailer's digest.
    pub signer: Option<GroupSigner>,
}

/// A group file's sender as the group knew them at the file's epoch.
#[derive(bincode::Encode, bincode::Decode, Clone, Debug)]
pub(crate) struct GroupSigner {
    pub key: [u8; 32],
    pub group_id: u64,
    pub epoch: u64,
}

impl UploadRecord {
    pub fn cipher(&self) -> ChunkCipher {
        ChunkCipher::new(
            &ConversationKey::from_bytes(self.key),
            self.nonce_prefix,
            self.aad.clone(),
        )
    }
}

impl DownloadRecord {
    pub fn cipher(&self) -> ChunkCipher {
        ChunkCipher::new(
            &ConversationKey::from_bytes(self.key),
            self.nonce_prefix,
            self.aad.clone(),
        )
    }
}

/// Bytes after the file in its sealed stream: the file's SHA-256, hashed
/// while it is encrypted, and in a group the sender's signature over it
/// (any member holds the file key, so only a signature says who sent
/// these bytes). The header, sent first, cannot hold a digest the sender
/// has not computed yet.
pub(crate) fn trailer_len(group: bool) -> u64 {
    if group { 32 + 64 } else { 32 }
}

/// Plaintext bytes sealed for a file of `size` bytes: the file, then its
/// trailer. `None` past 64 bits (a size a peer made up).
pub(crate) fn stream_len(size: u64, group: bool) -> Option<u64> {
    size.checked_add(trailer_len(group))
}

/// Number of chunks for `size` plaintext bytes (an empty file has one).
pub(crate) fn chunk_count(size: u64) -> u64 {
    size.div_ceil(IMAGE_CHUNK as u64).max(1)
}

/// Plaintext length of chunk `i`.
pub(crate) fn chunk_len(size: u64, i: u64) -> usize {
    (size - i * IMAGE_CHUNK as u64).min(IMAGE_CHUNK as u64) as usize
}

/// Ciphertext bytes of one full chunk.
pub(crate) const SEALED_CHUNK: u64 = (IMAGE_CHUNK + IMAGE_TAG) as u64;

/// A file name made from a sender's title: no directories, no control or
/// bidi characters (`cat\u{202E}gpj.exe` must not pass for a JPEG), no
/// leading dots; never empty.
pub fn safe_file_name(title: &str) -> String {
    let base = title.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .filter(|c| {
            !c.is_control()
                && !crate::display::is_format_control(*c)
                && !matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|')
        })
        .collect();
    let trimmed = cleaned.trim().trim_start_matches('.');
    let mut name: String = trimmed.chars().take(120).collect();
    if name.is_empty() {
        name = "received".to_string();
    }
    name
}

/// `dir/name`, or `dir/stem (2).ext`, ... for the first name not taken.
pub(crate) fn candidate(dir: &Path, name: &str, n: u32) -> PathBuf {
    if n == 1 {
        return dir.join(name);
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => dir.join(format!("{stem} ({n}).{ext}")),
        _ => dir.join(format!("{name} ({n})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_become_safe_names() {
        assert_eq!(safe_file_name("../../etc/x"), "x");
        assert_eq!(safe_file_name("C:\\Users\\a\\cat.jpg"), "cat.jpg");
        assert_eq!(safe_file_name(".bashrc"), "bashrc");
        assert_eq!(safe_file_name(""), "received");
        assert_eq!(safe_file_name("/"), "received");
        assert_eq!(safe_file_name("a\u{7}b.png"), "ab.png");
        assert_eq!(safe_file_name("cat\u{202E}gpj.exe"), "catgpj.exe");
        assert_eq!(safe_file_name("\u{2066}x\u{200F}.txt\u{FEFF}"), "x.txt");
        let d = Path::new("/d");
        assert_eq!(candidate(d, "cat.jpg", 2), Path::new("/d/cat (2).jpg"));
        assert_eq!(candidate(d, "README", 3), Path::new("/d/README (3)"));
    }

    #[test]
    fn chunk_layout() {
        let c = IMAGE_CHUNK as u64;
        assert_eq!(chunk_count(0), 1);
        assert_eq!(chunk_len(0, 0), 0);
        assert_eq!(chunk_count(c + 1), 2);
        assert_eq!(chunk_len(c + 1, 1), 1);
    }
}
