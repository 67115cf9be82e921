"""Monitor.spawn(): what the child gets, and what bad input gets."""

import os
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import (HANG, our_children, py, read_all, run_script, sh,
                     spawn_capture, status_sigset)


def test_env_replaces_the_environment(monitor):
    st, out = spawn_capture(monitor, ["/bin/sh", "-c", 'printf %s "$FOO|${HOME-unset}"'],
                            env={"FOO": "bar"})
    assert (st.returncode, out) == (0, "bar|unset")


def test_env_none_inherits_ours(monitor, monkeypatch):
    monkeypatch.setenv("SYNCMON_TEST_VAR", "inherited")
    _, out = spawn_capture(monitor, sh('printf %s "$SYNCMON_TEST_VAR"'))
    assert out == "inherited"


@pytest.mark.parametrize("as_type", [str, Path])
def test_cwd(monitor, tmp_path, as_type):
    _, out = spawn_capture(monitor, ["pwd", "-P"], cwd=as_type(tmp_path))
    assert out.strip() == str(tmp_path.resolve())


def test_missing_cwd_raises_without_leaking(monitor, tmp_path):
    with pytest.raises(FileNotFoundError):
        monitor.spawn(["true"], cwd=tmp_path / "missing")
    assert our_children() == {}


def test_stdin_from_a_file_and_stdout_to_a_file(monitor, tmp_path):
    (tmp_path / "in").write_text("hello\n")
    with open(tmp_path / "in") as src, open(tmp_path / "out", "w") as dst:
        st = monitor.spawn(["cat"], stdin=src, stdout=dst).wait(timeout=HANG)
    assert st.returncode == 0
    assert (tmp_path / "out").read_text() == "hello\n"


def test_stderr_to_an_fd(monitor):
    r, w = os.pipe()
    try:
        h = monitor.spawn(sh("echo oops >&2"), stderr=w)
    finally:
        os.close(w)
    assert read_all(r) == "oops\n"
    h.wait(timeout=HANG)


STREAMS = ("stdin", "stdout", "stderr")


def report_to(fd: int, expression: str) -> list[str]:
    """A python child that writes repr(expression) to fd (which it must be given)."""
    return py(f"import os; os.write({fd}, repr({expression}).encode())")


@pytest.mark.parametrize("fd", [0, 1, 2], ids=STREAMS)
def test_devnull(monitor, fd):
    r, w = os.pipe()
    try:
        h = monitor.spawn(report_to(w, f"os.readlink('/proc/self/fd/{fd}')"), pass_fds=(w,),
                          **{STREAMS[fd]: subprocess.DEVNULL})
    finally:
        os.close(w)
    assert read_all(r) == repr(os.devnull)
    assert h.wait(timeout=HANG).returncode == 0


def test_start_new_session(monitor):
    _, out = spawn_capture(monitor, py("import os; print(os.getpid(), os.getpgid(0), os.getsid(0))"),
                           start_new_session=True)
    pid, pgid, sid = map(int, out.split())
    assert pid == pgid == sid


def test_process_group_zero_makes_a_new_group_in_our_session(monitor):
    _, out = spawn_capture(monitor, py("import os; print(os.getpid(), os.getpgid(0), os.getsid(0))"),
                           process_group=0)
    pid, pgid, sid = map(int, out.split())
    assert pgid == pid
    assert sid == os.getsid(0)


LIST_FDS = """
import os
fds = {}
for name in os.listdir("/proc/self/fd"):
    try:
        fds[int(name)] = os.readlink("/proc/self/fd/" + name)
    except FileNotFoundError:  # the listdir fd itself
        pass
print(sorted(fds))
"""


def test_child_gets_std_streams_and_pass_fds_only(monitor):
    """Not the engine's signalfd, epoll or pidfds, nor our other fds."""
    unrelated_r, unrelated_w = os.pipe()
    passed_r, passed_w = os.pipe()
    try:
        st, out = spawn_capture(monitor, py(LIST_FDS), pass_fds=(passed_w,),
                                stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        for fd in (unrelated_r, unrelated_w, passed_r, passed_w):
            os.close(fd)
    assert st.returncode == 0
    assert out.strip() == str([0, 1, 2, passed_w])


def test_pass_fds_are_usable_in_the_child(monitor):
    r, w = os.pipe()
    try:
        h = monitor.spawn(report_to(w, "'through'"), pass_fds=(w,))
    finally:
        os.close(w)
    assert read_all(r) == repr("through")
    assert h.wait(timeout=HANG).returncode == 0


def test_child_signal_mask_is_the_one_it_would_have_without_syncmon(pidfd_mode):
    """Rule 2, checked for a spawn from the main thread and from a thread that
    inherited the engine's blocked SIGCHLD; runs in a fresh interpreter whose
    mask before syncmon is known."""
    out = run_script("signal_mask.py", "pidfd" if pidfd_mode else "signalfd")
    assert out.strip() == "ok"


def test_stdlib_subprocess_inside_sigchld_unblocked_gives_the_child_a_normal_mask(monitor):
    """Rule 2 for children another tool starts.  Plain subprocess passes on the
    spawning thread's mask (a documented limit); inside the window the child
    gets the mask it would have without syncmon, and the monitor makes up for
    any SIGCHLD the open window swallowed, so waits still end."""
    monitor.spawn(["true"]).wait(timeout=HANG)  # the engine is certainly running
    with monitor.sigchld_unblocked():
        status = subprocess.run(["cat", "/proc/self/status"], capture_output=True,
                                text=True, check=True).stdout
    assert signal.SIGCHLD not in status_sigset(status)
    assert signal.SIGCHLD in signal.pthread_sigmask(signal.SIG_BLOCK, ())
    assert monitor.spawn(["sh", "-c", "exit 4"]).wait(timeout=HANG).returncode == 4


@pytest.mark.parametrize("argv", [["no-such-program-syncmon"], ["/nonexistent/dir/prog"]])
def test_missing_program_raises_file_not_found_without_leaking(monitor, argv):
    with pytest.raises(FileNotFoundError):
        monitor.spawn(argv)
    assert our_children() == {}


def test_program_without_exec_permission_raises_permission_error(monitor, tmp_path):
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(PermissionError):
        monitor.spawn([str(script)])
    assert our_children() == {}


@pytest.mark.parametrize("argv, error", [
    ([], ValueError),
    (["tr\0ue"], ValueError),
    ([None], TypeError),
    (["true", 1], TypeError),
], ids=["empty", "nul-byte", "none-item", "int-item"])
def test_bad_argv_is_refused(monitor, argv, error):
    with pytest.raises(error):
        monitor.spawn(argv)
    assert our_children() == {}


@pytest.mark.parametrize("stream", STREAMS)
def test_pipe_is_refused(monitor, stream):
    with pytest.raises(ValueError):
        monitor.spawn(["true"], **{stream: subprocess.PIPE})
    assert our_children() == {}
