//! Files a user keeps, written whole or not at all.
//!
//! A report, a table, a calibrated or migrated prompt (`migrate
//! --in-place` writes over the user's own), a calibration, a mapping, a
//! method's files: each is written to a temporary file beside its target,
//! flushed to disk, and renamed over the target. A crash, a kill, a full
//! disk or an error midway leaves the old file as it was (or no file), and
//! never a half-written one; a reader sees the old file or the new one.
//!
//! **Invariant:** a leaf (imports nothing of redraft's). The target's
//! permissions are kept when it exists; a symbolic link is written
//! through (its target is replaced, the link stays).

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` atomically (see the module docs). A path
/// that names no file but a device, a pipe or a socket (`-o /dev/stdout`)
/// is written as it is: nothing there could be replaced.
pub fn write_atomic(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return std::fs::write(path, contents);
    }
    // Through a symbolic link to the file it names, so the link stays.
    let path = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(path)?,
        _ => path.to_path_buf(),
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} names no file", path.display()),
        )
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".redraft-{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(contents.as_ref())?;
        if let Ok(m) = std::fs::metadata(&path) {
            f.set_permissions(m.permissions())?;
        }
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        // The rename itself reaches the disk with the directory's entry.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt as _;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("redraft-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn leftovers(d: &Path) -> Vec<String> {
        std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn writes_new_files_and_replaces_old_ones_keeping_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("replace");
        let p = d.join("prompt.j2");
        write_atomic(&p, "first").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "first");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, "second").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "second");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert!(leftovers(&d).is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_link_is_written_through_and_stays_a_link() {
        let d = dir("link");
        let target = d.join("real.j2");
        std::fs::write(&target, "old").unwrap();
        let link = d.join("link.j2");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomic(&link, "new").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_device_is_written_as_it_is() {
        write_atomic(Path::new("/dev/null"), "gone").unwrap();
        assert!(
            std::fs::metadata("/dev/null")
                .unwrap()
                .file_type()
                .is_char_device()
        );
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let d = dir("fail");
        // The target is a directory: the rename fails after the data was
        // written, and what was there stays.
        let p = d.join("report.html");
        std::fs::create_dir(&p).unwrap();
        std::fs::write(p.join("inside"), "kept").unwrap();
        assert!(write_atomic(&p, "new").is_err());
        assert_eq!(std::fs::read_to_string(p.join("inside")).unwrap(), "kept");
        assert!(leftovers(&d).is_empty());
        // A folder that does not exist: an error, nothing created.
        assert!(write_atomic(&d.join("no/such/file"), "x").is_err());
        assert!(!d.join("no").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
