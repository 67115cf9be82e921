"""CommandPool: commands as futures of CompletedProcess (issue 3, part 2).

Commands that must stay alive until the test says so block in ``read x`` on
a Gate: a pipe the test writes one line to per command it lets finish.  A
failing test closes the gate on its way out, so no child outlives it.
"""

import os
import sys
import select
import signal
import subprocess
import threading

import pytest

import syncmon
from helpers import HANG, eventually, our_children, sh

MAX_RUNNING = 4


@pytest.fixture
def pool(monitor):
    with syncmon.CommandPool(max_running=MAX_RUNNING, monitor=monitor) as pool:
        yield pool


class Gate:
    """Commands run ``read x`` with ``stdin=gate.r``; each release() lets one finish."""

    def __init__(self):
        self.r, self.w = os.pipe()

    def release(self, n=1):
        os.write(self.w, b"\n" * n)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        os.close(self.w)  # EOF: every command still reading finishes
        os.close(self.r)


class StartLog:
    """A pipe each command writes one line to when it starts (it is their stdout)."""

    def __init__(self):
        self.r, self.w = os.pipe()
        self.count = 0

    def wait_for(self, n):
        while self.count < n:
            assert select.select([self.r], [], [], HANG)[0], f"only {self.count} of {n} commands started"
            self.count += os.read(self.r, 4096).count(b"\n")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        os.close(self.w)
        os.close(self.r)


class Sampler:
    """Measures something over and over in a thread while the block runs."""

    def __init__(self, measure, interval=0.001):
        self.measure, self.interval = measure, interval
        self.values = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-sampler")

    def _run(self):
        while not self._done.wait(self.interval):
            self.values.append(self.measure())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._done.set()
        self._thread.join()


def live_children():
    """Our live children that are commands: not the fork server that starts the
    pool's trees (a child of ours too, with our own interpreter as its program)."""
    return [pid for pid, state in our_children().items() if state not in "ZX" and not _is_python(pid)]


def _is_python(pid):
    try:
        return os.readlink(f"/proc/{pid}/exe") == os.path.realpath(sys.executable)
    except OSError:
        return False  # exited meanwhile


def gated_command(gate, start_log=None, exit_code=0):
    """A command that (tells start_log it started and) waits for the gate: (args, kwargs)."""
    if start_log is None:
        return sh(f"read x; exit {exit_code}"), dict(stdin=gate.r)
    return sh(f"echo; read x; exit {exit_code}"), dict(stdin=gate.r, stdout=start_log.w)


# --- subprocess.run's semantics ----------------------------------------------------------------

def test_submit_returns_a_future_of_CompletedProcess(pool):
    args = sh("echo out; echo err >&2; exit 3")
    result = pool.submit(args, capture_output=True).result(timeout=HANG)
    assert isinstance(result, subprocess.CompletedProcess)
    assert (result.args, result.returncode, result.stdout, result.stderr) == (args, 3, b"out\n", b"err\n")


def test_without_capture_output_nothing_is_captured(pool):
    result = pool.submit(["true"], stdout=subprocess.DEVNULL).result(timeout=HANG)
    assert (result.returncode, result.stdout, result.stderr) == (0, None, None)


def test_text_mode_matches_subprocess_run(pool):
    kwargs = dict(input="h\u00e9llo\r\nw\u00f6rld\n", capture_output=True, text=True, encoding="utf-8")
    expected = subprocess.run(["cat"], **kwargs)
    result = pool.submit(["cat"], **kwargs).result(timeout=HANG)
    assert (result.stdout, result.stderr) == (expected.stdout, expected.stderr)
    assert result.stdout == "h\u00e9llo\nw\u00f6rld\n"


def test_megabytes_of_input_through_cat(pool):
    data = os.urandom(8 * 1024 * 1024)
    result = pool.submit(["cat"], input=data, capture_output=True).result(timeout=HANG)
    assert result.stdout == data


