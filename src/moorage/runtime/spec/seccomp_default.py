"""Moorage's RuntimeDefault seccomp profile, as data.

An allowlist in the spirit of Docker's and containerd's defaults: anything not listed fails with EPERM. Rules may
be limited to architectures (``arches``, by ``platform.machine()`` name) or to containers holding a capability
(``caps``); :mod:`.seccomp` resolves those into a plain OCI ``linux.seccomp`` object.

What is left out, and why: kernel module, kexec, reboot, swap, clock setting, accounting and quota calls (host-wide
effects), keyctl and friends (keyrings are not namespaced), ptrace's cousins process_vm_* without CAP_SYS_PTRACE,
perf and bpf without their capabilities, mount/unshare/setns and namespace-creating clone flags without
CAP_SYS_ADMIN, userfaultfd, and the obsolete or dangerous (uselib, nfsservctl, vm86, lookup_dcookie...).
"""

from __future__ import annotations

from typing import Any

ENOSYS = 38
EPERM = 1

# Namespace flags of clone(2): CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET.
CLONE_NAMESPACE_FLAGS = 0x7E020000

ARCHITECTURES: dict[str, list[str]] = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


ALLOWED: tuple[str, ...] = _words(
    """
    accept accept4 access adjtimex alarm bind brk cachestat capget capset chdir chmod chown chown32
    clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep
    clock_nanosleep_time64 close close_range connect copy_file_range creat dup dup2 dup3
    epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old
    eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64 fallocate
    fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr
    flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
    ftruncate64 futex futex_requeue futex_time64 futex_wait futex_waitv futex_wake futimesat getcpu getcwd
    getdents getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer
    getpeername getpgid getpgrp getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32
    getrlimit get_robust_list getrusage getsid getsockname getsockopt get_thread_area gettid gettimeofday getuid
    getuid32 getxattr inotify_add_watch inotify_init inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy
    io_getevents io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup io_submit
    ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown lchown32 lgetxattr link linkat
    listen listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 madvise membarrier memfd_create
    memfd_secret mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr
    mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink mremap
    msgctl msgget msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at nanosleep newfstatat _newselect
    open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll
    ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64
    pwritev pwritev2 read readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
    remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending
    rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
    rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam sched_get_priority_max
    sched_get_priority_min sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
    sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp select semctl semget
    semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32
    setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid setregid32
    setresgid setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid setsockopt
    set_thread_area set_tid_address setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack
    signalfd signalfd4 sigprocmask sigreturn socketcall socketpair splice stat stat64 statfs statfs64 statx
    symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete
    timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime
    timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname
    unlink unlinkat utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
    """
)

# (syscalls, rule fields) pairs; rule fields may carry "arches" or "caps" (all must hold) besides OCI fields.
CONDITIONAL: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    # socket(2) for every family but AF_VSOCK (40), which reaches the host.
    (("socket",), {"args": [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]}),
    # personality(2) only to query and to the harmless Linux personas.
    *(
        (("personality",), {"args": [{"index": 0, "value": persona, "op": "SCMP_CMP_EQ"}]})
        for persona in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
    ),
    (("arch_prctl", "modify_ldt"), {"arches": ["x86_64"]}),
    (
        ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"),
        {"arches": ["aarch64"]},
    ),
    # clone(2) without namespace flags (its flags are argument 0 on x86_64 and arm64).
    (
        ("clone",),
        {
            "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
            "not_caps": ["CAP_SYS_ADMIN"],
        },
    ),
    # clone3 takes its flags in a struct seccomp cannot see: ENOSYS makes libc fall back to clone.
    (("clone3",), {"action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS, "not_caps": ["CAP_SYS_ADMIN"]}),
    (
        (
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ),
        {"caps": ["CAP_SYS_ADMIN"]},
    ),
    (("reboot",), {"caps": ["CAP_SYS_BOOT"]}),
    (("chroot",), {"caps": ["CAP_SYS_CHROOT"]}),
    (("delete_module", "init_module", "finit_module"), {"caps": ["CAP_SYS_MODULE"]}),
    (("acct",), {"caps": ["CAP_SYS_PACCT"]}),
    (
        ("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"),
        {
            "caps": ["CAP_SYS_PTRACE"],
        },
    ),
    (("iopl", "ioperm"), {"caps": ["CAP_SYS_RAWIO"], "arches": ["x86_64"]}),
    (("settimeofday", "stime", "clock_settime", "clock_settime64"), {"caps": ["CAP_SYS_TIME"]}),
    (("vhangup",), {"caps": ["CAP_SYS_TTY_CONFIG"]}),
    (("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"), {"caps": ["CAP_SYS_NICE"]}),
    (("syslog",), {"caps": ["CAP_SYSLOG"]}),
    (("bpf",), {"caps": ["CAP_BPF"]}),
    (("perf_event_open",), {"caps": ["CAP_PERFMON"]}),
)
