//! Running untrusted programs (model-written code, tools) with limits.
//!
//! With [`Isolation::Bubblewrap`] (the default) a program runs under
//! bubblewrap in fresh user, PID, network, IPC, UTS and cgroup namespaces:
//!
//! - **Filesystem:** only `/usr` (and the `/bin`, `/lib*`, `/sbin` links into
//!   it) and `/etc` are visible, read-only, under a read-only root; `/tmp` is
//!   an empty private tmpfs;
//!   the program's own directory (a fresh host temp directory, deleted
//!   afterwards) is the only writable place, mounted at `/work`.
//! - **Network:** none (a network namespace with only a down loopback).
//! - **Environment:** cleared; only `PATH`, `HOME=/work`, `LANG` and what the
//!   caller sets. API keys and other secrets of the host never reach it.
//! - **Processes:** the program is PID 1's only child in its own PID
//!   namespace; when it exits, is killed, or redraft dies, the namespace and
//!   everything it spawned (background processes included) is killed.
//! - **Descriptors:** the program gets stdin, stdout and stderr and nothing
//!   else: every other descriptor redraft holds (its own, or inherited from
//!   its parent) is closed at exec (`close_range`).
//! - **System calls:** a seccomp filter (applied by bubblewrap just before
//!   the program starts) fails the calls a test program never needs with
//!   `EPERM`: ptrace, mount, namespaces (unshare, setns, and clone with
//!   namespace flags), keyrings, bpf, perf events, kernel modules, reboot,
//!   and similar (see [`DENIED_SYSCALLS`]). x86-64 and aarch64.
//! - **Memory:** with a writable memory cgroup (v2, or v1's memory
//!   controller; redraft as root) each run gets a cgroup of its own whose
//!   limit is the memory limit, and "out of memory" is the kernel's word
//!   (an OOM kill in that cgroup). Without one, the address-space rlimit
//!   applies and a program that runs out of memory is reported by how it
//!   ended (its exit status or signal), never by what it printed.
//! - **Resources (rlimits):** CPU seconds, file size, open files, and
//!   processes. When redraft runs as root each run gets a
//!   user ID of its own, so the process limit is per run and the program
//!   cannot read files that only root (or any real user) may read. As a
//!   normal user the process limit counts all of that user's processes.
//! - **Time:** a wall-clock limit; on expiry the whole tree is killed.
//! - **Output:** stdout and stderr are read up to a limit; past it the
//!   program is killed and reported as such.
//! - **Clean-up:** the work directory is removed after every run with a
//!   constant number of descriptors whatever the program left in it (deep
//!   trees, unreadable directories, many files); a removal that fails is
//!   reported in [`RunResult::cleanup_error`] and logged, never silent.
//!
//! Linux only for isolation (bubblewrap needs Linux namespaces); elsewhere
//! `bwrap` is not found and the same refusal applies.
//!
//! Without bubblewrap on the machine, running is refused with
//! [`SandboxError::Unavailable`] unless the caller chose
//! [`Isolation::None`] (then only the rlimits, time, output limits and a
//! scrubbed environment apply).

use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

mod cgroup;
mod seccomp;

pub use seccomp::DENIED_SYSCALLS;

/// How a program is isolated from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Linux namespaces through bubblewrap (`bwrap`), plus rlimits.
    Bubblewrap,
    /// No namespaces: rlimits, time and output limits and a clean
    /// environment only. Must be chosen explicitly.
    None,
}

