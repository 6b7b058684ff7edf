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
//! - **Resources (rlimits):** address space (memory), CPU seconds, file size,
//!   open files, and processes. When redraft runs as root each run gets a
//!   user ID of its own, so the process limit is per run and the program
//!   cannot read files that only root (or any real user) may read. As a
//!   normal user the process limit counts all of that user's processes.
//! - **Time:** a wall-clock limit; on expiry the whole tree is killed.
//! - **Output:** stdout and stderr are read up to a limit; past it the
//!   program is killed and reported as such.
//!
//! Linux only for isolation (bubblewrap needs Linux namespaces); elsewhere
//! `bwrap` is not found and the same refusal applies.
//!
//! Without bubblewrap on the machine, running is refused with
//! [`SandboxError::Unavailable`] unless the caller chose
//! [`Isolation::None`] (then only the rlimits, time, output limits and a
//! scrubbed environment apply).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

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
    /// Ran out of its memory limit.
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
        let mut envs: Vec<(String, String)> = vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("HOME".into(), home),
            ("LANG".into(), "C.UTF-8".into()),
            ("TMPDIR".into(), "/tmp".into()),
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
        ];
        envs.extend(env.iter().cloned());
        // The environment is always replaced: inside bubblewrap by its
        // `--setenv`s, otherwise directly.
        let mut cmd = match &self.bwrap {
            Some(bwrap) => {
                let mut c = tokio::process::Command::new(bwrap);
                c.args(bwrap_args(&dir.path, &envs))
                    .arg("--")
                    .args(argv)
                    .env_clear();
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
        let limits = self.limits;
        // SAFETY: only async-signal-safe calls (setrlimit, setgroups, setgid,
        // setuid, prctl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || restrict(limits, uid));
        }
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|source| SandboxError::Spawn {
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
        let stderr = String::from_utf8_lossy(&stderr).into_owned();
        let outcome = outcome.unwrap_or_else(|| classify(status, &stderr, self.isolation()));
        Ok(RunResult {
            outcome,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr,
            wall_ms,
        })
    }
}

/// Exit status → outcome, recognising out-of-memory deaths. Under
/// bubblewrap a death by signal N arrives as exit status 128 + N.
fn classify(
    status: Option<std::process::ExitStatus>,
    stderr: &str,
    isolation: Isolation,
) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let oom = [
        "MemoryError",
        "Cannot allocate memory",
        "std::bad_alloc",
        "out of memory",
    ]
    .iter()
    .any(|m| stderr.contains(m));
    let signal = match status {
        None => Some(libc::SIGKILL),
        Some(s) => match (s.code(), s.signal()) {
            (Some(0), _) => return Outcome::Exited(0),
            _ if oom => return Outcome::MemoryExceeded,
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

/// In the child between fork and exec: rlimits, then a user of its own.
fn restrict(limits: Limits, uid: Option<u32>) -> std::io::Result<()> {
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
    set(libc::RLIMIT_AS, limits.memory)?;
    set(libc::RLIMIT_CPU, limits.time.as_secs() + 1)?;
    set(libc::RLIMIT_FSIZE, limits.file_size)?;
    set(libc::RLIMIT_NOFILE, 256)?;
    set(libc::RLIMIT_CORE, 0)?;
    // bubblewrap itself needs a few processes.
    set(libc::RLIMIT_NPROC, limits.processes + 4)?;
    if let Some(uid) = uid {
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

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
