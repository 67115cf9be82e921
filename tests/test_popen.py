"""syncmon.Popen: a drop-in subprocess.Popen (issue 3, part 1).

Every test runs real children on the ``monitor`` fixture, in both pidfd modes.
The process-wide default monitor lives for ever, so the one test that needs
it runs in a fresh interpreter.
"""

import contextlib
import gc
import inspect
import os
import platform
import signal
import subprocess
import textwrap
import threading
from unittest import mock

import pytest

import syncmon
from syncmon import CLD, ChildHandle, ChildState, ReapedElsewhere
from helpers import (HANG, eventually, has_exited, our_children, py, run_code, run_in_threads, sh,
                     status_sigset)

SLEEPER = ["sleep", "100"]


def kernel_keeps_exit_status() -> bool:
    """PIDFD_INFO_EXIT (Linux 6.15+): a pidfd still tells the status after somebody else reaped."""
    major, minor = (int(part) for part in platform.release().split(".")[:2])
    return (major, minor) >= (6, 15)


needs_exit_status_recovery = pytest.mark.skipif(
    not kernel_keeps_exit_status(), reason="needs Linux 6.15+ (PIDFD_INFO_EXIT)")


def pidfd_count() -> int:
    fds = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            fds.append(os.readlink(f"/proc/self/fd/{name}"))
    return fds.count("anon_inode:[pidfd]")


def reap_behind_popens_back(p: subprocess.Popen) -> int:
    """Reap p's child with os.waitpid, as unrelated code in the program might.

    The child waits for EOF on its stdin, and we are already blocked in
    waitpid when it gets it, so our reap usually beats syncmon's look; either
    order is legal and the tests accept both.  Returns the status waitpid saw.
    """
    closer = threading.Timer(0.05, p.stdin.close)
    closer.start()
    try:
        pid, status = os.waitpid(p.pid, 0)
    finally:
        closer.join()
    assert pid == p.pid
    return status


def child_sigblk(popen_factory) -> set:
    """The signals blocked in a child made by popen_factory(argv, **kwargs)."""
    p = popen_factory(["grep", "SigBlk", "/proc/self/status"], stdout=subprocess.PIPE, text=True)
    out, _ = p.communicate(timeout=HANG)
    assert p.returncode == 0
    return status_sigset(out)


@contextlib.contextmanager
def waitpid_calls():
    """Record every os.waitpid call as (pid, outcome), passing it on to the real one."""
    real_waitpid = os.waitpid
    calls = []

    def recording_waitpid(pid, options):
        try:
            result = real_waitpid(pid, options)
        except OSError as error:
            calls.append((pid, error))
            raise
        calls.append((pid, result))
        return result

    with mock.patch("os.waitpid", recording_waitpid):
        yield calls


# --- the subprocess.Popen surface -----------------------------------------------------------

def test_is_a_subprocess_popen_with_the_same_signature_plus_keyword_only_monitor():
    assert issubclass(syncmon.Popen, subprocess.Popen)
    ours = inspect.signature(syncmon.Popen).parameters
    theirs = inspect.signature(subprocess.Popen).parameters
    assert list(ours) == [*theirs, "monitor"]
    assert all(ours[name] == theirs[name] for name in theirs)
    assert ours["monitor"].kind is inspect.Parameter.KEYWORD_ONLY
    assert ours["monitor"].default is None


def test_monitor_popen_is_watched_by_that_monitor(monitor):
    before = pidfd_count()
    with monitor.popen(SLEEPER) as p:
        assert isinstance(p, syncmon.Popen)
        # A pidfd monitor opens one for the child; a signalfd one must not.
        assert pidfd_count() - before == (1 if monitor.pidfd else 0)
        p.kill()
    assert p.returncode == -signal.SIGKILL


def test_a_closed_monitor_refuses_to_start_a_popen(monitor):
    with syncmon.Monitor(pidfd=monitor.pidfd) as closed:
        pass
    with pytest.raises(RuntimeError):
        closed.popen(["true"])
    with pytest.raises(RuntimeError):
        syncmon.Popen(["true"], monitor=closed)