/// Limits for one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock time.
    pub time: Duration,
    /// Address space in bytes.
    pub memory: u64,
    /// Bytes kept of stdout and of stderr each; more kills the program.
    pub output: usize,
    /// Processes (threads count) the program may have at once.
    pub processes: u64,
    /// Largest file it may write, in bytes.
    pub file_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            time: Duration::from_secs(5),
            memory: 512 << 20,
            output: 64 << 10,
            processes: 32,
            file_size: 16 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "no sandbox: `bwrap` (bubblewrap) was not found on PATH; install it (`apt-get install bubblewrap`) or set `isolation: none` to run without isolation"
    )]
    Unavailable,
    #[error("cannot prepare the sandbox directory {path}: {source}")]
    Prepare {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("a file name must be a plain name inside the sandbox, not `{0}`")]
    BadFileName(String),
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Outcome {
    /// Exited with this status code.
    Exited(i32),
    /// Killed by this signal (not by us).
    Signaled(i32),
    /// Ran past the time limit; killed.
    TimedOut,
    /// Killed by the kernel for going over its memory limit (an OOM kill in
    /// the run's memory cgroup). Only reported where a cgroup is available.
    MemoryExceeded,
    /// Wrote more than the output limit; killed.
    OutputExceeded,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunResult {
    pub outcome: Outcome,
    pub stdout: String,
    pub stderr: String,
    pub wall_ms: f64,
    /// Why the work directory could not be removed, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup_error: Option<String>,
    /// Where the program's work directory was on the host (gone unless
    /// `cleanup_error` says otherwise). Not serialised: a host path.
    #[serde(skip)]
    pub work_dir: PathBuf,
}

impl RunResult {
    pub fn success(&self) -> bool {
        self.outcome == Outcome::Exited(0)
    }
}

/// A configured sandbox; cheap to share between concurrent runs.
#[derive(Debug, Clone)]
pub struct Sandbox {
    limits: Limits,
    /// The bubblewrap binary; `None` only when isolation was opted out of.
    bwrap: Option<PathBuf>,
}

impl Sandbox {
    /// Fails with [`SandboxError::Unavailable`] when isolation is wanted but
    /// bubblewrap is missing.
    pub fn new(isolation: Isolation, limits: Limits) -> Result<Sandbox, SandboxError> {
        let bwrap = match isolation {
            Isolation::Bubblewrap => Some(find_on_path("bwrap").ok_or(SandboxError::Unavailable)?),
            Isolation::None => None,
        };
        Ok(Sandbox { limits, bwrap })
    }

    pub fn isolation(&self) -> Isolation {
        match self.bwrap {
            Some(_) => Isolation::Bubblewrap,
            None => Isolation::None,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether the kernel accounts each run's memory (a memory cgroup per
    /// run could be made here), so that [`Outcome::MemoryExceeded`] can be
    /// reported. Without it the address-space rlimit still limits memory.
    pub fn kernel_memory_accounting() -> bool {
        cgroup::available()
    }

    /// Writes `files` into a fresh directory, runs `argv` there with `stdin`,
    /// and removes the directory. `env` adds variables to the clean
    /// environment.
    pub async fn run(
        &self,
        files: &[(String, String)],
        argv: &[String],
        env: &[(String, String)],
        stdin: &[u8],
    ) -> Result<RunResult, SandboxError> {
        if argv.is_empty() {
            return Err(SandboxError::Spawn {
                program: String::new(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "no program given"),
            });
        }
        let dir = WorkDir::create(files)?;
        // A user of its own only inside the sandbox: an opted-out run keeps
        // redraft's user, like any program it starts.
        let uid = self.bwrap.as_ref().and_then(|_| run_uid());
        if let Some(uid) = uid {
            dir.chown(uid)?;
        }
        let home = match self.bwrap {
            Some(_) => "/work".to_string(),
            None => dir.path.display().to_string(),
        };
        // Inside the sandbox only /usr is there to search; an opted-out
        // program finds interpreters as redraft does first (a virtualenv's
        // or pyenv's `python3`; PATH holds no secret), then in the system's.
        const SYSTEM_PATH: &str = "/usr/local/bin:/usr/bin:/bin";
        let path = match (&self.bwrap, std::env::var("PATH")) {
            (None, Ok(p)) if !p.is_empty() => format!("{p}:{SYSTEM_PATH}"),
            _ => SYSTEM_PATH.to_string(),
        };
        let mut envs: Vec<(String, String)> = vec![
            ("PATH".into(), path),
            ("HOME".into(), home),
            ("LANG".into(), "C.UTF-8".into()),
            ("TMPDIR".into(), "/tmp".into()),
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
        ];
        envs.extend(env.iter().cloned());
        let cgroup = cgroup::MemoryCgroup::create(self.limits.memory);
        // bubblewrap reads the seccomp program from a pipe it inherits; that
        // pipe is the one descriptor above stderr that survives exec, and
        // bubblewrap closes it before starting the program.
        let filter = match &self.bwrap {
            Some(_) => seccomp::program()
                .map(seccomp::pipe_with)
                .transpose()
                .map_err(|source| SandboxError::Prepare {
                    path: dir.path.clone(),
                    source,
                })?,
            None => None,
        };
        let keep_fd = filter.as_ref().map(|f| f.as_raw_fd());
        // The environment is always replaced: inside bubblewrap by its
        // `--setenv`s, otherwise directly.
        let mut cmd = match &self.bwrap {
            Some(bwrap) => {
                let mut c = tokio::process::Command::new(bwrap);
                c.args(bwrap_args(&dir.path, &envs));
                if let Some(fd) = keep_fd {
                    c.args(["--seccomp".to_string(), fd.to_string()]);
                }
                c.arg("--").args(argv).env_clear();
                c
            }
            None => {
                let mut c = tokio::process::Command::new(&argv[0]);
                c.args(&argv[1..])
                    .current_dir(&dir.path)
                    .env_clear()
                    .envs(envs);
                c
            }
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let child_setup = ChildSetup {
            limits: self.limits,
            uid,
            keep_fd,
            cgroup_procs: cgroup.as_ref().map(|c| c.procs_path()),
        };
        // SAFETY: only async-signal-safe calls (open, write, close,
        // close_range, fcntl, setrlimit, setgroups, setgid, setuid, prctl)
        // between fork and exec, on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || child_setup.apply());
        }
        let started = Instant::now();
        let spawned = cmd.spawn();
        // Our copy of the filter pipe is not needed once the child has its own.
        drop(filter);
        let mut child = spawned.map_err(|source| SandboxError::Spawn {
            program: argv.first().cloned().unwrap_or_default(),
            source,
        })?;
        let pgid = child.id().map(|p| p as i32);
        let kill = move || {
            if let Some(pgid) = pgid {
                // SAFETY: plain syscall on our own child's process group.
                unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                }
            }
        };
        let mut stdin_pipe = child.stdin.take();
        let input = stdin.to_vec();
        let feed = async move {
            if let Some(pipe) = stdin_pipe.as_mut() {
                // The program may exit without reading: ignore broken pipes.
                let _ = pipe.write_all(&input).await;
            }
            drop(stdin_pipe);
        };
        let limits = self.limits;
        // Past the output limit the whole tree is killed at once, so the
        // other stream ends too.
        let out = capped(child.stdout.take(), limits.output, kill);
        let err = capped(child.stderr.take(), limits.output, kill);
        let work = async {
            let (_, out, err) = tokio::join!(feed, out, err);
            (out, err)
        };
        tokio::pin!(work);
        let mut outcome = None;
        let ((stdout, out_over), (stderr, err_over)) = tokio::select! {
            streams = &mut work => streams,
            _ = tokio::time::sleep(limits.time) => {
                kill();
                outcome = Some(Outcome::TimedOut);
                // Killed: the pipes close and what was printed so far is kept.
                tokio::time::timeout(Duration::from_secs(2), &mut work)
                    .await
                    .unwrap_or_default()
            }
        };
        if outcome.is_none() && (out_over || err_over) {
            outcome = Some(Outcome::OutputExceeded);
        }
        let status = match tokio::time::timeout(
            limits.time.saturating_sub(started.elapsed()) + Duration::from_millis(500),
            child.wait(),
        )
        .await
        {
            Ok(status) => status.ok(),
            Err(_) => {
                kill();
                outcome.get_or_insert(Outcome::TimedOut);
                child.wait().await.ok()
            }
        };
        let wall_ms = started.elapsed().as_secs_f64() * 1000.0;
        // The kernel's word on memory, then the cgroup goes.
        let oom_killed = match cgroup {
            Some(cg) => tokio::task::spawn_blocking(move || cg.finish())
                .await
                .unwrap_or(false),
            None => false,
        };
        let outcome = outcome.unwrap_or_else(|| classify(status, oom_killed, self.isolation()));
        let work_dir = dir.path.clone();
        let cleanup_error = dir.remove().await;
        Ok(RunResult {
            work_dir,
            outcome,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            wall_ms,
            cleanup_error,
        })
    }
}

/// Exit status → outcome. Under bubblewrap a death by signal N arrives as
/// exit status 128 + N. Memory is decided by the kernel (`oom_killed`, from
/// the run's cgroup), never by what the program printed.
fn classify(
    status: Option<std::process::ExitStatus>,
    oom_killed: bool,
    isolation: Isolation,
) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let signal = match status {
        None => Some(libc::SIGKILL),
        Some(s) => match (s.code(), s.signal()) {
            (Some(0), _) => return Outcome::Exited(0),
            _ if oom_killed => return Outcome::MemoryExceeded,
            (Some(c), _) if isolation == Isolation::Bubblewrap && (129..=192).contains(&c) => {
                Some(c - 128)
            }
            (Some(c), _) => return Outcome::Exited(c),
            (None, sig) => sig,
        },
    };
    match signal {
        Some(libc::SIGXCPU) => Outcome::TimedOut,
        Some(sig) => Outcome::Signaled(sig),
        None => Outcome::Signaled(0),
    }
}

/// Reads up to `cap` bytes; on more, calls `over` and reports it.
async fn capped<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    cap: usize,
    over: impl Fn(),
) -> (Vec<u8>, bool) {
    let Some(mut pipe) = pipe else {
        return (Vec::new(), false);
    };
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return (buf, false),
            Ok(n) => {
                let room = cap.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
                if n > room {
                    over();
                    return (buf, true);
                }
            }
        }
    }
}

