"""The seccomp programs the fork server installs, read back from ``phase-sandboxd --seccomp-program`` and run
in a classic-BPF interpreter for every system call number: each allows exactly its documented list (with the
argument checks), kills everything else, other architectures and x32 calls, and finds any number in a few
comparisons (the kernel emulates a new filter once per number, under a lock, when a worker installs it).

The real kernel's side (a worker really is confined, a forbidden call really kills it) is in
test_confinement.py."""

from __future__ import annotations

import errno
import platform
import re
import signal
import struct
import subprocess
from pathlib import Path

import pytest

from pyphase.sandbox import _server_command

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the expected policies are written with x86_64's system call table"
)

UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_BIT = 0x40000000
KILL, ALLOW, ERRNO = 0x80000000, 0x7FFF0000, 0x00050000
PROT_EXEC, ITIMER_REAL = 4, 0
SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_SPEC_ALLOW = 1, 4
F_GETFL, F_SETFL, F_DUPFD_CLOEXEC = 3, 4, 1030
COMPILER_PID = 4242  # the pid phase-sandboxd puts in the compiler's program it prints

BASE = "read write exit exit_group brk munmap mremap madvise rt_sigreturn clock_gettime clock_getres clock_nanosleep"
BASE += " getrandom futex"
FS = (
    "openat2 close getdents64 fstat newfstatat statx lseek readv writev pread64 pwrite64 preadv pwritev mkdirat"
    " unlinkat renameat renameat2 linkat symlinkat readlinkat utimensat ftruncate fallocate fsync fdatasync"
    " fadvise64 landlock_create_ruleset landlock_add_rule landlock_restrict_self"
)
FAULTS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE}


def syscall_numbers() -> dict[str, int]:
    found = re.findall(r"#define __NR_(\w+)\s+(\d+)", UNISTD.read_text())
    return {name: int(nr) for name, nr in found}


NR = syscall_numbers()
NAME = {nr: name for name, nr in NR.items()}


def program(name: str) -> list[tuple[int, int, int, int]]:
    out = subprocess.run([*_server_command(), "--seccomp-program", name], capture_output=True, check=True).stdout
    assert out and len(out) % 8 == 0, out
    return [struct.unpack_from("=HBBI", out, i) for i in range(0, len(out), 8)]


def run(prog: list[tuple[int, int, int, int]], nr: int, args: tuple[int, ...], arch: int = AUDIT_ARCH_X86_64):
    """-> (the action, how many instructions ran). Only what our programs use is understood."""
    data = struct.pack("=IIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    pc, steps, acc = 0, 0, 0
    while True:
        assert 0 <= pc < len(prog), f"jumped out of the program at {pc}"
        code, jt, jf, k = prog[pc]
        steps += 1
        if code == 0x20:  # BPF_LD | BPF_W | BPF_ABS
            assert k % 4 == 0 and k + 4 <= len(data)
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif code == 0x06:  # BPF_RET | BPF_K
            return k, steps
        elif code == 0x05:  # BPF_JMP | BPF_JA
            pc += 1 + k
        elif code in (0x15, 0x35, 0x25, 0x45):  # JEQ, JGE, JGT, JSET with K
            taken = {0x15: acc == k, 0x35: acc >= k, 0x25: acc > k, 0x45: bool(acc & k)}[code]
            pc += 1 + (jt if taken else jf)
        else:
            raise AssertionError(f"unexpected instruction {code:#x} at {pc}")


def expected(policy: str, nr: int, args: tuple[int, ...]) -> int:
    """The documented policy (csrc/sandbox_seccomp.c's header, docs/SANDBOX.md), written out independently."""
    name = NAME.get(nr)
    a = [x & 0xFFFFFFFF for x in args] + [0] * (6 - len(args))  # the low 32 bits of each of the six
    if name in BASE.split():
        return ALLOW
    if name == "prlimit64":
        return ALLOW if a[0] == 0 else KILL
    if policy == "compiler":
        if name in ("mmap", "mprotect", "rt_sigprocmask", "getpid", "gettid"):
            return ALLOW
        if name == "tgkill":
            return ALLOW if a[0] == COMPILER_PID else KILL
        if name == "ioctl":
            return ERRNO | errno.ENOTTY
        return KILL
    if name in ("mmap", "mprotect"):
        return KILL if a[2] & PROT_EXEC else ALLOW
    if "-timer" in policy:
        if name == "setitimer":
            return ALLOW if a[0] == ITIMER_REAL else KILL
        if name == "rt_sigaction":
            return ALLOW if a[0] in FAULTS else KILL
        if name == "seccomp":
            ok = a[0] == SECCOMP_SET_MODE_FILTER and a[1] in (0, SECCOMP_FILTER_FLAG_SPEC_ALLOW)
            return ALLOW if ok else KILL
    if "-fs" in policy:
        if name == "recvmsg":
            return ALLOW if a[0] == 3 else KILL
        if name == "fcntl":
            return ALLOW if a[1] in (F_GETFL, F_SETFL, F_DUPFD_CLOEXEC) else KILL
        if name in FS.split():
            return ALLOW
    return KILL


ARGUMENTS = [
    (),
    (1, 2, 3),
    (3, F_GETFL),
    (3, F_SETFL, 3),
    (4, F_DUPFD_CLOEXEC),
    (3, 2, PROT_EXEC | 1),
    (0, 0, PROT_EXEC),
    (0, 0, 3),
    (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
    (1 << 32, 1 << 32, (1 << 32) | 3),  # high bits beside allowed low bits
    (SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_SPEC_ALLOW),
    (SECCOMP_SET_MODE_FILTER, 0),
    (SECCOMP_SET_MODE_FILTER, 2),  # TSYNC and the like
    (0, SECCOMP_FILTER_FLAG_SPEC_ALLOW),  # SECCOMP_SET_MODE_STRICT
    *[(int(sig), 0) for sig in FAULTS],
    (int(signal.SIGTERM), 0),
    (COMPILER_PID, 0, 6),
    (COMPILER_PID + 1, 0, 6),
]

POLICIES = ["worker", "worker-fs", "worker-timer", "worker-fs-timer", "compiler"]


@pytest.mark.parametrize("policy", POLICIES)
def test_each_policy_allows_exactly_its_list(policy: str) -> None:
    prog = program(policy)
    assert len(prog) <= 255  # PHASE_SECCOMP_MAX_INSNS
    for nr in range(1024):
        for args in ARGUMENTS:
            action, _ = run(prog, nr, args)
            assert action == expected(policy, nr, args), (policy, nr, args)
            assert run(prog, nr | X32_BIT, args)[0] == KILL  # x32 numbers never reach the search
        assert run(prog, nr, (), arch=AUDIT_ARCH_I386)[0] == KILL


@pytest.mark.parametrize("policy", POLICIES)
def test_any_number_is_found_in_a_few_comparisons(policy: str) -> None:
    """A binary search: at most ~log2(rules) + 4 comparisons to the number's verdict, against one per allowed
    number in a chain (the kernel runs this for each of ~460 numbers when a worker installs its filter)."""
    prog = program(policy)
    assert len(NR) > 300  # the system call table was read
    worst = max(run(prog, nr, ())[1] for nr in range(1024))
    assert worst <= 20, worst


@pytest.mark.parametrize("name", ["everything", "worker-bogus", "workers"])
def test_a_policy_name_it_does_not_know_is_refused(name: str) -> None:
    r = subprocess.run([*_server_command(), "--seccomp-program", name], capture_output=True, text=True)
    assert r.returncode == 2 and f"--seccomp-program {name}" in r.stderr
