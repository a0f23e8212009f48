//! Atomic file writes (temporary sibling, fsync-free rename), so an interrupted `q2 synth`
//! leaves whole files or none. Dataset files are many and small, so each is renamed into place
//! without an fsync; the dataset description is written last.

use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Writes `bytes` to a temporary sibling of `path`, then renames it over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(DataError::Io { path: tmp, source: e });
    }
    std::fs::rename(&tmp, path).map_err(DataError::io(path))
}

#[cfg(test)]
mod tests {
    #[test]
    fn writes_and_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.txt");
        super::write_atomic(&p, b"1").unwrap();
        super::write_atomic(&p, b"2").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"2");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
