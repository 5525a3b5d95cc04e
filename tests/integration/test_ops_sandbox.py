"""The unit's sandbox keeps the embedded ClickHouse working: ingestd runs under the same restrictions,
built from systemd/ingestd.service itself, where systemd cannot run the unit (no systemd as PID 1).

Emulated: SystemCallFilter= (with SystemCallErrorNumber=) and RestrictAddressFamilies= as a seccomp
filter from systemd's own syscall groups; ProtectSystem=strict (every mount read-only but the state
directory); PrivateTmp= (fresh /tmp, /var/tmp); PrivateDevices= (a /dev of null, zero, full, random,
urandom, tty); NoNewPrivileges= and an empty CapabilityBoundingSet=; LimitNOFILE=. Not emulated:
DynamicUser= (the test keeps uid 0 without capabilities, because the test's Python lives under /root)
and ProtectHome= for the same reason; the remaining settings concern the kernel, not the process.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import resource
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

if __name__ != "__main__":  # the sandbox stages below run this file as a script, without pytest
    import pytest
    from conftest import DOCUMENT_EXAMPLE, Ingestd
    from test_ops_sdnotify import FakeSystemd
    from test_ops_systemd import analyze  # noqa: F401 - the fixture that installs systemd-analyze if missing

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "ingestd.service"
HERE = Path(__file__).resolve()
FAMILIES = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10}
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def syscall_groups() -> dict[str, list[str]]:
    """systemd's own syscall groups (`systemd-analyze syscall-filter`): @name -> members."""
    text = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(items: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for item in items:
        out |= expand(groups[item], groups) if item.startswith("@") else {item}
    return out


def allowed_syscalls(settings: dict[str, list[str]]) -> set[str]:
    """SystemCallFilter= lines in order: the first allow-list, then ~ lines take away."""
    groups = syscall_groups()
    allowed: set[str] = set()
    for value in settings["SystemCallFilter"]:
        if value.startswith("~"):
            allowed -= expand(value[1:].split(), groups)
        else:
            allowed |= expand(value.split(), groups)
    return allowed | expand(["@default"], groups)


# -- inside the sandbox (run as `python this_file STAGE …` by the test) ----------------------------------
def stage_mounts(state: str, command: list[str]) -> None:
    """In a private mount namespace: PrivateTmp, PrivateDevices, ProtectSystem=strict, LimitNOFILE; then
    drop every capability (NoNewPrivileges, empty bounding set) and go on to the seccomp stage."""
    def mount(*args):
        subprocess.run(["mount", *args], check=True)

    # a checkout under /tmp (CI may clone there) would vanish under the private /tmp: carry it over
    repo = str(HERE.parents[2])
    hidden = repo.startswith(("/tmp/", "/var/tmp/"))
    if hidden:
        stash = os.path.join(state, ".repo")
        os.mkdir(stash)
        mount("--bind", repo, stash)
    for tmp in ("/tmp", "/var/tmp"):
        mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", tmp)
    if hidden:
        os.makedirs(repo)
        mount("--move", stash, repo)
        os.rmdir(stash)
    mount("-t", "tmpfs", "-o", "mode=755,nosuid", "tmpfs", "/dev")
    for name, (major, minor) in DEVICES.items():
        os.mknod(f"/dev/{name}", 0o666 | 0o020000, os.makedev(major, minor))
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"/dev/{name}")
    os.mkdir("/dev/shm", 0o1777)
    mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", "/dev/shm")
    mount("--bind", state, state)
    keep = ("/proc", "/sys", "/dev", "/tmp", "/var/tmp", state)
    for line in open("/proc/self/mountinfo").read().splitlines():
        target = line.split()[4]
        if not any(target == k or target.startswith(k.rstrip("/") + "/") for k in keep):
            subprocess.run(["mount", "-o", "remount,bind,ro", target], check=target == "/")
    # systemd sets it before dropping privileges, as here; a container may cap what even root can set
    limit = min(int(unit_settings()["LimitNOFILE"][0]), resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    os.execvp("setpriv", ["setpriv", "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all",
                          sys.executable, str(HERE), "seccomp", "--", *command])


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


def stage_seccomp(command: list[str]) -> None:
    """SystemCallFilter=, SystemCallErrorNumber=, RestrictAddressFamilies=; then exec the command."""
    settings = unit_settings()
    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(ArgCmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    allow, errno_action = 0x7FFF0000, 0x00050000
    ctx = lib.seccomp_init(errno_action | getattr(errno, settings["SystemCallErrorNumber"][0]))
    socket_nr = lib.seccomp_syscall_resolve_name(b"socket")
    for name in sorted(allowed_syscalls(settings)):
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr >= 0 and nr != socket_nr:
            assert lib.seccomp_rule_add_array(ctx, allow, nr, 0, None) == 0, name
    families = {FAMILIES[f] for v in settings["RestrictAddressFamilies"] for f in v.split()}
    eq = 4  # SCMP_CMP_EQ
    for family in range(0, 64):  # socket(2) only for the listed families; others EAFNOSUPPORT, as systemd does
        action = allow if family in families else errno_action | errno.EAFNOSUPPORT
        cmp = ArgCmp(0, eq, family, 0)
        assert lib.seccomp_rule_add_array(ctx, action, socket_nr, 1, ctypes.byref(cmp)) == 0
    assert lib.seccomp_load(ctx) == 0
    os.execv(command[0], command)


# -- the tests -----------------------------------------------------------------------------------------


def sandbox_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to build the mount namespace"
    for tool in ("unshare", "setpriv", "mount"):
        if not shutil.which(tool):
            return f"{tool} is missing"
    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return "libseccomp.so.2 is missing"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode != 0:
        return "cannot create a mount namespace here: " + probe.stderr.decode().strip()
    return None


def test_embedded_clickhouse_works_inside_the_units_sandbox(tmp_path, analyze):
    reason = sandbox_unavailable()
    if reason:
        pytest.skip(reason)
    state = Path("/var/lib") / f"ingestd-sandbox-test-{uuid.uuid4().hex[:8]}"  # as StateDirectory=
    state.mkdir(mode=0o750)
    systemd = FakeSystemd(f"@ingestd-sandbox-test-{uuid.uuid4().hex}")
    prefix = ["unshare", "--mount", "--propagation", "private", "--", sys.executable, str(HERE), "mounts",
              str(state), "--"]
    server = Ingestd(tmp_path, clickhouse=f"chdb://{state}/clickhouse", spool=state / "spool", prefix=prefix,
                     env={"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "2000000"})
    try:
        server.start()
        systemd.wait_for("READY=1", 60)  # migrations ran inside the sandbox
        beacon = "/api_v3/index.php?service=analytics&action=trackEvent&" + DOCUMENT_EXAMPLE
        for _ in range(20):
            assert server.get(beacon)[0] == 200
        # raw_insert's temp file in the private /tmp, the insert, the views, the query path
        assert server.wait_rows("SELECT count() AS n FROM analytics.events", 20) == 20
        status = open(f"/proc/{server.proc.pid}/status").read()  # the sandbox is really in place
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M) and re.search(r"^Seccomp:\s+2$", status, re.M)
        assert re.search(r"^CapBnd:\s+0+$", status, re.M)
        assert server.stop() == 0
        assert not any('"level": "error"' in line or '"level":"error"' in line for line in server.log_lines), \
            server.log_text()
    finally:
        server.kill()
        systemd.close()
        shutil.rmtree(state, ignore_errors=True)


PROBE = """
import os, socket, errno
out = []
for path in ("/usr/ingestd-probe", "/tmp/probe", sys_state + "/probe"):
    try:
        open(path, "w").close(); out.append("write %s ok" % path)
    except OSError as e:
        out.append("write %s %s" % (path, errno.errorcode[e.errno]))
try:
    os.sched_setaffinity(0, os.sched_getaffinity(0)); out.append("sched_setaffinity ok")
except OSError as e:
    out.append("sched_setaffinity " + errno.errorcode[e.errno])
try:
    os.setpriority(os.PRIO_PROCESS, 0, 5); out.append("setpriority ok")
except OSError as e:
    out.append("setpriority " + errno.errorcode[e.errno])
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW); out.append("netlink ok")
except OSError as e:
    out.append("netlink " + errno.errorcode[e.errno])
carried = sys_repo.split("/")[2] if sys_repo.startswith("/tmp/") else None  # the checkout, carried over
out.append("tmp entries %d" % len([e for e in os.listdir("/tmp") if e != carried]))
print("|".join(out))
"""


def test_the_sandbox_is_not_a_no_op(analyze):
    """The same stages refuse what the unit forbids, so the test above can fail."""
    reason = sandbox_unavailable()
    if reason:
        pytest.skip(reason)
    state = Path("/var/lib") / f"ingestd-sandbox-test-{uuid.uuid4().hex[:8]}"
    state.mkdir(mode=0o750)
    try:
        code = f"sys_state = {str(state)!r}\nsys_repo = {str(HERE.parents[2])!r}\n" + PROBE
        result = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", sys.executable, str(HERE),
                                 "mounts", str(state), "--", sys.executable, "-c", code],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip().split("|") == [
            "write /usr/ingestd-probe EROFS",  # ProtectSystem=strict
            "write /tmp/probe ok",  # PrivateTmp=
            f"write {state}/probe ok",  # StateDirectory=
            "sched_setaffinity EPERM",  # SystemCallFilter=~@resources, SystemCallErrorNumber=EPERM
            "setpriority ok",  # ...but SystemCallFilter=setpriority (--loop-nice) allows it back
            "netlink EAFNOSUPPORT",  # RestrictAddressFamilies=
            "tmp entries 1",  # a fresh /tmp: only the probe's file
        ]
    finally:
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    stage, rest = sys.argv[1], sys.argv[2:]
    if stage == "mounts":
        stage_mounts(rest[0], rest[2:])
    else:
        stage_seccomp(rest[1:])
    sys.exit(1)
