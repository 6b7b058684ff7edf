//! The hostile-code suite: each program tries to harm the host and must be
//! contained and reported. Needs bubblewrap (`scripts/install-deps.sh`);
//! without it these tests are skipped, unless `REDRAFT_REQUIRE_PEERS=1`
//! (CI), where they fail.

use std::time::{Duration, Instant};

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
    let t = Instant::now();
    let r = python(&sb, "print('started', flush=True)\nwhile True:\n    pass\n").await;
    assert_eq!(r.outcome, Outcome::TimedOut, "{r:?}");
    // What it printed before the limit is kept.
    assert_eq!(r.stdout.trim(), "started");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[tokio::test]
async fn a_fork_bomb_is_contained() {
    let Some(sb) = sandbox(2000) else { return };
    let t = Instant::now();
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
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // Nothing left behind, and the host can still start processes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(host_processes_with("bomb_7f3a"), 0);
    assert!(
        std::process::Command::new("true")
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn a_memory_bomb_is_reported_as_memory() {
    let Some(sb) = sandbox(5000) else { return };
    let r = python(
        &sb,
        "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))\n",
    )
    .await;
    assert_eq!(r.outcome, Outcome::MemoryExceeded, "{r:?}");
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        host_processes_with("31.4159"),
        0,
        "the background process outlived the run"
    );
}

#[tokio::test]
async fn several_programs_run_in_parallel() {
    let Some(sb) = sandbox(10_000) else { return };
    let t = Instant::now();
    let runs = (0..4).map(|i| {
        let sb = sb.clone();
        async move {
            python(
                &sb,
                &format!("import time\ntime.sleep(1.0)\nprint({i} * {i})\n"),
            )
            .await
        }
    });
    let results = futures_util::future::join_all(runs).await;
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.outcome, Outcome::Exited(0), "{r:?}");
        assert_eq!(r.stdout.trim(), (i * i).to_string());
    }
    // Four one-second sleeps overlapped (one after another would take 4 s).
    assert!(
        t.elapsed() < Duration::from_millis(3500),
        "{:?}",
        t.elapsed()
    );
}
