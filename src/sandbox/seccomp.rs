//! The seccomp filter bubblewrap installs just before the sandboxed program
//! starts: defence in depth under the namespaces. It fails, with `EPERM`,
//! the system calls a test program never needs and an escape would: process
//! tracing, mounts, new namespaces, kernel keyrings, bpf, perf events,
//! kernel modules and the like. Everything else is allowed.
//!
//! The filter is classic BPF written out here (a few dozen instructions)
//! rather than through libseccomp, so it needs no C library at build or
//! run time. It checks the architecture first: a call made through another
//! ABI (x32, or 32-bit on a 64-bit kernel) kills the process, since its
//! numbers would mean other calls.

use std::os::fd::{FromRawFd, OwnedFd};

/// The calls the filter fails with `EPERM`, by name (documented in the
/// workflow reference's guarantees table).
pub const DENIED_SYSCALLS: &[&str] = &[
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "unshare",
    "setns",
    "clone (with namespace flags)",
    "clone3",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "syslog",
    "open_by_handle_at",
    "name_to_handle_at",
    "personality",
];

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64

/// Denied calls by number, in the order of [`DENIED_SYSCALLS`] less the
/// two handled apart (clone's flags, clone3).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn denied_numbers() -> Vec<i64> {
    use libc::*;
    vec![
        SYS_ptrace,
        SYS_process_vm_readv,
        SYS_process_vm_writev,
        SYS_mount,
        SYS_umount2,
        SYS_pivot_root,
        SYS_move_mount,
        SYS_open_tree,
        SYS_fsopen,
        SYS_fsmount,
        SYS_fsconfig,
        SYS_fspick,
        SYS_unshare,
        SYS_setns,
        SYS_keyctl,
        SYS_add_key,
        SYS_request_key,
        SYS_bpf,
        SYS_perf_event_open,
        SYS_userfaultfd,
        SYS_kexec_load,
        SYS_kexec_file_load,
        SYS_init_module,
        SYS_finit_module,
        SYS_delete_module,
        SYS_reboot,
        SYS_swapon,
        SYS_swapoff,
        SYS_acct,
        SYS_quotactl,
        SYS_syslog,
        SYS_open_by_handle_at,
        SYS_name_to_handle_at,
        SYS_personality,
    ]
}

// Classic BPF, as in <linux/filter.h> and <linux/seccomp.h>.
const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const RET_K: u16 = 0x06; // BPF_RET | BPF_K
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
// struct seccomp_data: nr @0, arch @4, instruction_pointer @8, args @16.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0_LOW: u32 = 16;

/// Namespace flags of clone(2): CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC,
/// NEWUSER, NEWPID, NEWNET. (CLONE_NEWTIME only works through unshare and
/// clone3, both denied; its bit in clone's flags is the exit signal's.)
const CLONE_NAMESPACES: u32 =
    0x0002_0000 | 0x0200_0000 | 0x0400_0000 | 0x0800_0000 | 0x1000_0000 | 0x2000_0000 | 0x4000_0000;

#[derive(Clone, Copy)]
struct Insn {
    code: u16,
    jt: u8,
    jf: u8,
    k: u32,
}

