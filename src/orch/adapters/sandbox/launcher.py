"""The launcher every agent, gate and deploy command is started through.

It runs as `python -I -S launcher.py [OPTIONS] -- ARGV...` and needs nothing but the standard
library (and of that, little: it is on the path from an event to an agent's start), so it starts
fast and imports nothing an agent could have planted. It:

- makes itself a child subreaper (PR_SET_CHILD_SUBREAPER), so every process the command starts,
  whatever session it makes itself and whatever environment it clears, stays its descendant:
  an orphan is re-parented to the launcher, never to init;
- forks the command; in the child it applies the Landlock ruleset the options describe (write
  only in the `--write` directories, read everything but the `--protect` paths), drops the
  capabilities that would let root step around it, switches to `--user`, then execs the command;
- when the command exits, kills every descendant still alive and exits with the command's
  status (a command killed by a signal makes the launcher die of the same signal);
- on SIGTERM, TERMs every descendant (and CONTs them, so a stopped one acts on it), waits
  `--grace` seconds, then KILLs them all; on SIGUSR1 KILLs them all at once.

Why a subreaper and not a cgroup per run: it needs no privilege and no delegated cgroup tree,
so it works the same for orch as root or as a plain user, on cgroup v1, hybrid and v2 hosts and
inside containers; a process cannot leave the subtree of a subreaper it descends from.

OPTIONS: `--landlock`, then any of `--write DIR`, `--read PATH`, `--protect PATH`,
`--device PATH` (each may repeat), `--grace SECONDS`, `--user UID:GID`, `--not-after EPOCH`.

`--standby` starts a launcher ahead of its command, so that a command starts without waiting
for an interpreter: it reads its request from stdin up to end of file, then runs it as above.
The request is NUL-separated: the working directory, the file for the command's stdin (empty
for /dev/null), the number of environment entries, those `NAME=value` entries, then the options
and `--` and the command. A standby whose stdin ends empty (orch stopped, or died) exits 0.

`--not-after` is for a command that must not run twice (a deploy): the instant, in seconds since
the epoch, until which the lease of the worker starting it surely holds. A worker paused between
renewing its lease and starting the command may have lost the job to another worker that ran
the command already; its launcher, started too late, does not run it (exit 125).
"""

from __future__ import annotations

import _signal as signal  # the C module: `signal` would import enum
import ctypes
import os
import sys
import time

# Landlock's syscall numbers are the same on every architecture Linux gives them to
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_CHILD_SUBREAPER = 36
_PR_SET_DUMPABLE = 4

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
SCOPE_SIGNAL = 1 << 1  # ABI 6: no signal to a process outside the sandbox

FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV
READ_RIGHTS = EXECUTE | READ_FILE | READ_DIR


