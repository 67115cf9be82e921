"""The process-wide default monitor (syncmon.spawn / adopt / default_monitor).

It lives as long as the process, so each test runs in a fresh interpreter.
"""

import textwrap

import pytest

from helpers import python_env, run_code, run_script


def run(code, **env):
    return run_code(textwrap.dedent(code), env=python_env(**env)).split()


def test_import_starts_no_thread():
    out = run("""
        import os, threading, syncmon
        print(threading.active_count(), len(os.listdir("/proc/self/task")))
    """)
    assert out == ["1", "1"]


def test_default_monitor_is_started_once_by_racing_threads():
    out = run_script("default_race.py")
    assert out.strip() == "ok"


def test_spawn_and_adopt_use_the_default_monitor():
    out = run("""
        import os, syncmon
        h = syncmon.spawn(["sh", "-c", "exit 3"])
        a = syncmon.adopt(os.posix_spawn("/bin/sh", ["sh", "-c", "exit 4"], os.environ))
        print(h.wait(timeout=10).returncode, a.wait(timeout=10).returncode)
    """)
    assert out == ["3", "4"]


def test_default_and_explicit_monitors_share_one_engine():
    out = run("""
        import os, threading, syncmon
        syncmon.spawn(["true"]).wait(timeout=10)
        with syncmon.Monitor(pidfd=False) as mon:
            mon.spawn(["true"]).wait(timeout=10)
            signalfds = sum(os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[signalfd]"
                            for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}"))
            print(signalfds, threading.active_count())
    """)
    assert out == ["1", "2"]


def test_program_that_never_closes_the_default_monitor_still_exits():
    """The engine thread must not keep the interpreter alive (run_code would time out)."""
    out = run("""
        import os, syncmon
        r, w = os.pipe()
        syncmon.spawn(["sh", "-c", "read x"], stdin=r, stdout=os.open(os.devnull, os.O_WRONLY))
        print("end")  # the child lives until we exit (and w closes); nobody waits for it
    """)
    assert out == ["end"]


@pytest.mark.parametrize("env, expected", [
    ({"SYNCMON_PIDFD": None}, "True"),
    ({"SYNCMON_PIDFD": "0"}, "False"),
], ids=["unset", "zero"])
def test_pidfd_auto_follows_SYNCMON_PIDFD(env, expected):
    out = run("""
        import syncmon
        with syncmon.Monitor() as mon:
            print(mon.pidfd, syncmon.default_monitor().pidfd,
                  syncmon.spawn(["sh", "-c", "exit 2"]).wait(timeout=10).returncode)
    """, **env)
    assert out == [expected, expected, "2"]
