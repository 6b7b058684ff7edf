//! A memory cgroup per sandboxed run, where the machine lets redraft make
//! one (cgroup v2 with the memory controller delegated, or v1's memory
//! hierarchy; in practice: redraft runs as root). The kernel then enforces
//! the memory limit on what the program really uses and says, in the
//! cgroup's OOM-kill counter, whether it ran out.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// Where run cgroups are made: the memory cgroup redraft itself is in.
#[derive(Debug)]
struct Root {
    dir: PathBuf,
    version: Version,
}

/// One run's cgroup; removed by [`MemoryCgroup::finish`].
#[derive(Debug)]
pub(super) struct MemoryCgroup {
    dir: PathBuf,
    version: Version,
}

impl MemoryCgroup {
    /// A fresh cgroup limited to `limit` bytes, or `None` where none can
    /// be made (no writable memory cgroup: the rlimit fallback applies).
    pub(super) fn create(limit: u64) -> Option<MemoryCgroup> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = root()?;
        let dir = root.dir.join(format!(
            "redraft-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&dir).ok()?;
        let cg = MemoryCgroup {
            dir,
            version: root.version,
        };
        let (limit_file, swap_file, swap_value) = match cg.version {
            Version::V1 => (
                "memory.limit_in_bytes",
                "memory.memsw.limit_in_bytes",
                limit.to_string(),
            ),
            Version::V2 => ("memory.max", "memory.swap.max", "0".to_string()),
        };
        if std::fs::write(cg.dir.join(limit_file), limit.to_string()).is_err() {
            cg.remove();
            return None;
        }
        // Without swap accounting these files are absent: memory alone is limited.
        let _ = std::fs::write(cg.dir.join(swap_file), swap_value);
        Some(cg)
    }

    /// The file a process writes "0" to, to join.
    pub(super) fn procs_path(&self) -> CString {
        use std::os::unix::ffi::OsStrExt;
        CString::new(self.dir.join("cgroup.procs").as_os_str().as_bytes())
            .expect("cgroup paths have no NUL")
    }

    /// After the run: whether the kernel killed anything in it for memory.
    /// Removes the cgroup (waiting briefly for killed processes to go).
    pub(super) fn finish(self) -> bool {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        let killed = std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|text| counter(&text, "oom_kill"))
            .is_some_and(|n| n > 0);
        self.remove();
        killed
    }

    fn remove(&self) {
        for _ in 0..100 {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                // Busy until the last (killed) process has gone.
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        tracing::warn!("could not remove the cgroup {}", self.dir.display());
    }
}

/// Whether run cgroups can be made on this machine.
pub(super) fn available() -> bool {
    root().is_some()
}

/// `name N` in a flat-keyed cgroup file.
fn counter(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == name).then(|| value.trim().parse().ok())?
    })
}

fn root() -> Option<&'static Root> {
    static ROOT: OnceLock<Option<Root>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let found = find_root(&cgroups, &mounts)?;
        // Usable only if a child can be made and limited.
        let probe = found
            .dir
            .join(format!("redraft-probe-{}", std::process::id()));
        std::fs::create_dir(&probe).ok()?;
        let limit = match found.version {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        };
        let usable = probe.join(limit).exists();
        let _ = std::fs::remove_dir(&probe);
        usable.then_some(found)
    })
    .as_ref()
}

/// The directory of our own memory cgroup, from `/proc/self/cgroup` and
/// `/proc/self/mountinfo`. A v1 memory hierarchy wins over v2 (on hybrid
/// systems the v2 tree has no controllers).
fn find_root(cgroups: &str, mountinfo: &str) -> Option<Root> {
    let mut v2_path = None;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if controllers.split(',').any(|c| c == "memory") {
            let mount = mount_point(mountinfo, |fs, opts| {
                fs == "cgroup" && opts.split(',').any(|o| o == "memory")
            })?;
            return Some(Root {
                dir: join_cgroup(&mount, path),
                version: Version::V1,
            });
        }
        if controllers.is_empty() {
            v2_path = Some(path.to_string());
        }
    }
    let path = v2_path?;
    let mount = mount_point(mountinfo, |fs, _| fs == "cgroup2")?;
    let dir = join_cgroup(&mount, &path);
    let controllers = std::fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
    controllers
        .split_whitespace()
        .any(|c| c == "memory")
        .then_some(Root {
            dir,
            version: Version::V2,
        })
}

fn join_cgroup(mount: &Path, path: &str) -> PathBuf {
    mount.join(path.trim_start_matches('/'))
}

/// The mount point of the first mount whose filesystem type and super
/// options pass `want`.
fn mount_point(mountinfo: &str, want: impl Fn(&str, &str) -> bool) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mount = left.split(' ').nth(4)?;
        let mut r = right.split(' ');
        let (fs, _source, opts) = (r.next()?, r.next()?, r.next().unwrap_or(""));
        want(fs, opts).then(|| PathBuf::from(mount))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
35 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 30 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn a_v1_memory_hierarchy_is_found_from_our_own_cgroup() {
        let cgroups = "4:memory:/jobs/42\n0::/\n";
        let root = find_root(cgroups, MOUNTS).unwrap();
        assert_eq!(root.version, Version::V1);
        assert_eq!(root.dir, PathBuf::from("/sys/fs/cgroup/memory/jobs/42"));
    }

    #[test]
    fn counters_are_read_by_name() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(counter(v1, "oom_kill"), Some(2));
        let v2 = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(counter(v2, "oom_kill"), Some(1));
        assert_eq!(counter(v2, "oom_kil"), None);
    }
}
