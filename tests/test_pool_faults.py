"""CommandPool under faults (issue 7, items 1-5 and 13): one bad job fails its own
future, never the pool; shutdown touches no descriptor it no longer owns; a
timeout bounds the result even when a grandchild holds the pipes; a thread
limit gives a clear error and the pool recovers.

Real faults only: children that stop reading, undecodable output, RLIMIT_NOFILE,
a pids cgroup, SIGINT.
"""

import errno
import itertools
import math
import os
import resource
import select
import signal
import subprocess
import threading
from pathlib import Path

import pytest

import syncmon
from helpers import HANG, eventually, run_code, sh
from test_pool import Gate, StartLog, gated_command, live_children


@pytest.fixture
def pool(monitor):
    with syncmon.CommandPool(max_running=4, monitor=monitor) as pool:
        yield pool


def still_works(pool):
    """The pool serves the next command as if nothing had happened."""
    result = pool.submit(sh("echo ok; exit 7"), capture_output=True).result(timeout=HANG)
    assert (result.returncode, result.stdout) == (7, b"ok\n")


# --- 1. a child that stops reading its input ------------------------------------------------

@pytest.mark.parametrize("args, size, stdout", [
    (["head", "-c", "1"], 1_000_000, b"x"),
    (["true"], 10_000_000, b""),
], ids=["head", "true"])
def test_a_child_that_stops_reading_input_is_not_an_error(pool, args, size, stdout):
    expected = subprocess.run(args, input=b"x" * size, capture_output=True)
    result = pool.submit(args, input=b"x" * size, capture_output=True).result(timeout=HANG)
    assert (result.returncode, result.stdout) == (expected.returncode, expected.stdout) == (0, stdout)
    still_works(pool)


# --- 2. the pool thread is an exception barrier ---------------------------------------------

def test_undecodable_output_fails_that_job_with_UnicodeDecodeError(pool):
    with pytest.raises(UnicodeDecodeError):
        subprocess.run(["printf", "\\377"], capture_output=True, text=True, encoding="utf-8")
    f = pool.submit(["printf", "\\377"], capture_output=True, text=True, encoding="utf-8")
    assert isinstance(f.exception(timeout=HANG), UnicodeDecodeError)
    still_works(pool)


@pytest.mark.parametrize("kwargs, error", [
    (dict(text=True, encoding="nonexistent-codec"), LookupError),
    (dict(text=True, errors="nonexistent-handler"), LookupError),
    (dict(input="text, but text mode is off"), TypeError),
    (dict(input=123), TypeError),
    (dict(timeout=math.nan), ValueError),
    (dict(timeout="1"), TypeError),
    (dict(timeout=True), TypeError),
    (dict(timeout=-1), ValueError),
], ids=["codec", "errors", "str-input", "int-input", "nan", "str-timeout", "bool-timeout", "negative"])
def test_bad_arguments_raise_at_submit_and_start_nothing(pool, kwargs, error):
    with pytest.raises(error):
        pool.submit(["cat"], capture_output=True, **kwargs)
    assert live_children() == []  # no cat left waiting for input that never comes
    still_works(pool)


@pytest.mark.parametrize("timeout", [30 * 86400, 2_200_000, math.inf], ids=["30-days", "2.2e6", "inf"])
def test_huge_timeouts_wait_as_long_as_none(pool, timeout):
    with Gate() as gate:
        args, kwargs = gated_command(gate, exit_code=5)
        f = pool.submit(args, timeout=timeout, **kwargs)
        also = pool.submit(["true"], timeout=timeout)  # the pool thread sleeps with that deadline
        assert also.result(timeout=HANG).returncode == 0
        gate.release()
        assert f.result(timeout=HANG).returncode == 5


def first_free_fd():
    fd = os.open("/dev/null", os.O_RDONLY)
    os.close(fd)
    return fd


def test_EMFILE_for_the_pipes_fails_that_job_and_the_pool_goes_on(pool):
    assert pool.submit(["true"]).result(timeout=HANG).returncode == 0  # the pool thread runs
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (first_free_fd(), hard))  # no new descriptor at all
    try:
        error = pool.submit(["echo", "hi"], capture_output=True).exception(timeout=HANG)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert isinstance(error, OSError) and error.errno == errno.EMFILE
    still_works(pool)


# --- 3. shutdown is idempotent, and owns what it closes -----------------------------------

