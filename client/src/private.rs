//! Files on the user's machine are the user's alone: the home and its
//! downloads are 0700, every file we write 0600, from the moment it exists
//! (never created readable and tightened later).

use std::io;
use std::path::Path;

/// Creates `dir` (and its parents) if needed and makes it owner-only.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    // An existing directory keeps its mode through `create`: tighten it.
    set_mode(dir, 0o700)
}

/// Options that create a file readable and writable by its owner only.
pub fn file_options() -> tokio::fs::OpenOptions {
    let mut options = tokio::fs::OpenOptions::new();
    #[cfg(unix)]
    options.mode(0o600);
    options
}

/// Creates `path` empty, owner-only, if it does not exist; SQLite then
/// gives its -wal and -shm files the same mode.
pub fn create_file(path: &Path) -> io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?;
    set_mode(path, 0o600)
}

/// Makes `path` owner-only if it exists (files older versions left open).
pub fn restrict(path: &Path) {
    match set_mode(path, 0o600) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot make a file private"),
    }
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}