fn stmt(code: u16, k: u32) -> Insn {
    Insn {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

/// The filter as `struct sock_filter` bytes (bubblewrap's `--seccomp`
/// format), or `None` on architectures it is not written for.
pub(super) fn program() -> Option<Vec<u8>> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        Some(encode(&build(&denied_numbers())))
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        None
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn build(denied: &[i64]) -> Vec<Insn> {
    let eperm = RET_ERRNO | libc::EPERM as u32;
    // clone3 passes its flags in memory a filter cannot read: ENOSYS makes
    // the C library fall back to clone, whose flags are checked.
    let enosys = RET_ERRNO | libc::ENOSYS as u32;
    let mut p = vec![
        stmt(LD_W_ABS, OFF_ARCH),
        jump(JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(RET_K, RET_KILL_PROCESS),
        stmt(LD_W_ABS, OFF_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    {
        // x32 calls carry bit 30; their numbers mean other calls.
        p.push(jump(JGE_K, 0x4000_0000, 0, 1));
        p.push(stmt(RET_K, RET_KILL_PROCESS));
    }
    // Each denied number jumps to the EPERM return placed after the list:
    // the list, then [clone check (4)], then ALLOW, then EPERM.
    let n = denied.len();
    for (i, &nr) in denied.iter().enumerate() {
        let to_eperm = (n - 1 - i) + 6;
        p.push(jump(JEQ_K, nr as u32, to_eperm as u8, 0));
    }
    p.extend([
        jump(JEQ_K, libc::SYS_clone3 as u32, 0, 1),
        stmt(RET_K, enosys),
        jump(JEQ_K, libc::SYS_clone as u32, 0, 2),
        stmt(LD_W_ABS, OFF_ARG0_LOW),
        jump(JSET_K, CLONE_NAMESPACES, 1, 0),
        stmt(RET_K, RET_ALLOW),
        stmt(RET_K, eperm),
    ]);
    p
}

fn encode(program: &[Insn]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(program.len() * 8);
    for i in program {
        bytes.extend_from_slice(&i.code.to_ne_bytes());
        bytes.push(i.jt);
        bytes.push(i.jf);
        bytes.extend_from_slice(&i.k.to_ne_bytes());
    }
    bytes
}

/// A pipe holding `bytes`, write end closed: the read end for bubblewrap.
pub(super) fn pipe_with(bytes: Vec<u8>) -> std::io::Result<OwnedFd> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors from pipe2.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A few hundred bytes: far below the pipe's capacity, so this never blocks.
    let mut file = std::fs::File::from(write);
    std::io::Write::write_all(&mut file, &bytes)?;
    Ok(read)
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tests {
    use super::*;

    /// Runs the filter on one call the way the kernel would.
    fn verdict(program: &[Insn], arch: u32, nr: u32, arg0: u32) -> u32 {
        let mut pc = 0;
        let mut acc = 0u32;
        loop {
            let i = program[pc];
            match i.code {
                LD_W_ABS => {
                    acc = match i.k {
                        OFF_NR => nr,
                        OFF_ARCH => arch,
                        OFF_ARG0_LOW => arg0,
                        k => panic!("unexpected load at {k}"),
                    };
                    pc += 1;
                }
                RET_K => return i.k,
                code => {
                    let taken = match code {
                        JEQ_K => acc == i.k,
                        JGE_K => acc >= i.k,
                        JSET_K => acc & i.k != 0,
                        _ => panic!("unknown instruction {code:#x}"),
                    };
                    pc += 1 + if taken { i.jt } else { i.jf } as usize;
                }
            }
        }
    }

    #[test]
    fn the_filter_denies_exactly_the_listed_calls() {
        let denied = denied_numbers();
        assert_eq!(denied.len() + 2, DENIED_SYSCALLS.len());
        let p = build(&denied);
        let eperm = RET_ERRNO | libc::EPERM as u32;
        for &nr in &denied {
            assert_eq!(verdict(&p, AUDIT_ARCH, nr as u32, 0), eperm, "call {nr}");
        }
        for nr in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_openat,
            libc::SYS_execve,
        ] {
            assert_eq!(
                verdict(&p, AUDIT_ARCH, nr as u32, 0),
                RET_ALLOW,
                "call {nr}"
            );
        }
        // clone: threads and forks pass, new namespaces do not.
        let clone = libc::SYS_clone as u32;
        let thread = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u32;
        assert_eq!(verdict(&p, AUDIT_ARCH, clone, thread), RET_ALLOW);
        assert_eq!(
            verdict(&p, AUDIT_ARCH, clone, libc::SIGCHLD as u32),
            RET_ALLOW
        );
        assert_eq!(
            verdict(&p, AUDIT_ARCH, clone, libc::CLONE_NEWUSER as u32),
            eperm
        );
        assert_eq!(
            verdict(&p, AUDIT_ARCH, clone, libc::CLONE_NEWNET as u32),
            eperm
        );
        assert_eq!(
            verdict(&p, AUDIT_ARCH, libc::SYS_clone3 as u32, 0),
            RET_ERRNO | libc::ENOSYS as u32
        );
        // Another ABI is killed.
        assert_eq!(verdict(&p, 0x4000_0003, 1, 0), RET_KILL_PROCESS);
        assert_eq!(encode(&p).len(), p.len() * 8);
    }
}