def test_megabytes_on_stdout_and_stderr_at_once_do_not_deadlock(pool):
    """stderr is written first: a reader that drained stdout to EOF before
    looking at stderr would leave the child blocked on a full stderr pipe."""
    size = 3 * 1024 * 1024
    script = f"head -c {size} /dev/zero | tr '\\0' e >&2; head -c {size} /dev/zero | tr '\\0' o"
    result = pool.submit(sh(script), capture_output=True).result(timeout=HANG)
    assert result.stdout == b"o" * size
    assert result.stderr == b"e" * size


def test_check_raises_CalledProcessError_with_the_output(pool):
    args = sh("echo out; echo err >&2; exit 2")
    error = pool.submit(args, capture_output=True, check=True).exception(timeout=HANG)
    assert isinstance(error, subprocess.CalledProcessError)
    assert (error.returncode, error.cmd, error.stdout, error.stderr) == (2, args, b"out\n", b"err\n")


def test_check_passes_a_clean_exit(pool):
    assert pool.submit(["true"], check=True).result(timeout=HANG).returncode == 0


def test_timeout_kills_the_command_and_raises_TimeoutExpired(pool):
    f = pool.submit(sh("echo partial; exec sleep 100"), capture_output=True, timeout=0.5)
    error = f.exception(timeout=HANG)
    assert isinstance(error, subprocess.TimeoutExpired)
    assert error.timeout == 0.5
    assert error.stdout == b"partial\n"
    # The no_leaks fixture proves the child is gone, zombie included.


def test_missing_program_gives_the_future_FileNotFoundError(pool):
    assert isinstance(pool.submit(["/nonexistent/program"]).exception(timeout=HANG), FileNotFoundError)
    assert pool.submit(["true"]).result(timeout=HANG).returncode == 0  # the pool carries on


@pytest.mark.parametrize("keyword", [
    dict(preexec_fn=lambda: None), dict(user="root"), dict(executable="/bin/sh"), dict(close_fds=False),
], ids=lambda kw: next(iter(kw)))
def test_unsupported_keywords_raise_TypeError(pool, keyword):
    with pytest.raises(TypeError):
        pool.submit(["true"], **keyword)


# --- scheduling ----------------------------------------------------------------------------------

def test_never_more_than_max_running_commands_alive(pool):
    """Each command blocks until the test releases it, so the pool runs at its
    limit; a sampler counts our live (non-zombie) children all along."""
    total = 3 * MAX_RUNNING
    with Gate() as gate, StartLog() as started, Sampler(lambda: len(live_children())) as alive:
        args, kwargs = gated_command(gate, started)
        futures = [pool.submit(args, **kwargs) for _ in range(total)]
        for released in range(total - MAX_RUNNING + 1):
            started.wait_for(released + MAX_RUNNING)
            assert started.count - released == MAX_RUNNING
            assert len(live_children()) == MAX_RUNNING
            gate.release()
        gate.release(MAX_RUNNING - 1)  # the last ones
        assert [f.result(timeout=HANG).returncode for f in futures] == [0] * total
    assert max(alive.values) <= MAX_RUNNING


def test_cancel_a_queued_command_and_it_never_starts(monitor, tmp_path):
    marker = tmp_path / "started"
    with syncmon.CommandPool(max_running=1, monitor=monitor) as pool, Gate() as gate:
        args, kwargs = gated_command(gate)
        running = pool.submit(args, **kwargs)
        queued = pool.submit(["touch", str(marker)])
        assert eventually(running.running)
        assert running.cancel() is False
        assert queued.cancel() is True
        gate.release()
        assert running.result(timeout=HANG).returncode == 0
    assert queued.cancelled()
    assert not marker.exists()


def test_kill_stops_a_running_command(monitor):
    with syncmon.CommandPool(max_running=1, monitor=monitor) as pool, Gate() as gate, StartLog() as started:
        args, kwargs = gated_command(gate, started)
        f = pool.submit(args, **kwargs)
        started.wait_for(1)
        assert pool.kill(f) is True
        assert f.result(timeout=HANG).returncode == -signal.SIGKILL
        assert pool.kill(f) is False  # finished