/// What the child does between fork and exec, prepared before the fork.
struct ChildSetup {
    limits: Limits,
    uid: Option<u32>,
    /// The one descriptor above stderr that stays open (the seccomp pipe).
    keep_fd: Option<RawFd>,
    /// `cgroup.procs` of the run's memory cgroup.
    cgroup_procs: Option<CString>,
}

impl ChildSetup {
    /// In the child: join the memory cgroup, close every inherited
    /// descriptor at exec, set rlimits, then take a user of its own.
    fn apply(&self) -> std::io::Result<()> {
        if let Some(procs) = &self.cgroup_procs {
            // "0" moves the writing process; its children follow.
            // SAFETY: open/write/close on a C string prepared before fork.
            unsafe {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
            }
        }
        close_inherited_fds(self.keep_fd)?;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        type Resource = libc::__rlimit_resource_t;
        #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
        type Resource = libc::c_int;
        fn set(resource: Resource, value: u64) -> std::io::Result<()> {
            let lim = libc::rlimit {
                rlim_cur: value as libc::rlim_t,
                rlim_max: value as libc::rlim_t,
            };
            // SAFETY: setrlimit with a valid pointer.
            if unsafe { libc::setrlimit(resource, &lim) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        }
        let limits = self.limits;
        // With a memory cgroup the kernel counts what the program really
        // uses; the address-space limit is the fallback without one.
        if self.cgroup_procs.is_none() {
            set(libc::RLIMIT_AS, limits.memory)?;
        }
        set(libc::RLIMIT_CPU, limits.time.as_secs() + 1)?;
        set(libc::RLIMIT_FSIZE, limits.file_size)?;
        set(libc::RLIMIT_NOFILE, 256)?;
        set(libc::RLIMIT_CORE, 0)?;
        // bubblewrap itself needs a few processes.
        set(libc::RLIMIT_NPROC, limits.processes + 4)?;
        if let Some(uid) = self.uid {
            // SAFETY: plain syscalls; order matters (groups and gid while root).
            unsafe {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        // Die with redraft (set after the uid change, which clears it).
        // SAFETY: prctl with constant arguments.
        #[cfg(target_os = "linux")]
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        }
        Ok(())
    }
}

/// Marks every descriptor from 3 up close-on-exec, except `keep` (whose
/// flag is cleared). Marking rather than closing keeps the standard
/// library's own exec-error pipe working until the exec itself.
/// Async-signal-safe.
fn close_inherited_fds(keep: Option<RawFd>) -> std::io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: plain syscalls on descriptor numbers.
    unsafe {
        let done = libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        ) == 0;
        if !done {
            // Kernels before 5.11: every possible descriptor, one by one.
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                lim.rlim_cur.min(1 << 20) as RawFd
            } else {
                1 << 16
            };
            for fd in 3..max {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
        if let Some(fd) = keep {
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// A user ID of its own for each run when we are root, so that the
/// process limit is per run and host files stay unreadable.
fn run_uid() -> Option<u32> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // SAFETY: geteuid never fails.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let slot = NEXT.fetch_add(1, Ordering::Relaxed) % 1000;
    Some(1_000_000_000 + (std::process::id() % 1_000_000) * 1000 + slot)
}

fn bwrap_args(dir: &Path, envs: &[(String, String)]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--ro-bind",
        "/usr",
        "/usr",
        "--ro-bind",
        "/etc",
        "/etc",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
    ]
    .map(String::from)
    .to_vec();
    for top in ["/bin", "/sbin", "/lib", "/lib64", "/lib32"] {
        let p = Path::new(top);
        match std::fs::read_link(p) {
            Ok(target) => a.extend(["--symlink".into(), target.display().to_string(), top.into()]),
            Err(_) if p.is_dir() => a.extend(["--ro-bind".into(), top.into(), top.into()]),
            Err(_) => {}
        }
    }
    a.extend([
        "--bind".into(),
        dir.display().to_string(),
        "/work".into(),
        // The root itself (bubblewrap's tmpfs holding the mount points).
        "--remount-ro".into(),
        "/".into(),
        "--chdir".into(),
        "/work".into(),
        "--clearenv".into(),
    ]);
    for (k, v) in envs {
        a.extend(["--setenv".into(), k.clone(), v.clone()]);
    }
    a
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A fresh private directory, removed on drop.
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn create(files: &[(String, String)]) -> Result<WorkDir, SandboxError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "redraft-sandbox-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let prepare = |source| SandboxError::Prepare {
            path: path.clone(),
            source,
        };
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir(&path).map_err(prepare)?;
        let dir = WorkDir { path };
        for (name, content) in files {
            let plain = Path::new(name)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain || name.is_empty() {
                return Err(SandboxError::BadFileName(name.clone()));
            }
            let file = dir.path.join(name);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).map_err(|source| SandboxError::Prepare {
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            std::fs::write(&file, content).map_err(|source| SandboxError::Prepare {
                path: file.clone(),
                source,
            })?;
        }
        Ok(dir)
    }

    fn chown(&self, uid: u32) -> Result<(), SandboxError> {
        fn walk(p: &Path, uid: u32) -> std::io::Result<()> {
            std::os::unix::fs::chown(p, Some(uid), Some(uid))?;
            if p.is_dir() {
                for entry in std::fs::read_dir(p)? {
                    walk(&entry?.path(), uid)?;
                }
            }
            Ok(())
        }
        walk(&self.path, uid).map_err(|source| SandboxError::Prepare {
            path: self.path.clone(),
            source,
        })
    }
}

impl WorkDir {
    /// Removes the directory (off the async runtime) and says why it could
    /// not, if it could not.
    async fn remove(mut self) -> Option<String> {
        // Taken: the drop below then has nothing to do.
        let path = std::mem::take(&mut self.path);
        let shown = path.display().to_string();
        let result = tokio::task::spawn_blocking(move || remove_tree(&path)).await;
        let error = match result {
            Ok(Ok(())) => return None,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        let message = format!("could not remove the sandbox directory {shown}: {error}");
        tracing::warn!("{message}");
        Some(message)
    }
}

impl Drop for WorkDir {
    /// Only on early exits (a file that could not be written, a spawn that
    /// failed): the program never ran, so the tree is ours and small.
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        if let Err(e) = remove_tree(&self.path) {
            tracing::warn!(
                "could not remove the sandbox directory {}: {e}",
                self.path.display()
            );
        }
    }
}

/// Removes a directory tree whatever is in it: any depth (descriptors in
/// use stay constant; the walk goes down and back up through `..`),
/// directories without read, write or search permission (given them back
/// first), symlinks (removed, never followed). Linear in the number of
/// entries. A missing `root` is not an error.
pub fn remove_tree(root: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let Some(name) = root.file_name() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a removable directory",
        ));
    };
    let parent = match root.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let cstr = |b: &[u8]| {
        CString::new(b).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let parent_fd = Fd::open_dir(libc::AT_FDCWD, &cstr(parent.as_os_str().as_bytes())?)?;
    let name = cstr(name.as_bytes())?;
    let mut fd = match Fd::open_child_dir(parent_fd.0, &name) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            return unlink_at(parent_fd.0, &name, 0);
        }
        Err(e) => return Err(e),
    };
    // Per level: the directory's name in its parent and the subdirectories
    // still to remove.
    let mut levels: Vec<(CString, Vec<CString>)> = vec![(name, clear_files(&fd)?)];
    loop {
        let (_, pending) = levels.last_mut().expect("the root level is popped last");
        if let Some(sub) = pending.pop() {
            let child = Fd::open_child_dir(fd.0, &sub)?;
            fd = child;
            let subdirs = clear_files(&fd)?;
            levels.push((sub, subdirs));
            continue;
        }
        let (done, _) = levels.pop().expect("checked above");
        if levels.is_empty() {
            drop(fd);
            return unlink_at(parent_fd.0, &done, libc::AT_REMOVEDIR);
        }
        fd = Fd::open_dir(fd.0, c"..")?;
        unlink_at(fd.0, &done, libc::AT_REMOVEDIR)?;
    }
}

