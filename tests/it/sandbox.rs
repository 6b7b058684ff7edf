//! The hostile-code suite: each program tries to harm the host and must be
//! contained and reported. Needs bubblewrap (`scripts/install-deps.sh`);
//! without it these tests are skipped, unless `REDRAFT_REQUIRE_PEERS=1`
//! (CI), where they fail.

use std::os::fd::AsRawFd;
use std::time::Duration;

use redraft::sandbox::{Isolation, Limits, Outcome, RunResult, Sandbox};

fn sandbox(time_ms: u64) -> Option<Sandbox> {
    let limits = Limits {
        time: Duration::from_millis(time_ms),
        memory: 256 << 20,
        output: 4096,
        processes: 16,
        file_size: 1 << 20,
    };
    match Sandbox::new(Isolation::Bubblewrap, limits) {
        Ok(s) => Some(s),
        Err(e) => {
            assert!(
                std::env::var("REDRAFT_REQUIRE_PEERS").is_err(),
                "bubblewrap is required here: {e}"
            );
            eprintln!("skipped: {e}");
            None
        }
    }
}

async fn python(sb: &Sandbox, code: &str) -> RunResult {
    sb.run(
        &[("main.py".into(), code.into())],
        &["python3".into(), "main.py".into()],
        &[],
        b"",
    )
    .await
    .expect("the sandbox starts")
}

/// Waits (bounded) until no host process has `marker` in its command line:
/// killed processes take a moment to be reaped.
async fn assert_no_host_process_with(marker: &str) {
    for _ in 0..500 {
        if host_processes_with(marker) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("a process with {marker:?} outlived the run");
}

/// Processes on the host whose command line contains `marker`.
fn host_processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .count()
}

#[tokio::test]
async fn a_well_behaved_program_runs_with_stdin() {
    let Some(sb) = sandbox(5000) else { return };
    let r = sb
        .run(
            &[(
                "main.py".into(),
                "import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))".into(),
            )],
            &["python3".into(), "main.py".into()],
            &[],
            b"1 2 3 4\n",
        )
        .await
        .unwrap();
    assert_eq!(r.outcome, Outcome::Exited(0), "{r:?}");
    assert_eq!(r.stdout.trim(), "10");
}

#[tokio::test]
async fn an_infinite_loop_times_out() {
    let Some(sb) = sandbox(700) else { return };
    let r = python(&sb, "print('started', flush=True)\nwhile True:\n    pass\n").await;
    assert_eq!(r.outcome, Outcome::TimedOut, "{r:?}");
    // What it printed before the limit is kept.
    assert_eq!(r.stdout.trim(), "started");
}