def test_kill_right_after_the_future_starts_running_kills_the_command(monitor):
    """The future is RUNNING (cancel() refuses) before its child exists: kill()
    must not report the command as finished in that window, nor let it run on."""
    with syncmon.CommandPool(max_running=1, monitor=monitor) as pool, Gate() as gate:
        args, kwargs = gated_command(gate)
        for _ in range(20):
            f = pool.submit(args, **kwargs)
            assert eventually(f.running, interval=0)
            assert pool.kill(f) is True
            assert f.result(timeout=HANG).returncode == -signal.SIGKILL


def test_kill_of_a_queued_command_cancels_it(monitor):
    with syncmon.CommandPool(max_running=1, monitor=monitor) as pool, Gate() as gate:
        args, kwargs = gated_command(gate)
        running = pool.submit(args, **kwargs)
        queued = pool.submit(["true"])
        assert pool.kill(queued) is True
        assert queued.cancelled()
        gate.release()
        assert running.result(timeout=HANG).returncode == 0


def test_map_yields_results_in_submission_order(pool):
    # The later commands finish first.
    commands = [sh(f"sleep 0.{4 - i}; echo {i}") for i in range(4)]
    results = pool.map(commands, capture_output=True, text=True)
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n", "3\n"]


def test_shutdown_waits_for_running_and_queued_commands(monitor):
    pool = syncmon.CommandPool(max_running=1, monitor=monitor)
    futures = [pool.submit(sh(f"exit {i}")) for i in range(5)]
    pool.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result().returncode for f in futures] == [0, 1, 2, 3, 4]


def test_shutdown_with_cancel_futures_cancels_the_queue_and_waits_for_the_running(monitor, tmp_path):
    pool = syncmon.CommandPool(max_running=1, monitor=monitor)
    with Gate() as gate:
        args, kwargs = gated_command(gate, exit_code=4)
        running = pool.submit(args, **kwargs)
        queued = [pool.submit(["touch", str(tmp_path / str(i))]) for i in range(3)]
        assert eventually(running.running)
        shutdown = threading.Thread(target=pool.shutdown, kwargs=dict(wait=True, cancel_futures=True))
        shutdown.start()
        try:
            assert eventually(lambda: all(f.cancelled() for f in queued))
            assert shutdown.is_alive()  # waiting for the running command
            gate.release()
            shutdown.join(HANG)
            assert not shutdown.is_alive()
        finally:
            gate.release()
            shutdown.join(HANG)
    assert running.result(timeout=0).returncode == 4
    assert list(tmp_path.iterdir()) == []


def test_submit_after_shutdown_raises_RuntimeError(monitor):
    pool = syncmon.CommandPool(monitor=monitor)
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.submit(["true"])


# --- scale and callbacks -------------------------------------------------------------------------

def test_thousands_of_commands_need_a_constant_handful_of_threads(pool):
    with Sampler(threading.active_count, interval=0.005) as threads:
        futures = [pool.submit(["true"]) for _ in range(3000)]
        assert all(f.result(timeout=HANG).returncode == 0 for f in futures)
    assert threads.values and max(threads.values) < 25


def test_a_blocking_done_callback_does_not_hold_back_other_futures(pool):
    entered, release = threading.Event(), threading.Event()
    with Gate() as gate:
        args, kwargs = gated_command(gate)
        first = pool.submit(args, **kwargs)  # cannot finish before the callback is added
        first.add_done_callback(lambda _: (entered.set(), release.wait(HANG)))
        gate.release()
        try:
            assert entered.wait(HANG)
            others = [pool.submit(sh(f"exit {i}")) for i in range(4)]
            called = threading.Event()
            others[-1].add_done_callback(lambda _: called.set())
            assert [f.result(timeout=HANG).returncode for f in others] == [0, 1, 2, 3]
            assert called.wait(HANG)
            assert not release.is_set()  # all of that while the first callback still blocked
        finally:
            release.set()