def _all_rights(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


EXIT_REFUSED = 126  # the sandbox could not be applied: the command did not run
EXIT_LATE = 125  # started after its worker's lease may have run out: the command did not run


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 where Landlock is missing or disabled."""
    try:
        libc = _libc()
        libc.syscall.restype = ctypes.c_long
        abi = int(libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(abi, 0)


def readable_roots(protect: list[str]) -> list[str]:
    """The paths to allow reading so that everything is readable but `protect`: every sibling
    of each protected path and of each of its ancestors. Landlock only adds rights, so a denial
    is the complement of what is granted."""
    protected = {os.path.abspath(p) for p in protect}
    ancestors: set[str] = set()
    for p in protected:
        parent = os.path.dirname(p)
        while True:
            ancestors.add(parent)
            if parent == "/":
                break
            parent = os.path.dirname(parent)
    out: list[str] = []

    def expand(directory: str) -> None:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return
        for name in names:
            path = os.path.join(directory, name)
            if path in protected:
                continue
            if path in ancestors:
                expand(path)
                continue
            if os.path.islink(path):
                # a link is granted as what it points to, unless that is protected ground
                target = os.path.realpath(path)
                if target in protected or target in ancestors or _beneath(target, protected):
                    continue
                path = target
            out.append(path)

    if protected:
        expand("/")
    else:
        out.append("/")
    return out


def _beneath(path: str, roots: set[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


class Spec:
    """What the launcher was told, from its options."""

    def __init__(self, options: list[str]) -> None:
        self.landlock = False
        self.write: list[str] = []
        self.read: list[str] = []
        self.protect: list[str] = []
        self.devices: list[str] = []
        self.grace = 10.0
        self.user: tuple[int, int] | None = None
        self.not_after: float | None = None
        lists = {
            "--write": self.write,
            "--read": self.read,
            "--protect": self.protect,
            "--device": self.devices,
        }
        i = 0
        while i < len(options):
            flag = options[i]
            if flag == "--landlock":
                self.landlock = True
                i += 1
                continue
            if i + 1 >= len(options):
                raise ValueError(f"{flag} needs a value")
            value = options[i + 1]
            if flag in lists:
                lists[flag].append(value)
            elif flag == "--grace":
                self.grace = float(value)
            elif flag == "--user":
                uid, gid = value.split(":")
                self.user = (int(uid), int(gid))
            elif flag == "--not-after":
                self.not_after = float(value)
            else:
                raise ValueError(f"unknown option {flag}")
            i += 2


def restrict(spec: Spec) -> int:
    """Confine this process (and whatever it execs) as `spec` says; returns the ABI used.
    Raises OSError when the kernel refuses."""
    abi = landlock_abi()
    if abi < 1:
        raise OSError("Landlock is not available in this kernel (ABI 0)")
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    handled = _all_rights(abi)
    attr = (ctypes.c_uint64 * 3)(handled, 0, SCOPE_SIGNAL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = int(libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:

        def allow(path: str, rights: int) -> None:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                return  # a path that does not exist grants nothing
            try:
                if not os.path.isdir(path):
                    rights &= FILE_RIGHTS
                rule = _PathBeneath(rights & handled, fd)
                if libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0):
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
            finally:
                os.close(fd)

        for root in readable_roots(spec.protect):
            # devices are granted one by one below: reading a disk would bypass every rule
            allow(root, READ_DIR if root == "/dev" else READ_RIGHTS)
        for path in spec.read:
            allow(path, READ_RIGHTS)
        for path in spec.devices:
            allow(path, READ_RIGHTS | WRITE_FILE | TRUNCATE | IOCTL_DEV)
        for path in spec.write:
            allow(path, handled)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(_RESTRICT_SELF, ruleset, 0):
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return abi


# capabilities that would let a root command step around its confinement: read another
# process's memory and environment, open files by handle, load modules, raw devices, mounts
_DROPPED_CAPS = (2, 12, 16, 17, 19, 21, 22, 25, 27, 32, 33, 34, 38, 39, 40)
_PR_CAPBSET_DROP = 24
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


def drop_capabilities() -> None:
    """Take the dangerous capabilities out of this process's sets and its bounding set, so
    neither it nor anything it execs has them, root or not."""
    libc = _libc()
    for cap in _DROPPED_CAPS:
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL for one the kernel lacks: fine
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data):
        raise OSError(ctypes.get_errno(), "capget failed")
    for cap in _DROPPED_CAPS:
        word, bit = divmod(cap, 32)
        mask = ~(1 << bit) & 0xFFFFFFFF
        data[word].effective &= mask
        data[word].permitted &= mask
        data[word].inheritable &= mask
    if libc.capset(ctypes.byref(header), data):
        raise OSError(ctypes.get_errno(), "capset failed")


# -- the process tree ----------------------------------------------------------------------------


def _parents() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process."""
    out: dict[int, tuple[int, str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(name)] = (int(fields[1]), fields[0])
    return out


def descendants(root: int) -> list[int]:
    """The live (not zombie) processes below `root`."""
    table = _parents()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if table.get(pid, (0, "Z"))[1] != "Z":
            out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


_ended: dict[int, int] = {}  # pid -> wait status of every child the launcher reaped


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _ended[pid] = status


def _signal_all(sig: int) -> int:
    found = descendants(os.getpid())
    for pid in found:
        try:  # noqa: SIM105 - contextlib would cost the launcher's start an import
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    return len(found)


def kill_all() -> None:
    """KILL every descendant until none is left: one that forks while it is being killed is
    found on the next pass, and nothing can leave the subtree of a subreaper."""
    while _signal_all(signal.SIGKILL):
        _reap()
        time.sleep(0.001)
    _reap()


# -- the launcher ----------------------------------------------------------------------------------

_WATCHED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def _resolve(name: str, env: dict[str, str]) -> str:
    """The program `name` names, searched on PATH as execvp would, without the imports
    os.execvp makes (the child may have become a user who cannot read the standard library)."""
    if "/" in name:
        return name
    for directory in env.get("PATH", "/usr/bin:/bin").split(":"):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return name


def _child(spec: Spec, argv: list[str], env: dict[str, str]) -> None:
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores them; the command must not
            signal.signal(sig, signal.SIG_DFL)
        if spec.landlock:
            restrict(spec)
            if os.geteuid() == 0:
                drop_capabilities()
        if spec.user is not None:
            os.setgroups([])
            os.setgid(spec.user[1])
            os.setuid(spec.user[0])
    except OSError as exc:
        os.write(2, f"orch: refusing to run {argv[0]}: it could not be confined: {exc}\n".encode())
        os._exit(EXIT_REFUSED)
    try:
        os.execve(_resolve(argv[0], env), argv, env)
    except OSError as exc:
        os.write(2, f"orch: could not start {argv[0]}: {exc.strerror or exc}\n".encode())
        os._exit(127)


def _standby() -> tuple[list[str], dict[str, str]] | None:
    """Wait for the request on stdin and take its place and stdin; its arguments and
    environment, or None for an empty request."""
    # not dumpable: a process of its user cannot open its stdin through /proc and tell it a
    # command, nor read the request (a run's environment) there; the command it execs is
    # dumpable again
    _libc().prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    chunks = []
    while chunk := os.read(0, 1 << 16):
        chunks.append(chunk)
    if not chunks:
        return None
    fields = [os.fsdecode(f) for f in b"".join(chunks).split(b"\0")]
    cwd, stdin_path, count = fields[0], fields[1], int(fields[2])
    env = dict(entry.partition("=")[::2] for entry in fields[3 : 3 + count])
    os.chdir(cwd)
    fd = os.open(stdin_path or os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    return fields[3 + count :], env


def main(args: list[str]) -> int:
    env = dict(os.environ)
    if args == ["--standby"]:
        try:
            request = _standby()
        except (OSError, ValueError, IndexError) as exc:
            os.write(2, f"orch: could not start the command: {exc}\n".encode())
            return 127
        if request is None:
            return 0
        args, env = request
    try:
        split = args.index("--")
        spec = Spec(args[:split])
    except ValueError as exc:
        os.write(2, f"usage: launcher.py [OPTIONS] -- ARGV...: {exc}\n".encode())
        return 2
    argv = args[split + 1 :]
    if not argv:
        os.write(2, b"usage: launcher.py [OPTIONS] -- ARGV...: no command\n")
        return 2
    if spec.not_after is not None and time.time() > spec.not_after:
        late = time.time() - spec.not_after
        os.write(
            2,
            f"orch: not running {argv[-1][:200]}: started {late:.1f}s after its worker's lease"
            " may have run out\n".encode(),
        )
        return EXIT_LATE
    _libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    pid = os.fork()
    if pid == 0:
        _child(spec, argv, env)
    status: int | None = None
    kill_at: float | None = None
    while status is None:
        timeout = 1.0 if kill_at is None else max(kill_at - time.monotonic(), 0.0)
        info = signal.sigtimedwait(_WATCHED, timeout)
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            _signal_all(signal.SIGTERM)
            # a stopped process acts on its TERM only once it runs again (as systemd does)
            _signal_all(signal.SIGCONT)
            if kill_at is None:
                kill_at = time.monotonic() + spec.grace
        elif (info is not None and info.si_signo == signal.SIGUSR1) or (
            kill_at is not None and time.monotonic() >= kill_at
        ):
            kill_all()
        _reap()
        status = _ended.get(pid)
    kill_all()
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
