//! The pid file: written atomically (a temporary file renamed over it) once the master
//! serves, and removed at exit only if it still holds this master's pid, so a master that
//! handed over to a new one (USR2) leaves the new one's file in place.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// Checks, before anything is bound, that the pid file can be written: its directory exists
/// and this process may create files in it (a temporary file is created and removed).
pub(crate) fn check(path: &Path) -> io::Result<()> {
    let tmp = temp_path(path);
    std::fs::File::create(&tmp)?;
    std::fs::remove_file(&tmp)
}

/// Writes `pid` and a newline to `path`: to a temporary file beside it, then rename(2), so a
/// reader sees the old content or the new, never a partial one.
pub(crate) fn write(path: &Path, pid: u32) -> io::Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{pid}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes `path` if it holds `pid`; leaves it otherwise (another master's file). Returns
/// whether it removed the file.
pub(crate) fn remove_if_holds(path: &Path, pid: u32) -> bool {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim() == pid.to_string() => std::fs::remove_file(path).is_ok(),
        _ => false,
    }
}

/// `DIR/.NAME.PID.tmp`: in the same directory (rename(2) does not cross file systems), and
/// named after this process, so two masters never share one.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "forklift.pid".into());
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_then_removed_only_by_its_owner() {
        let dir = std::env::temp_dir().join(format!("forklift-pid-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("forklift.pid");
        check(&path).unwrap();
        write(&path, 41).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "41\n");
        write(&path, 42).unwrap();
        assert!(!remove_if_holds(&path, 41), "not 41's file any more");
        assert!(path.exists());
        assert!(remove_if_holds(&path, 42));
        assert!(!path.exists());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "no temporary left"
        );
        assert!(check(&dir.join("missing").join("forklift.pid")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