/// An owned descriptor.
struct Fd(RawFd);

impl Fd {
    fn open_dir(at: RawFd, name: &std::ffi::CStr) -> std::io::Result<Fd> {
        // SAFETY: openat with a valid C string.
        let fd = unsafe {
            libc::openat(
                at,
                name.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Fd(fd))
    }

    /// Opens a subdirectory, giving it back its permissions if the program
    /// took them away.
    fn open_child_dir(at: RawFd, name: &std::ffi::CStr) -> std::io::Result<Fd> {
        match Fd::open_dir(at, name) {
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                // SAFETY: fchmodat with a valid C string.
                unsafe { libc::fchmodat(at, name.as_ptr(), 0o700, 0) };
                Fd::open_dir(at, name)
            }
            r => r,
        }
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own the descriptor.
        unsafe { libc::close(self.0) };
    }
}

fn unlink_at(dir: RawFd, name: &std::ffi::CStr, flags: libc::c_int) -> std::io::Result<()> {
    // SAFETY: unlinkat with a valid C string.
    if unsafe { libc::unlinkat(dir, name.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(()),
        // The directory lost its write permission: give it back, once.
        Some(libc::EACCES | libc::EPERM) => {
            // SAFETY: fchmod on a descriptor we own; unlinkat as above.
            unsafe {
                libc::fchmod(dir, 0o700);
                if libc::unlinkat(dir, name.as_ptr(), flags) == 0 {
                    return Ok(());
                }
            }
            Err(std::io::Error::last_os_error())
        }
        _ => Err(e),
    }
}

/// Unlinks everything in `dir` that is not a directory and returns the
/// names of its subdirectories.
fn clear_files(dir: &Fd) -> std::io::Result<Vec<CString>> {
    // SAFETY: fdopendir takes over a duplicate; readdir's entries are copied
    // before the next call; closedir releases the duplicate.
    unsafe {
        let dup = libc::fcntl(dir.0, libc::F_DUPFD_CLOEXEC, 0);
        if dup < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = libc::fdopendir(dup);
        if stream.is_null() {
            let e = std::io::Error::last_os_error();
            libc::close(dup);
            return Err(e);
        }
        let mut subdirs = Vec::new();
        let mut files = Vec::new();
        loop {
            let entry = libc::readdir(stream);
            if entry.is_null() {
                break;
            }
            let name = std::ffi::CStr::from_ptr((*entry).d_name.as_ptr());
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let is_dir = match (*entry).d_type {
                libc::DT_DIR => true,
                libc::DT_UNKNOWN => {
                    let mut st: libc::stat = std::mem::zeroed();
                    libc::fstatat(dir.0, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) == 0
                        && st.st_mode & libc::S_IFMT == libc::S_IFDIR
                }
                _ => false,
            };
            if is_dir {
                subdirs.push(name.to_owned());
            } else {
                files.push(name.to_owned());
            }
        }
        libc::closedir(stream);
        for f in files {
            unlink_at(dir.0, &f, 0)?;
        }
        Ok(subdirs)
    }
}
