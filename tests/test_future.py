"""ChildHandle.future: resolved by the engine, usable with every futures API."""

import asyncio
import concurrent.futures as cf
import signal
import threading

import pytest

from helpers import HANG, sh

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