def assert_untouched(r, w):
    """The pipe opened between two shutdowns: still open, and nothing was written into it."""
    os.fstat(r), os.fstat(w)
    assert select.select([r], [], [], 0)[0] == []
    os.close(r), os.close(w)


def test_second_shutdown_of_an_unused_pool_touches_no_descriptor(monitor):
    pool = syncmon.CommandPool(monitor=monitor)
    pool.shutdown()
    r, w = os.pipe()  # takes the lowest free numbers: whatever the pool may have freed
    pool.shutdown()
    pool.shutdown(wait=False)
    assert_untouched(r, w)


def test_explicit_shutdown_inside_the_with_block_then_the_block_exit(monitor):
    with syncmon.CommandPool(monitor=monitor) as pool:
        assert pool.submit(["true"]).result(timeout=HANG).returncode == 0
        pool.shutdown()
        r, w = os.pipe()
    pool.shutdown()
    assert_untouched(r, w)
    with pytest.raises(RuntimeError):
        pool.submit(["true"])


def test_shutdown_without_wait_then_with_wait(monitor):
    pool = syncmon.CommandPool(monitor=monitor)
    with Gate() as gate:
        args, kwargs = gated_command(gate, exit_code=2)
        f = pool.submit(args, **kwargs)
        pool.shutdown(wait=False)
        pool.shutdown(wait=False)
        gate.release()
        pool.shutdown(wait=True)
        assert f.result(timeout=0).returncode == 2


# --- 4. a timeout bounds the result when a grandchild holds the pipes ---------------------

