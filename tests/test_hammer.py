"""Races repeated until they would show: thousands of short children."""

import pytest

from helpers import HANG, run_in_threads, sh

pytestmark = [pytest.mark.hammer, pytest.mark.timeout(300)]

TRUE = ["true"]


def spawn_and_wait(monitor, rounds):
    for _ in range(rounds):
        assert monitor.spawn(TRUE).wait(timeout=HANG).returncode == 0


def test_lone_thread_spawning_and_waiting_never_sleeps_through_a_death(monitor):
    """If wait() read the generation after waitid(), a SIGCHLD landing between
    the two would be slept through; with one thread nothing else wakes it."""
    spawn_and_wait(monitor, 1000)


def test_four_threads_spawning_and_waiting(monitor):
    run_in_threads(spawn_and_wait, [(monitor, 1000)] * 4, timeout=250)


def test_many_threads_waiting_on_one_child_again_and_again(monitor):
    for i in range(200):
        h = monitor.spawn(sh(f"exit {i % 4}"))
        codes = run_in_threads(lambda: h.wait(timeout=HANG).returncode, [()] * 16)
        assert codes == [i % 4] * 16


def test_kill_racing_with_death_never_raises(monitor):
    """kill() must be serialised with the reap: a kill() after the reap would
    hit a free pid (ProcessLookupError) or, worse, a reused one."""
    def kill_as_it_dies(rounds):
        for _ in range(rounds):
            h = monitor.spawn(TRUE)
            h.kill()
            assert h.wait(timeout=HANG).returncode in (0, -9)
            h.kill()

    run_in_threads(kill_as_it_dies, [(1500,)] * 3, timeout=250)