#[tokio::test]
async fn a_fork_bomb_is_contained() {
    let Some(sb) = sandbox(2000) else { return };
    let r = sb
        .run(
            &[("bomb_7f3a.py".into(), "import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        time.sleep(0.01)\n".into())],
            &["python3".into(), "bomb_7f3a.py".into()],
            &[],
            b"",
        )
        .await
        .unwrap();
    // It never stops forking (failures only make it wait), so the clock ends it.
    assert_eq!(r.outcome, Outcome::TimedOut, "{r:?}");
    // Nothing left behind, and the host can still start processes.
    assert_no_host_process_with("bomb_7f3a").await;
    assert!(
        std::process::Command::new("true")
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn huge_output_is_cut_and_reported() {
    let Some(sb) = sandbox(5000) else { return };
    let r = python(&sb, "while True:\n    print('x' * 1000)\n").await;
    assert_eq!(r.outcome, Outcome::OutputExceeded, "{r:?}");
    assert_eq!(r.stdout.len(), 4096);
    // A writer that ignores the closed pipe is killed, not waited for.
    let stubborn = "import signal, sys\nsignal.signal(signal.SIGPIPE, signal.SIG_IGN)\nwhile True:\n    try:\n        sys.stdout.write('x' * 1000)\n        sys.stdout.flush()\n    except BrokenPipeError:\n        pass\n";
    let r = python(&sb, stubborn).await;
    assert_eq!(r.outcome, Outcome::OutputExceeded, "{r:?}");
}

#[tokio::test]
async fn the_network_is_unreachable() {
    let Some(sb) = sandbox(5000) else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let r = python(
        &sb,
        &format!(
            "import socket\nresults = []\nfor host in ['127.0.0.1', '1.1.1.1']:\n    try:\n        socket.create_connection((host, {port} if host == '127.0.0.1' else 80), timeout=1)\n        results.append('connected')\n    except OSError as e:\n        results.append('refused')\nprint(' '.join(results))\n"
        ),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Exited(0), "{r:?}");
    assert_eq!(r.stdout.trim(), "refused refused");
    assert!(
        listener.accept().is_err(),
        "the host listener saw a connection"
    );
}

#[tokio::test]
async fn writes_outside_the_work_directory_fail_or_stay_private() {
    let Some(sb) = sandbox(5000) else { return };
    let host_tmp = std::env::temp_dir().join(format!("redraft-escape-{}", std::process::id()));
    let _ = std::fs::remove_file(&host_tmp);
    let r = python(
        &sb,
        &format!(
            "import os\nok = []\nfor path in ['/etc/escape', '/usr/escape', '../escape', '{}', '/tmp/private']:\n    try:\n        open(path, 'w').write('x')\n        ok.append(path)\n    except OSError:\n        pass\nopen('mine.txt', 'w').write('fine')\nprint(ok)\n",
            host_tmp.display()
        ),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Exited(0), "{r:?}");
    // Only the sandbox's own tmpfs accepted writes (and the host /tmp path is
    // that tmpfs inside the sandbox): nothing reached the host.
    assert!(
        !r.stdout.contains("/etc/") && !r.stdout.contains("/usr/"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("../escape"), "{}", r.stdout);
    assert!(!std::env::temp_dir().join("escape").exists());
    assert!(
        !host_tmp.exists(),
        "a write reached the host's {}",
        host_tmp.display()
    );
    assert!(!std::path::Path::new("/etc/escape").exists());
}

#[tokio::test]
async fn host_environment_and_secrets_are_not_visible() {
    let Some(sb) = sandbox(5000) else { return };
    let r = python(
        &sb,
        "import os, glob\nprint(sorted(os.environ))\nfor p in glob.glob('/proc/*/environ'):\n    try:\n        print(open(p, 'rb').read())\n    except OSError:\n        pass\nfor p in ['/root/.bash_history', '/etc/shadow']:\n    try:\n        open(p).read()\n        print('read', p)\n    except OSError:\n        pass\n",
    )
    .await;
    assert_eq!(r.outcome, Outcome::Exited(0), "{r:?}");
    // cargo gives the test process CARGO_* variables; none may leak.
    assert!(!r.stdout.contains("CARGO"), "{}", r.stdout);
    assert!(
        !r.stdout.contains(env!("CARGO_MANIFEST_DIR")),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("read /"), "{}", r.stdout);
}

#[tokio::test]
async fn background_processes_die_with_the_program() {
    let Some(sb) = sandbox(5000) else { return };
    let r = python(
        &sb,
        "import subprocess\nsubprocess.Popen(['sleep', '31.4159'], start_new_session=True)\nprint('left it running')\n",
    )
    .await;
    assert_eq!(r.outcome, Outcome::Exited(0), "{r:?}");
    assert_no_host_process_with("31.4159").await;
}

#[tokio::test]
async fn several_programs_run_in_parallel() {
    let Some(sb) = sandbox(10_000) else { return };
    // Each program says when it started and ended (the host's clock, seen
    // through the sandbox); run in parallel, all four were running at once.
    let runs = (0..4).map(|i| {
        let sb = sb.clone();
        async move {
            python(
                &sb,
                &format!("import time\nstart = time.time()\ntime.sleep(1.0)\nprint({i} * {i}, start, time.time())\n"),
            )
            .await
        }
    });
    let results = futures_util::future::join_all(runs).await;
    let mut spans = Vec::new();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.outcome, Outcome::Exited(0), "{r:?}");
        let fields: Vec<&str> = r.stdout.split_whitespace().collect();
        assert_eq!(fields[0], (i * i).to_string());
        spans.push((
            fields[1].parse::<f64>().unwrap(),
            fields[2].parse::<f64>().unwrap(),
        ));
    }
    let last_start = spans.iter().map(|s| s.0).fold(f64::MIN, f64::max);
    let first_end = spans.iter().map(|s| s.1).fold(f64::MAX, f64::min);
    assert!(
        last_start < first_end,
        "the runs did not overlap: {spans:?}"
    );
}

/// Opens a file, a directory and a socket *without* close-on-exec, as a
/// parent process might hand them down, and returns them (kept open).
fn inheritable_descriptors() -> (
    std::fs::File,
    std::fs::File,
    std::net::TcpListener,
    std::path::PathBuf,
) {
    let path = std::env::temp_dir().join(format!("redraft-fd-target-{}", std::process::id()));
    let file = std::fs::File::create(&path).unwrap();
    let dir = std::fs::File::open(std::env::temp_dir()).unwrap();
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    for fd in [file.as_raw_fd(), dir.as_raw_fd(), socket.as_raw_fd()] {
        // SAFETY: fcntl on descriptors we own.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            assert_eq!(libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC), 0);
        }
    }
    (file, dir, socket, path)
}

