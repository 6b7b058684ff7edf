//! What both SQLite users (the results store and the response cache) need
//! of a connection. A leaf: imports nothing of redraft's.

use std::time::Duration;

/// Puts the database in WAL mode (persistent in the file). Several
/// processes opening a new file at once race for the switch, which needs
/// the file to themselves and may fail at once with "database is locked":
/// they wait and try again until `deadline`.
pub(crate) fn wal(
    conn: &rusqlite::Connection,
    deadline: std::time::Instant,
) -> rusqlite::Result<()> {
    let mut pause = Duration::from_millis(2);
    loop {
        let mode: rusqlite::Result<String> = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .and_then(|m: String| {
                if m.eq_ignore_ascii_case("wal") {
                    Ok(m)
                } else {
                    conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                }
            });
        match mode {
            Ok(_) => return Ok(()),
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Why `path` cannot be a database file when something other than a
/// regular file is there (a directory, a device such as `/dev/null`, a
/// pipe, a socket), before SQLite answers "unable to open" or "disk I/O
/// error"; `None` for a regular file or nothing at all. `example` is a
/// file name to suggest (`results.db`).
pub(crate) fn not_a_file(path: &std::path::Path, example: &str) -> Option<String> {
    use std::os::unix::fs::FileTypeExt as _;
    let t = std::fs::metadata(path).ok()?.file_type();
    let what = if t.is_file() {
        return None;
    } else if t.is_dir() {
        "a directory"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_fifo() {
        "a named pipe"
    } else if t.is_socket() {
        "a socket"
    } else {
        "something other than a file"
    };
    Some(format!(
        "{what}, not a database file: give a file's path (created if missing), e.g. {}",
        if t.is_dir() {
            path.join(example).display().to_string()
        } else {
            format!("runs/{example}")
        }
    ))
}
