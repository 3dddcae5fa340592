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
    /// The file's SHA-256 when the upload started: a resume re-reads the
    /// file under the same key and nonces, so it goes on only if the file
    /// is unchanged (else it starts over under a new key).
    pub sha256: [u8; 32],
    pub kind: AttachmentKind,
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

/// The SHA-256 of the file at `path`, read off the async workers.
pub(crate) async fn hash_file(path: &Path) -> Result<[u8; 32], ClientError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = std::fs::File::open(&path).map_err(ClientError::io(&path))?;
        let mut hasher = fastchat_crypto::Hasher::default();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(ClientError::io(&path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hasher.finish())
    })
    .await?
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
