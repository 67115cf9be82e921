"""Plain helpers shared by the syncmon tests (fixtures live in conftest.py).

Everything here looks at the process from the outside: /proc, real children,
real signals.  Nothing reaches into syncmon's internals.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

#: Bound for anything that should happen "soon" (a death to be noticed, a
#: thread to finish).  It is never a speed assertion: it is only reached when
#: something hangs, and then it turns a hang into a readable failure.
HANG = 30.0

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "scripts"

SIGNALFD = "anon_inode:[signalfd]"


# --- children -----------------------------------------------------------------

def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def read_all(fd: int) -> str:
    """Read fd to EOF and close it."""
    with open(fd, "rb") as f:
        return f.read().decode()


def spawn_capture(mon, argv, **kwargs):
    """Spawn argv with stdout on a pipe; return (state, stdout text)."""
    r, w = os.pipe()
    try:
        h = mon.spawn(argv, stdout=w, **kwargs)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    out = read_all(r)
    return h.wait(timeout=HANG), out


# --- /proc ----------------------------------------------------------------------

def open_fds() -> dict[int, str]:
    """Our open fds and what they point at.

    listdir() itself opens a directory fd; it is closed again by the time we
    readlink, so it drops out here.
    """
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:
            pass
    return fds


def signalfd_count() -> int:
    return sum(target == SIGNALFD for target in open_fds().values())


def proc_stat(pid: int) -> dict | None:
    """state, ppid, pgrp, session of pid from /proc/<pid>/stat; None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm may contain spaces and parentheses: the fields start after the last ')'
    fields = data[data.rindex(")") + 2:].split()
    return {"state": fields[0], "ppid": int(fields[1]),
            "pgrp": int(fields[2]), "session": int(fields[3])}


def proc_state(pid: int) -> str | None:
    st = proc_stat(pid)
    return st and st["state"]


def our_children() -> dict[int, str]:
    """pid -> state letter for every child process of ours, zombies included."""
    me = os.getpid()
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None and st["ppid"] == me:
                kids[int(name)] = st["state"]
    return kids


def parse_sigset(hex_mask: str) -> set[int]:
    """The signals in a SigBlk/SigIgn/... mask from /proc/<pid>/status."""
    mask = int(hex_mask, 16)
    return {sig + 1 for sig in range(mask.bit_length()) if mask >> sig & 1}


def status_sigset(status_text: str, field: str = "SigBlk") -> set[int]:
    for line in status_text.splitlines():
        if line.startswith(field + ":"):
            return parse_sigset(line.split()[1])
    raise ValueError(f"no {field} line in {status_text!r}")


def has_exited(pid: int) -> bool:
    """True once pid is a zombie or gone (whoever reaped it)."""
    return proc_state(pid) in (None, "Z", "X")


# --- waiting and threads ----------------------------------------------------------

def eventually(predicate, timeout: float = HANG, interval: float = 0.005):
    """Poll predicate() until it is truthy; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def run_in_threads(target, args_list, timeout: float = HANG + 10):
    """Run target(*args) in one thread per args; return results in order.

    Re-raises the first exception a thread raised.  Fails if a thread is still
    running after `timeout`.
    """
    results = [None] * len(args_list)
    errors = []

    def run(i, args):
        try:
            results[i] = target(*args)
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, args), name=f"test-worker-{i}")
               for i, args in enumerate(args_list)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    if errors:
        raise errors[0]
    assert not stuck, f"threads still running after {timeout}s: {stuck}"
    return results


# --- fresh interpreters ---------------------------------------------------------------

# A script must start the way a fresh program does, whatever state the pytest
# process is in: nothing blocked (the pytest main thread may still have SIGCHLD
# blocked from an engine, and a plain fork/exec would hand that on), and a
# watchdog that prints every thread's stack if the script hangs.
_PROLOGUE = """\
import faulthandler, runpy, signal, sys
signal.pthread_sigmask(signal.SIG_SETMASK, ())
faulthandler.dump_traceback_later({watchdog}, exit=True)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def python_env(**changes: str | None) -> dict[str, str]:
    """Our environment, with the repo on PYTHONPATH; a None value unsets a variable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_script(name: str, *args: str, env: dict | None = None,
               timeout: float = HANG + 10, prefix: tuple = ()) -> str:
    """Run tests/scripts/<name> in a fresh interpreter; return its stdout.

    The script reports failure through its exit status; its output is shown
    in the assertion message.
    """
    code = _PROLOGUE.format(watchdog=timeout - 5)
    return _run([*prefix, sys.executable, "-c", code, str(SCRIPTS / name), *args],
                env, timeout)


def run_code(code: str, env: dict | None = None, timeout: float = HANG) -> str:
    """python -c code, verbatim (no prologue); return stdout."""
    return _run([sys.executable, "-c", code], env, timeout)


def _run(cmd: list[str], env: dict | None, timeout: float) -> str:
    # In a session of its own, so that on a hang we can kill whatever the
    # script left behind too (fork children holding our pipes open).
    proc = subprocess.Popen(cmd, env=env or python_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n[killed after {timeout} s]"
    assert proc.returncode == 0, (
        f"{' '.join(cmd[-2:])} exited with {proc.returncode}\n"
        f"--- stdout\n{out}\n--- stderr\n{err}")
    return out
