"""ChildHandle.future: resolved by the engine, usable with every futures API."""

import asyncio
import concurrent.futures as cf
import os
import signal
import threading

import pytest

from helpers import HANG, eventually, sh
from test_pool_faults import pids_cgroup  # noqa: F401 - a fixture

SLEEPER = ["sleep", "100"]


def test_future_resolves_with_nobody_waiting(monitor):
    h = monitor.spawn(sh("exit 4"))
    done, _ = cf.wait([h.future], timeout=HANG)
    assert done == {h.future}
    assert h.future.result().returncode == 4
    assert h.returncode == 4  # the handle knows what the engine found
    assert h.poll().returncode == 4


def test_future_works_with_as_completed(monitor):
    handles = [monitor.spawn(sh(f"exit {i}")) for i in range(8)]
    by_future = {h.future: h for h in handles}
    seen = {}
    for fut in cf.as_completed(by_future, timeout=HANG):
        seen[by_future[fut].pid] = fut.result().returncode
    assert seen == {h.pid: i for i, h in enumerate(handles)}


def test_done_callback_gets_the_resolved_future(monitor):
    h = monitor.spawn(SLEEPER)
    called = threading.Event()
    got = []
    h.future.add_done_callback(lambda f: (got.append(f.result()), called.set()))
    h.kill()
    assert called.wait(HANG)
    assert got[0].returncode == -signal.SIGKILL


def test_future_is_running_so_cancel_fails_and_wait_still_works(monitor):
    h = monitor.spawn(SLEEPER)
    assert h.future.running()
    assert h.future.cancel() is False
    assert not h.future.cancelled()
    h.kill()
    assert h.wait(timeout=HANG).returncode == -signal.SIGKILL
    assert h.future.result(timeout=HANG).returncode == -signal.SIGKILL


def test_asyncio_can_await_the_future(monitor):
    h = monitor.spawn(sh("exit 5"))

    async def main():
        return await asyncio.wait_for(asyncio.wrap_future(h.future), HANG)

    assert asyncio.run(main()).returncode == 5


def test_cancelled_asyncio_await_does_not_break_wait(monitor):
    """Cancelling an await cancels the wrapped concurrent future (rule 6)."""
    h = monitor.spawn(SLEEPER)

    async def give_up_early():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.wrap_future(h.future), 0.05)

    asyncio.run(give_up_early())
    h.kill()
    assert h.wait(timeout=HANG).returncode == -signal.SIGKILL
    assert h.future.result(timeout=HANG).returncode == -signal.SIGKILL
    assert monitor.spawn(sh("exit 1")).wait(timeout=HANG).returncode == 1


class Boom(BaseException):
    """Not an Exception: concurrent.futures does not swallow it for us."""


@pytest.mark.parametrize("error", [ValueError, Boom])
def test_raising_callback_does_not_stop_monitoring(monitor, error):
    h = monitor.spawn(SLEEPER)

    def bad_callback(_):
        raise error("callback failed")

    h.future.add_done_callback(bad_callback)
    h.kill()
    assert h.wait(timeout=HANG).returncode == -signal.SIGKILL
    other = monitor.spawn(sh("exit 3"))
    assert other.future.result(timeout=HANG).returncode == 3
    assert other.wait(timeout=HANG).returncode == 3


def test_blocking_callback_does_not_delay_other_children(monitor):
    """A callback parked on an Event must not hold up anyone else's death."""
    h = monitor.spawn(SLEEPER)
    entered, release = threading.Event(), threading.Event()
    h.future.add_done_callback(lambda _: (entered.set(), release.wait(HANG)))
    try:
        h.kill()
        assert entered.wait(HANG), "callback never ran"
        # The callback is now blocked, on whatever thread runs callbacks.
        assert h.wait(timeout=HANG).returncode == -signal.SIGKILL
        other = monitor.spawn(sh("exit 3"))
        assert other.future.result(timeout=HANG).returncode == 3
        assert other.wait(timeout=HANG).returncode == 3
        assert not release.is_set()
    finally:
        release.set()


# --- issue 7: callbacks that raise SystemExit, owner-only resolution, notifiers, thread limits --

def gated(monitor):
    """A child that exits once the returned gate's write end is closed."""
    r, w = os.pipe()
    try:
        return monitor.spawn(sh("read x; exit 0"), stdin=r), w
    finally:
        os.close(r)


@pytest.mark.parametrize("error", [SystemExit, KeyboardInterrupt])
def test_callback_raising_SystemExit_is_logged_and_its_thread_serves_on(monitor, caplog, error):
    ran_on = []

    def bad(_):
        ran_on.append(threading.current_thread())
        raise error("from a callback")

    h, gate = gated(monitor)
    h.future.add_done_callback(bad)
    os.close(gate)
    assert eventually(lambda: [r for r in caplog.records if r.exc_info and r.exc_info[0] is error])
    h2, gate = gated(monitor)
    h2.future.add_done_callback(lambda _: ran_on.append(threading.current_thread()))
    os.close(gate)
    assert eventually(lambda: len(ran_on) == 2)
    assert ran_on[0].is_alive()  # SystemExit did not end it: it idles, waiting for callbacks


