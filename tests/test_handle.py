"""ChildHandle: poll, returncode, kill/terminate/killpg, check, context manager, repr."""

import os
import select
import shutil
import signal
import subprocess
import threading
import time

import pytest

from syncmon import CLD, UncleanExit
from faults import sigint_raises_keyboard_interrupt
from helpers import HANG, eventually, has_exited, proc_state, run_script, sh

SLEEPER = ["sleep", "100"]


def test_poll_is_none_while_alive_and_the_state_after_death(monitor):
    h = monitor.spawn(SLEEPER)
    assert h.poll() is None
    assert h.returncode is None
    h.kill()
    assert eventually(h.poll).returncode == -signal.SIGKILL
    assert h.returncode == -signal.SIGKILL


@pytest.mark.parametrize("send, returncode", [
    (lambda h: h.kill(), -signal.SIGKILL),
    (lambda h: h.terminate(), -signal.SIGTERM),
    (lambda h: h.kill(signal.SIGUSR1), -signal.SIGUSR1),
], ids=["kill", "terminate", "kill-sigusr1"])
def test_signals_reach_the_child(monitor, send, returncode):
    h = monitor.spawn(SLEEPER)
    send(h)
    assert h.wait(timeout=HANG).returncode == returncode


def test_killpg_signals_the_whole_session(monitor):
    r, w = os.pipe()
    try:
        h = monitor.spawn(sh("sleep 100 & echo $!; wait"), stdout=w, start_new_session=True)
    finally:
        os.close(w)
    with os.fdopen(r) as out:
        grandchild = int(out.readline())
    gc_fd = os.pidfd_open(grandchild)  # not our child: watch it through a pidfd
    try:
        h.killpg(signal.SIGTERM)
        assert h.wait(timeout=HANG).returncode == -signal.SIGTERM
        assert select.select([gc_fd], [], [], HANG)[0], "grandchild survived killpg"
    finally:
        os.close(gc_fd)


def test_kill_after_death_is_a_noop(monitor):
    h = monitor.spawn(["true"], start_new_session=True)
    h.wait(timeout=HANG)
    h.kill()
    h.terminate()
    h.kill(signal.SIGUSR1)
    h.killpg(signal.SIGTERM)
    assert h.returncode == 0


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_kill_after_reap_never_signals_a_reused_pid(pidfd_mode):
    """Run in a private pid namespace, where ns_last_pid lets us hand the dead
    child's pid to a new process and see whether kill() reaches it."""
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True)
    if probe.returncode:
        pytest.skip(f"cannot make a pid namespace: {probe.stderr.decode().strip()}")
    out = run_script("pid_reuse.py", "pidfd" if pidfd_mode else "signalfd",
                     prefix=("unshare", "--pid", "--fork", "--mount-proc"))
    assert out.strip() == "victim untouched"


def test_check_returns_the_state_of_a_clean_exit(monitor):
    assert monitor.spawn(["true"]).check(timeout=HANG).clean()


@pytest.mark.parametrize("script, returncode", [
    ("exit 3", 3),
    ("kill -KILL $$", -signal.SIGKILL),
])
def test_check_raises_unclean_exit_with_state_and_command(monitor, script, returncode):
    argv = sh(script)
    h = monitor.spawn(argv)
    with pytest.raises(UncleanExit) as info:
        h.check(timeout=HANG)
    err = info.value
    assert isinstance(err, subprocess.CalledProcessError)
    assert err.returncode == err.state.returncode == returncode
    assert err.state.pid == h.pid
    assert err.command == argv


def test_check_that_times_out_terminates_the_child(monitor):
    h = monitor.spawn(SLEEPER)
    with pytest.raises(TimeoutError):
        h.check(timeout=0.2)
    st = h.wait(timeout=HANG)
    assert (st.code, st.status) == (CLD.KILLED, signal.SIGTERM)


def test_check_cut_short_by_ctrl_c_terminates_the_child(monitor):
    # Under nohup (or any parent that ignores or blocks SIGINT) the signal
    # would never become a KeyboardInterrupt: set the disposition up here.
    with sigint_raises_keyboard_interrupt():
        _check_cut_short_by_ctrl_c(monitor)


def _check_cut_short_by_ctrl_c(monitor):
    h = monitor.spawn(SLEEPER)
    checking = threading.Event()

    def press_ctrl_c():
        checking.wait(HANG)
        time.sleep(0.2)  # let the main thread get into check()
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    ctrl_c = threading.Thread(target=press_ctrl_c)
    ctrl_c.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            checking.set()
            h.check()
    finally:
        ctrl_c.join()
    st = h.wait(timeout=HANG)
    assert (st.code, st.status) == (CLD.KILLED, signal.SIGTERM)


def test_leaving_the_with_block_kills_and_reaps_a_live_child(monitor):
    with monitor.spawn(SLEEPER) as h:
        assert h.poll() is None
    assert h.returncode == -signal.SIGKILL
    assert h.future.done()
    assert proc_state(h.pid) is None  # reaped, not a zombie


def test_leaving_the_with_block_on_an_exception_kills_the_child(monitor):
    with pytest.raises(ZeroDivisionError):
        with monitor.spawn(SLEEPER) as h:
            1 / 0
    assert h.returncode == -signal.SIGKILL


def test_leaving_the_with_block_keeps_the_status_of_a_dead_child(monitor):
    with monitor.spawn(sh("exit 3")) as h:
        assert eventually(lambda: has_exited(h.pid))
    assert h.returncode == 3


def test_command_is_the_argv_given_to_spawn(monitor):
    argv = sh("exit 0")
    h = monitor.spawn(argv)
    assert list(h.command) == argv
    h.wait(timeout=HANG)


def test_repr_names_pid_command_and_outcome(monitor):
    h = monitor.spawn(["sleep", "100"])
    alive = repr(h)
    assert str(h.pid) in alive and "sleep" in alive
    h.kill()
    st = h.wait(timeout=HANG)
    dead = repr(h)
    assert dead != alive, "repr does not show that the child died"
    assert str(h.pid) in repr(st) and "KILLED" in repr(st)