/// Every descriptor above stderr the program can see, and what writing to
/// each and walking up from each did.
const FD_PROBE: &str = r#"
import os
seen = []
for fd in range(3, 1024):
    try:
        os.fstat(fd)
    except OSError:
        continue
    seen.append(fd)
    try:
        os.write(fd, b"escaped")
    except OSError:
        pass
    try:
        os.listdir(os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd))
        print("walked up from", fd)
    except OSError:
        pass
print("fds", seen)
"#;

#[tokio::test]
async fn inherited_descriptors_do_not_reach_the_program() {
    let (file, dir, socket, path) = inheritable_descriptors();
    let limits = Limits {
        time: Duration::from_secs(10),
        ..Limits::default()
    };
    let mut sandboxes = vec![Sandbox::new(Isolation::None, limits).unwrap()];
    sandboxes.extend(sandbox(10_000));
    for sb in sandboxes {
        let r = python(&sb, FD_PROBE).await;
        assert_eq!(r.outcome, Outcome::Exited(0), "{r:?}");
        assert_eq!(
            r.stdout.trim(),
            "fds []",
            "{:?}: {}",
            sb.isolation(),
            r.stdout
        );
    }
    assert_eq!(
        std::fs::read(&path).unwrap(),
        b"",
        "the program wrote to a host file"
    );
    drop((file, dir, socket));
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn a_deep_tree_of_locked_directories_is_removed() {
    let Some(sb) = sandbox(20_000) else { return };
    // 15,000 levels deep (std's recursive removal overflows its stack on
    // such a tree and takes the process down), many files, and directories
    // without any permission bits.
    let code = r#"
import os
fd = os.open(".", os.O_RDONLY)
for i in range(15000):
    os.mkdir("d", dir_fd=fd)
    nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
    if i % 2500 == 0:
        for j in range(200):
            os.close(os.open("f%d" % j, os.O_CREAT | os.O_WRONLY, dir_fd=nfd))
    os.close(fd)
    fd = nfd
os.mkdir("locked", dir_fd=fd)
os.close(os.open("locked/secret", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
os.chmod("locked", 0, dir_fd=fd)
os.chmod(".", 0o500)
print("built")
"#;
    let r = python(&sb, code).await;
    assert_eq!(r.outcome, Outcome::Exited(0), "{r:?}");
    assert_eq!(r.stdout.trim(), "built");
    assert_eq!(r.cleanup_error, None);
    assert!(!r.work_dir.exists(), "{} survived", r.work_dir.display());
}

#[test]
fn remove_tree_takes_any_depth() {
    use std::ffi::CString;
    let root = std::env::temp_dir().join(format!("redraft-deep-{}", std::process::id()));
    std::fs::create_dir(&root).unwrap();
    // 15,000 levels, built through descriptors (the path is far past PATH_MAX).
    let name = CString::new("d").unwrap();
    // SAFETY: plain *at syscalls on descriptors we own.
    unsafe {
        let path = CString::new(root.as_os_str().as_encoded_bytes()).unwrap();
        let mut fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
        assert!(fd >= 0);
        for _ in 0..15_000 {
            assert_eq!(libc::mkdirat(fd, name.as_ptr(), 0o700), 0);
            let next = libc::openat(fd, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
            assert!(next >= 0);
            libc::close(fd);
            fd = next;
        }
        libc::fchmod(fd, 0);
        libc::close(fd);
    }
    redraft::sandbox::remove_tree(&root).unwrap();
    assert!(!root.exists());
    // A missing directory is not an error.
    redraft::sandbox::remove_tree(&root).unwrap();
}

#[tokio::test]
async fn memory_is_decided_by_the_kernel_not_by_what_the_program_prints() {
    let Some(sb) = sandbox(10_000) else { return };
    // Says it ran out of memory, but did not.
    let liar = "import sys\nsys.stderr.write('MemoryError: out of memory\\nstd::bad_alloc\\n')\nsys.exit(1)\n";
    let r = python(&sb, liar).await;
    assert_eq!(r.outcome, Outcome::Exited(1), "{r:?}");
    // Really uses more than its 256 MiB.
    let bomb = "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))\n";
    let r = python(&sb, bomb).await;
    if Sandbox::kernel_memory_accounting() {
        assert_eq!(r.outcome, Outcome::MemoryExceeded, "{r:?}");
    } else {
        // The rlimit stopped it; how it ended is all there is to report.
        assert!(!r.success(), "{r:?}");
        assert_ne!(r.outcome, Outcome::MemoryExceeded, "{r:?}");
    }
}

#[tokio::test]
async fn system_calls_a_test_never_needs_are_denied() {
    let Some(sb) = sandbox(10_000) else { return };
    let calls = [
        ("ptrace", libc::SYS_ptrace, "0, 0, 0, 0"),
        (
            "unshare",
            libc::SYS_unshare,
            &format!("{}", libc::CLONE_NEWUSER),
        ),
        ("setns", libc::SYS_setns, "0, 0"),
        ("mount", libc::SYS_mount, "None, None, None, 0, None"),
        ("keyctl", libc::SYS_keyctl, "0, 0, 0, 0, 0"),
        ("add_key", libc::SYS_add_key, "None, None, None, 0, 0"),
        ("bpf", libc::SYS_bpf, "0, None, 0"),
        (
            "perf_event_open",
            libc::SYS_perf_event_open,
            "None, 0, -1, -1, 0",
        ),
        ("userfaultfd", libc::SYS_userfaultfd, "0"),
        (
            "clone(CLONE_NEWNET)",
            libc::SYS_clone,
            &format!("{}", libc::CLONE_NEWNET | libc::SIGCHLD),
        ),
    ];
    let mut code = String::from(
        "import ctypes, os, threading\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\n",
    );
    for (name, nr, args) in &calls {
        code.push_str(&format!(
            "ctypes.set_errno(0)\nr = libc.syscall({nr}, {args})\nprint({name:?}, r, ctypes.get_errno(), flush=True)\n"
        ));
    }
    // What a program does need still works: processes and threads.
    code.push_str("pid = os.fork()\nif pid == 0:\n    os._exit(7)\nprint('fork', os.waitpid(pid, 0)[1] >> 8)\nt = threading.Thread(target=lambda: None)\nt.start()\nt.join()\nprint('thread ok')\n");
    let r = python(&sb, &code).await;
    assert_eq!(r.outcome, Outcome::Exited(0), "{r:?}");
    for (name, _, _) in &calls {
        let line = r
            .stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no line for {name}: {}", r.stdout));
        assert!(
            line.ends_with(" -1 1"),
            "{name} was not denied with EPERM: {line}"
        );
    }
    assert!(r.stdout.contains("fork 7"), "{}", r.stdout);
    assert!(r.stdout.contains("thread ok"), "{}", r.stdout);
}