class Session:
    """The session a command's shell starts (it writes its pid, the session id, to a
    file): the grandchildren outlive the command (killing the tree is a later issue),
    so the test kills their process group, which the shell led."""

    def __init__(self, tmp_path):
        self.file = tmp_path / "sid"

    def script(self, rest):
        return sh(f"echo $$ > {self.file}; {rest}")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        if self.file.exists():
            try:
                # Our grandchildren hold the group id: it names nobody else.
                os.killpg(int(self.file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("script", [
    "echo partial; sleep 100 & exec sleep 200",
    "echo partial; sleep 100 & sleep 200",
], ids=["exec", "no-exec"])
def test_timeout_with_a_grandchild_holding_the_pipes(pool, tmp_path, script):
    """Before the fix the future waited for EOF, that is for the grandchild."""
    with Session(tmp_path) as session:
        f = pool.submit(session.script(script), capture_output=True, timeout=0.5, start_new_session=True)
        error = f.exception(timeout=HANG)
        assert isinstance(error, subprocess.TimeoutExpired)
        assert (error.timeout, error.stdout) == (0.5, b"partial\n")
        still_works(pool)


def test_leaving_the_with_block_after_a_timeout_does_not_hang(monitor, tmp_path):
    finished = threading.Event()
    futures = []

    def run(session):
        with syncmon.CommandPool(monitor=monitor) as pool:
            futures.append(pool.submit(session.script("sleep 100 & sleep 200"), timeout=0.2,
                                       start_new_session=True, capture_output=True))
        finished.set()

    with Session(tmp_path) as session:
        thread = threading.Thread(target=run, args=(session,))
        thread.start()
        try:
            assert finished.wait(HANG)
            assert isinstance(futures[0].exception(timeout=0), subprocess.TimeoutExpired)
        finally:
            session.__exit__()
            thread.join(HANG)


# --- 5. the pool thread cannot be started ---------------------------------------------------

PIDS_ROOT = Path("/sys/fs/cgroup/pids")
_cgroup_names = itertools.count()

#: Run first in a fresh interpreter: moves it into the pids cgroup {cgroup!r}, and
#: gives it limit(n): no more than n new tasks (threads or processes) from now on.
CGROUP_PROLOGUE = """\
import logging, os, sys, threading
import syncmon
logging.basicConfig(stream=sys.stdout, format="log: %(levelname)s %(message)s")
CGROUP = {cgroup!r}
def write(name, value):
    with open(os.path.join(CGROUP, name), "w") as f:
        f.write(str(value))
def limit(n):
    with open(os.path.join(CGROUP, "pids.current")) as f:
        write("pids.max", int(f.read()) + n)
write("cgroup.procs", os.getpid())
"""


@pytest.fixture
def pids_cgroup(no_leaks):
    """A pids cgroup (v1 controller) of our own, removed afterwards; the code run
    in it by ``run_in`` moves itself in and exits before the removal."""
    if not os.access(PIDS_ROOT, os.W_OK):
        pytest.skip("no writable pids cgroup controller at /sys/fs/cgroup/pids")
    path = PIDS_ROOT / f"syncmon-test-{os.getpid()}-{next(_cgroup_names)}"
    path.mkdir()
    try:
        yield lambda code, timeout=HANG: run_code(CGROUP_PROLOGUE.format(cgroup=str(path)) + code,
                                                  timeout=timeout)
    finally:
        for pid in (path / "cgroup.procs").read_text().split():  # only a hung script's own tasks
            os.kill(int(pid), signal.SIGKILL)
        assert eventually(lambda: not (path / "cgroup.procs").read_text())
        path.rmdir()


def test_pool_thread_that_cannot_start_gives_RuntimeError_and_the_pool_recovers(pids_cgroup):
    out = pids_cgroup("""
with syncmon.Monitor() as mon:
    assert mon.spawn(["true"]).wait(timeout=30).returncode == 0  # the monitor thread runs
    pool, unused = syncmon.CommandPool(monitor=mon), syncmon.CommandPool(monitor=mon)
    limit(0)
    for p in (pool, unused):
        try:
            p.submit(["true"])
        except RuntimeError as error:
            print("refused:", error)
    unused.shutdown()  # not "cannot join thread before it is started"
    unused.shutdown()
    write("pids.max", "max")
    print("then:", pool.submit(["sh", "-c", "exit 3"]).result(timeout=30).returncode)
    pool.shutdown()
    print("threads:", threading.active_count())
""")
    assert out.count("refused: CommandPool could not start its thread") == 2, out
    assert "then: 3" in out


# --- 13. user callbacks and the pool's own notifications ------------------------------------

BLOCKERS = 20  # more than the 16 callback threads there used to be


def test_blocking_user_callbacks_do_not_stall_pool_results_or_each_other(monitor, pool):
    release = threading.Event()
    entered = threading.Semaphore(0)

    def block(_):
        entered.release()
        release.wait(HANG)

    with Gate() as gate:
        args, kwargs = gated_command(gate)
        handles = [monitor.spawn(args, **kwargs) for _ in range(BLOCKERS)]
        pooled = [pool.submit(args, **kwargs) for _ in range(BLOCKERS)]
        for f in [h.future for h in handles] + pooled:
            f.add_done_callback(block)  # before the deaths: on callback threads
        gate.release(2 * BLOCKERS)
    try:
        for _ in range(2 * BLOCKERS):
            assert entered.acquire(timeout=HANG), "a blocked callback held another one back"
        # Every callback so far is blocked: the pool must still deliver, and
        # later callbacks, of handles and of pool futures, still run.
        assert pool.submit(["sh", "-c", "exit 4"]).result(timeout=HANG).returncode == 4
        later = [threading.Event() for _ in range(2)]
        monitor.spawn(["true"]).future.add_done_callback(lambda _: later[0].set())
        pool.submit(["true"]).add_done_callback(lambda _: later[1].set())
        assert all(event.wait(HANG) for event in later)
    finally:
        release.set()


# --- and: SIGINT while waiting for a result; kill() while a command starts -----------------

def test_ctrl_c_in_result_leaves_the_pool_usable(pool):
    assert threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with Gate() as gate, StartLog() as started:
            args, kwargs = gated_command(gate, started, exit_code=6)
            f = pool.submit(args, **kwargs)
            started.wait_for(1)
            timer = threading.Timer(0.2, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
            timer.start()
            try:
                with pytest.raises(KeyboardInterrupt):
                    f.result(timeout=HANG)
            finally:
                timer.join()
            gate.release()
            assert f.result(timeout=HANG).returncode == 6
        still_works(pool)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_kill_while_commands_with_pipes_start(monitor):
    """kill() at every moment of a start (pipes made, child spawned, pipes
    registered): every future resolves, nothing is left behind."""
    with syncmon.CommandPool(max_running=2, monitor=monitor) as pool:
        for _ in range(30):
            f = pool.submit(["cat"], input=b"x" * 200_000, capture_output=True)
            eventually(f.running, interval=0)
            assert pool.kill(f) in (True, False)
            result = f.result(timeout=HANG)
            assert result.returncode in (0, -signal.SIGKILL)
        still_works(pool)