@pytest.mark.parametrize("method, args", [
    ("set_result", ("fake",)), ("set_exception", (RuntimeError("fake"),)), ("set_running_or_notify_cancel", ()),
])
def test_only_syncmon_resolves_a_death_future(monitor, method, args):
    h = monitor.spawn(SLEEPER)
    with pytest.raises(RuntimeError, match="resolved by syncmon alone"):
        getattr(h.future, method)(*args)
    assert h.future.running() and not h.future.done()
    h.kill()
    assert h.wait(timeout=HANG).returncode == -signal.SIGKILL
    assert h.future.result(timeout=HANG).returncode == -signal.SIGKILL
    with pytest.raises(RuntimeError):
        getattr(h.future, method)(*args)  # done: still refused, still the true death
    assert h.future.result().returncode == -signal.SIGKILL


def test_notifier_runs_in_the_resolving_thread_and_a_raising_one_is_logged(monitor, caplog):
    h, gate = gated(monitor)
    seen = []

    def bad(_):
        raise ValueError("notifier failed")

    h.future.add_done_notifier(bad)
    h.future.add_done_notifier(lambda f: seen.append((threading.current_thread().name, f.done())))
    os.close(gate)
    assert h.wait(timeout=HANG).returncode == 0
    assert eventually(lambda: seen)
    assert seen[0][1] is True and seen[0][0] in ("MainThread", "syncmon-monitor")  # never a callback thread
    assert [r for r in caplog.records if r.exc_info and r.exc_info[0] is ValueError]
    h.future.add_done_notifier(lambda f: seen.append((threading.current_thread().name, f.done())))
    assert seen[1] == ("MainThread", True)  # already resolved: at once, in this thread


#: Run in a pids cgroup (see test_pool_faults.pids_cgroup): children that exit
#: when their gate closes, and callbacks that record where they ran.
CALLBACK_SCRIPT = """
import time
ran = []
def record(label):
    return lambda _: ran.append((label, threading.current_thread().name))
def gated(mon):
    r, w = os.pipe()
    h = mon.spawn(["sh", "-c", "read x; exit 0"], stdin=r)
    os.close(r)
    return h, w
def settle(n, bound=30):
    # until n callbacks ran (at most bound s), and a little more for a wrong extra run
    deadline = time.monotonic() + bound
    while len(ran) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)
with syncmon.Monitor() as mon:
"""

BUSY_THREAD = """
    busy, release = threading.Event(), threading.Event()
    a, gate_a = gated(mon)
    a.future.add_done_callback(lambda f: (record("a")(f), busy.set(), release.wait(30)))
    b, gate_b = gated(mon)
    b.future.add_done_callback(record("b"))
    os.close(gate_a)
    assert busy.wait(30)
    limit(-1)  # the gated child's exit frees its slot: keep it taken
    os.close(gate_b)
    assert b.wait(timeout=30).returncode == 0
    settle(2, bound=1)  # b must not run (inline) now
    print("while busy:", ran)
    release.set()
    settle(2)
    print("ran:", ran)
"""

NO_THREAD = """
    h, gate = gated(mon)
    h.future.add_done_callback(record("h"))
    limit(-1)  # the gated child's exit frees its slot: keep it taken
    os.close(gate)
    assert h.wait(timeout=30).returncode == 0
    settle(1, bound=1)  # h must not run (inline) now
    print("while none:", ran)
    write("pids.max", "max")
    g, gate = gated(mon)
    g.future.add_done_callback(record("g"))
    os.close(gate)
    settle(2)
    print("ran:", ran)
"""


def test_a_callback_whose_thread_cannot_start_waits_for_the_busy_one(pids_cgroup):
    """At the thread limit: queued for the busy callback thread (logged), never
    run inline on the resolving thread, and run exactly once."""
    out = pids_cgroup(CALLBACK_SCRIPT + BUSY_THREAD)
    assert "log: WARNING no new callback thread" in out, out
    assert "while busy: [('a', 'syncmon-callback')]" in out, out
    assert "ran: [('a', 'syncmon-callback'), ('b', 'syncmon-callback')]" in out, out


def test_a_callback_with_no_callback_thread_at_all_runs_with_the_next_one(pids_cgroup):
    out = pids_cgroup(CALLBACK_SCRIPT + NO_THREAD)
    assert "log: ERROR no callback thread can be started" in out, out
    assert "while none: []" in out, out
    assert "ran: [('h', 'syncmon-callback'), ('g', 'syncmon-callback')]" in out, out