def test_popen_without_monitor_uses_the_default_monitor():
    out = run_code(textwrap.dedent("""
        import subprocess, threading, syncmon
        p = syncmon.Popen(["sh", "-c", "echo hi; exit 4"], stdout=subprocess.PIPE)
        out, _ = p.communicate(timeout=20)
        names = {t.name for t in threading.enumerate()}
        print(out.decode().strip(), p.returncode, p.future.result(timeout=20).returncode,
              "syncmon-monitor" in names)
    """)).split()
    assert out == ["hi", "4", "4", "True"]


def test_missing_program_raises_FileNotFoundError(monitor):
    with pytest.raises(FileNotFoundError):
        monitor.popen(["/nonexistent/program"], stdout=subprocess.PIPE)


def test_communicate_through_pipes(monitor):
    p = monitor.popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.communicate(b"hello\n", timeout=HANG) == (b"hello\n", b"")
    assert p.returncode == 0


def test_communicate_in_text_mode(monitor):
    p = monitor.popen(sh("cat; echo err >&2"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True)
    assert p.communicate("a\r\nb\n", timeout=HANG) == ("a\nb\n", "err\n")


def test_communicate_moves_megabytes_both_ways_without_deadlock(monitor):
    data = os.urandom(4 * 1024 * 1024)
    echo_twice = py("import sys; d = sys.stdin.buffer.read(); "
                    "sys.stderr.buffer.write(d); sys.stdout.buffer.write(d)")
    p = monitor.popen(echo_twice, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(data, timeout=HANG)
    assert out == data and err == data
    assert p.returncode == 0


def test_communicate_timeout_then_kill_then_communicate(monitor):
    p = monitor.popen(sh("echo partial; exec sleep 100"), stdout=subprocess.PIPE)
    with pytest.raises(subprocess.TimeoutExpired):
        p.communicate(timeout=0.3)
    p.kill()
    out, _ = p.communicate(timeout=HANG)
    assert out == b"partial\n"  # what was read before the timeout is kept
    assert p.returncode == -signal.SIGKILL


def test_context_manager_waits_and_closes_the_pipes(monitor):
    with monitor.popen(sh("echo hi; exit 3"), stdout=subprocess.PIPE) as p:
        assert p.stdout.read() == b"hi\n"
    assert p.returncode == 3
    assert p.stdout.closed


def test_wait_timeout_raises_TimeoutExpired_and_leaves_the_child_running(monitor):
    p = monitor.popen(SLEEPER)
    with pytest.raises(subprocess.TimeoutExpired) as excinfo:
        p.wait(timeout=0.2)
    assert excinfo.value.timeout == 0.2
    assert p.poll() is None and p.returncode is None
    p.kill()
    assert p.wait(timeout=HANG) == -signal.SIGKILL


def test_poll_is_None_while_running_then_the_returncode(monitor):
    p = monitor.popen(sh("read x; exit 5"), stdin=subprocess.PIPE)
    assert p.poll() is None
    p.stdin.close()
    assert eventually(p.poll) == 5
    assert p.returncode == 5


@pytest.mark.parametrize("send, returncode", [
    (lambda p: p.kill(), -signal.SIGKILL),
    (lambda p: p.terminate(), -signal.SIGTERM),
    (lambda p: p.send_signal(signal.SIGUSR1), -signal.SIGUSR1),
], ids=["kill", "terminate", "send_signal"])
def test_signals_give_the_negative_signal_as_returncode(monitor, send, returncode):
    p = monitor.popen(SLEEPER)
    send(p)
    assert p.wait(timeout=HANG) == returncode
    state = p.future.result(timeout=HANG)
    assert (state.code, state.returncode) == (CLD.KILLED, returncode)
    send(p)  # known dead: a no-op


def test_future_resolves_to_the_death_and_handle_is_a_ChildHandle(monitor):
    p = monitor.popen(sh("exit 4"))
    assert isinstance(p.handle, ChildHandle) and p.handle.pid == p.pid
    state = p.future.result(timeout=HANG)  # nobody waits: the monitor resolves it
    assert isinstance(state, ChildState)
    assert (state.pid, state.code, state.status, state.returncode) == (p.pid, CLD.EXITED, 4, 4)
    assert p.wait(timeout=HANG) == 4


def test_poll_agrees_with_a_resolved_future(monitor):
    """Once p.future says the child died, poll() must not say it is running.
    (Repeated: the monitor thread may still be finishing the record of the death.)"""
    for _ in range(50):
        p = monitor.popen(["true"])
        try:
            p.future.result(timeout=HANG)
            assert p.poll() == 0
        finally:
            p.wait(timeout=HANG)


# --- rule 2: the child's signal mask ---------------------------------------------------------

def test_child_starts_with_SIGCHLD_unblocked(monitor):
    assert signal.SIGCHLD not in child_sigblk(monitor.popen)


def test_child_of_a_thread_that_blocks_SIGCHLD_starts_with_it_unblocked(monitor):
    """Threads started after the engine inherit its blocked SIGCHLD; their children must not."""
    def in_new_thread():
        assert signal.SIGCHLD in signal.pthread_sigmask(signal.SIG_BLOCK, ())
        return child_sigblk(monitor.popen)

    [blocked] = run_in_threads(in_new_thread, [()])
    assert signal.SIGCHLD not in blocked


# --- rule 4: whoever reaps, nobody is told a made-up status ----------------------------------

def test_popen_dropped_while_running_is_reaped_later_by_subprocess_cleanup(monitor):
    p = monitor.popen(SLEEPER)
    pid, handle, future = p.pid, p.handle, p.future
    with pytest.warns(ResourceWarning):
        del p
        gc.collect()
    assert pid in [q.pid for q in subprocess._active]
    with waitpid_calls() as calls:
        handle.terminate()
        state = future.result(timeout=HANG)
        assert (state.code, state.returncode) == (CLD.KILLED, -signal.SIGTERM)
        assert eventually(lambda: subprocess._cleanup() or pid not in our_children())
        subprocess._cleanup()
        subprocess._cleanup()
    assert pid not in [q.pid for q in subprocess._active]
    assert handle.returncode == -signal.SIGTERM
    if monitor.pidfd:
        # Reaped through the pidfd: the pid itself is never asked about.
        assert [call for call in calls if call[0] == pid] == []
        return
    # The raw status of a SIGTERM death is the signal number.
    reaps = [i for i, (who, outcome) in enumerate(calls) if who == pid and outcome == (pid, signal.SIGTERM)]
    assert len(reaps) == 1, calls
    assert [call for call in calls[reaps[0] + 1:] if call[0] == pid] == []


def test_popen_reaping_first_tells_the_handle_and_future(monitor):
    p = monitor.popen(sh("exit 3"))
    assert eventually(lambda: has_exited(p.pid))
    assert p.pid in our_children()  # a zombie: the monitor only looked
    assert p.poll() == 3
    assert p.handle.returncode == 3
    assert p.future.result(timeout=HANG).returncode == 3


@needs_exit_status_recovery
@pytest.mark.parametrize("finish", ["wait", "poll"])
def test_foreign_reap_gives_the_true_status_in_pidfd_mode(finish):
    with syncmon.Monitor(pidfd=True) as monitor:
        p = monitor.popen(sh("read x; exit 5"), stdin=subprocess.PIPE)
        assert os.waitstatus_to_exitcode(reap_behind_popens_back(p)) == 5
        assert (p.wait(timeout=HANG) if finish == "wait" else eventually(p.poll)) == 5
        assert p.returncode == 5
        assert p.future.result(timeout=HANG).returncode == 5


def test_foreign_reap_without_pidfd_is_the_true_status_or_ReapedElsewhere():
    with syncmon.Monitor(pidfd=False) as monitor:
        p = monitor.popen(sh("read x; exit 5"), stdin=subprocess.PIPE)
        reap_behind_popens_back(p)
        try:
            assert p.wait(timeout=HANG) == 5
        except ReapedElsewhere:
            assert p.returncode is None  # never subprocess's invented 0
            assert isinstance(p.future.exception(timeout=HANG), ReapedElsewhere)
        else:
            assert p.future.result(timeout=HANG).returncode == 5


# --- code that mocks os.kill / os.waitpid around a Popen (CPython's test_subprocess style) ----

def test_send_signal_to_a_dead_unreaped_child_does_not_call_os_kill(monitor):
    p = monitor.popen(["true"])
    assert eventually(lambda: has_exited(p.pid))
    with mock.patch("os.kill") as mock_kill:
        p.send_signal(signal.SIGTERM)
    mock_kill.assert_not_called()
    assert p.returncode == 0


def test_send_signal_after_a_foreign_reap_does_not_call_os_kill(monitor):
    """CPython's test_send_signal_race (bpo-38630): the status was read
    behind Popen's back; send_signal must not signal the (free) pid."""
    p = monitor.popen(sh("read x; exit 3"), stdin=subprocess.PIPE)
    reap_behind_popens_back(p)
    with mock.patch("os.kill") as mock_kill:
        p.send_signal(signal.SIGTERM)
    mock_kill.assert_not_called()
    assert p.returncode in ((3,) if monitor.pidfd else (3, None))


def test_send_signal_with_poll_mocked_still_skips_a_known_death(monitor):
    """CPython's test_send_signal_race2 (bpo-40550)."""
    p = monitor.popen(py("exit(1)"))
    assert p.wait(timeout=HANG) == 1
    with mock.patch.object(p, "poll", new=lambda: None), mock.patch("os.kill") as mock_kill:
        p.returncode = None
        p.send_signal(signal.SIGTERM)
    mock_kill.assert_not_called()
    p.kill()


def W_STOPCODE(sig: int) -> int:
    return sig << 8 | 0x7F


@needs_exit_status_recovery
def test_after_a_foreign_reap_popen_never_asks_the_pid_again():
    """CPython's test_stopped (bpo-29335) reaps the real child, then mocks
    waitpid to say that pid stopped, and expects Popen to believe it.  By
    design syncmon.Popen reaps through the pidfd and never asks about a pid
    whose child was reaped elsewhere (the number may be somebody else's): it
    reports the true status instead.  This is the one test of CPython's suite
    that cannot pass (see tests/test_cpython_subprocess.py)."""
    with syncmon.Monitor(pidfd=True) as monitor:
        p = monitor.popen(["true"])
        os.waitpid(p.pid, 0)
        with waitpid_calls() as calls:
            assert p.wait() == 0
        assert calls == []


def test_wait_with_waitpid_mocked_to_report_a_stop_without_pidfds():
    """Without pidfds Popen reaps by pid, as subprocess does (and under its lock)."""
    with syncmon.Monitor(pidfd=False) as monitor:
        p = monitor.popen(["true"])
        assert eventually(lambda: has_exited(p.pid))
        with mock.patch("subprocess.os.waitpid", return_value=(p.pid, W_STOPCODE(3))):
            assert p.wait(timeout=HANG) == -3
        os.waitpid(p.pid, 0)  # the mock kept Popen from reaping the real zombie


# --- threads ----------------------------------------------------------------------------------

def test_many_threads_each_running_popen_and_wait(monitor):
    def run_many(rounds):
        for i in range(rounds):
            p = monitor.popen(["false"] if i % 2 else ["true"])
            assert p.wait(timeout=HANG) == i % 2
            assert p.future.result(timeout=0).returncode == i % 2

    run_in_threads(run_many, [(300,)] * 4, timeout=120)
