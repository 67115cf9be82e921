"""syncmon.ForkServer: processes made by a helper that are our own children.

The functions at the top are what the tests run in fork children: the server
loads them by importing this module (it is preloaded, and on the server's
import path, which is ours).
"""

from __future__ import annotations

import errno
import logging
import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from syncmon import ForkServer, Monitor, SpawnOptions, UncleanExit
from syncmon.forkserver import ForkServerError
from faults import is_open
from helpers import HANG, eventually, our_children, proc_stat, python_env, read_all, run_code, run_in_threads, sh, \
    status_sigset

HERE = "test_forkserver"


# --- what fork children run -------------------------------------------------------

def write_facts(path: str) -> None:
    """Record what a fork child sees of itself, for the parent to check."""
    def kill_main() -> None:
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    # Before this function starts a thread of its own: what came in from the server.
    threads, tasks = threading.active_count(), len(os.listdir("/proc/self/task"))
    got = []
    signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
    signal.raise_signal(signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGUSR1)
    t = threading.Thread(target=kill_main)
    t.start()
    t.join()
    deadline = time.monotonic() + HANG
    while len(got) < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    logging.getLogger("forkserver-test").warning("logging works")  # deadlocks if a lock stayed held
    facts = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "random": random.random(),
        "threads": threads,
        "tasks": tasks,
        "signals": len(got),
        "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "sigblk": open("/proc/self/status").read(),
        "main_thread_is_us": threading.main_thread() is threading.current_thread(),
    }
    with open(path, "wb") as f:
        pickle.dump(facts, f)


def exit_with(code: int) -> None:
    sys.exit(code)


def raise_value_error() -> None:
    raise ValueError("raised in the fork child")


def sleep_then_exit(seconds: float, code: int) -> None:
    time.sleep(seconds)
    os._exit(code)


def print_length(data: str) -> None:
    print(len(data), flush=True)


def echo_args(*args: object, **kwargs: object) -> None:
    print(repr((args, kwargs)), flush=True)


# --- fixtures -----------------------------------------------------------------------

@pytest.fixture
def server(monitor):
    with ForkServer(preload=(HERE,), monitor=monitor) as srv:
        yield srv


def facts_of(server: ForkServer, tmp_path, name: str = "facts", **kwargs) -> dict:
    path = str(tmp_path / name)
    h = server.fork(write_facts, path, **kwargs)
    assert h.wait(timeout=HANG).returncode == 0
    with open(path, "rb") as f:
        return pickle.load(f)


def spawn_out(server: ForkServer, argv, **kwargs):
    r, w = os.pipe()
    try:
        h = server.spawn(argv, stdout=w, **kwargs)
    finally:
        os.close(w)
    out = read_all(r)
    return h.wait(timeout=HANG), out


# --- who the parent is, and statuses -----------------------------------------------------

def test_spawned_children_are_ours_with_exact_statuses(server):
    for code in (0, 1, 3, 42, 255):
        state, out = spawn_out(server, sh(f"echo $PPID; exit {code}"))
        assert int(out) == os.getpid()
        assert state.returncode == code


def test_a_live_child_shows_us_as_parent_and_dies_by_signal(server):
    h = server.spawn(["sleep", "100"])
    assert proc_stat(h.pid)["ppid"] == os.getpid()
    assert server.pid != h.pid
    h.kill(signal.SIGTERM)
    assert h.wait(timeout=HANG).returncode == -signal.SIGTERM


def test_fork_statuses(server, capfd):
    assert server.fork(echo_args, 1, key="x").wait(timeout=HANG).returncode == 0
    assert server.fork(exit_with, 5).wait(timeout=HANG).returncode == 5
    assert server.fork(os._exit, 7).wait(timeout=HANG).returncode == 7
    assert server.fork(raise_value_error).wait(timeout=HANG).returncode == 1
    out, err = capfd.readouterr()
    assert out == "((1,), {'key': 'x'})\n"
    assert "ValueError: raised in the fork child" in err and "Traceback" in err


def test_fork_child_is_ours_and_a_sound_interpreter(server, tmp_path):
    a, b = facts_of(server, tmp_path, "a"), facts_of(server, tmp_path, "b")
    for facts in (a, b):
        assert facts["ppid"] == os.getpid()
        assert facts["threads"] == 1 and facts["tasks"] == 1
        assert facts["main_thread_is_us"]
        # raise_signal, kill(getpid()) and pthread_kill of the main thread from another
        # thread: the last needs glibc's cached tid repaired (CLONE_CHILD_SETTID).
        assert facts["signals"] == 3
        assert status_sigset(facts["sigblk"]) == set()
        assert facts["fds"][:3] == [0, 1, 2] and len(facts["fds"]) == 4  # + listdir's own
    assert a["random"] != b["random"]  # reseeded in each child, not the server's state twice


LOCK_HOLDER = """
import logging
logging.getLogger("forkserver-test").addHandler(logging.StreamHandler())
for handler in logging.getLogger("forkserver-test").handlers:
    handler.acquire()          # held by the server's only thread at every fork
logging._lock.acquire()      # the module lock too
"""


def test_logging_locks_held_in_the_server_do_not_deadlock_the_child(monitor, tmp_path, monkeypatch, capfd):
    (tmp_path / "holds_logging_locks.py").write_text(LOCK_HOLDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    with ForkServer(preload=(HERE, "holds_logging_locks"), monitor=monitor) as srv:
        facts = facts_of(srv, tmp_path)
    assert facts["ppid"] == os.getpid()
    assert "logging works" in capfd.readouterr().err


def test_preload_failures_are_clear_at_construction(monitor, tmp_path, monkeypatch):
    with pytest.raises(ForkServerError, match="ModuleNotFoundError"):
        ForkServer(preload=("no_such_module_anywhere",), monitor=monitor)
    (tmp_path / "starts_a_thread.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(100,), daemon=True).start()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ForkServerError, match="single-threaded"):
        ForkServer(preload=("starts_a_thread",), monitor=monitor)


# --- exec failures and hostile arguments ---------------------------------------------------

def test_exec_failures_raise_the_errno_and_leave_no_zombie(server, tmp_path):
    not_executable = tmp_path / "data"
    not_executable.write_text("")
    cases = [
        (["/no/such/program"], {}, FileNotFoundError, "/no/such/program"),
        (["no-such-program-on-path"], {}, FileNotFoundError, "no-such-program-on-path"),
        ([str(not_executable)], {}, PermissionError, str(not_executable)),
        (["true"], {"cwd": str(tmp_path / "missing")}, FileNotFoundError, str(tmp_path / "missing")),
        (["true"], {"cwd": str(not_executable)}, NotADirectoryError, str(not_executable)),
        (["true"], {"env": {"PATH": str(tmp_path)}}, FileNotFoundError, "true"),
    ]
    for argv, kwargs, error, filename in cases:
        with pytest.raises(error) as info:
            server.spawn(argv, **kwargs)
        assert info.value.filename == filename
        assert set(our_children()) == {server.pid}  # the failed child was reaped
    assert spawn_out(server, ["true"])[0].returncode == 0


class Unpicklable:
    def __reduce__(self):
        raise pickle.PicklingError("not this one")


@pytest.mark.parametrize("call, error", [
    (lambda s: s.spawn([]), ValueError),
    (lambda s: s.spawn("a\0b"), ValueError),
    (lambda s: s.spawn([b"ok", 3]), TypeError),
    (lambda s: s.spawn(None), TypeError),
    (lambda s: s.spawn(["true"], env={"A=B": "1"}), ValueError),
    (lambda s: s.spawn(["true"], env={"A": "x\0y"}), ValueError),
    (lambda s: s.spawn(["true"], stdin=subprocess.PIPE), ValueError),
    (lambda s: s.spawn(["true"], stdout=-7), ValueError),
    (lambda s: s.spawn(["true"], stdout="file"), TypeError),
    (lambda s: s.spawn(["true"], stdout=1_000_000), OSError),
    (lambda s: s.spawn(["true"], pass_fds=[999_999]), OSError),
    (lambda s: s.spawn(["true"], pass_fds=[1]), ValueError),
    (lambda s: s.spawn(["true"], pass_fds=["3"]), TypeError),
    (lambda s: s.spawn(["true"], process_group=-1), ValueError),
    (lambda s: s.spawn(["true"], process_group=0, start_new_session=True), ValueError),
    (lambda s: s.spawn(["true"], no_such_option=1), TypeError),
    (lambda s: s.spawn_parsed(SpawnOptions.parse(["true"]), cgroup_fd="3"), TypeError),
    (lambda s: s.spawn(["true"], tree="yes"), TypeError),
    (lambda s: s.spawn(["true"], pass_fds=range(3, 300)), (ValueError, OSError)),
    (lambda s: s.fork(lambda: None), (pickle.PicklingError, AttributeError)),
    (lambda s: s.fork(echo_args, Unpicklable()), pickle.PicklingError),
    (lambda s: s.fork("echo_args"), TypeError),
], ids=["empty", "nul", "item-type", "none", "env-key", "env-nul", "pipe", "negative-fd", "str-fd",
        "closed-fd", "closed-pass-fd", "std-pass-fd", "str-pass-fd", "negative-group", "group-and-session",
        "unknown-option", "str-cgroup", "str-tree", "too-many-fds", "lambda", "unpicklable-arg", "not-callable"])
def test_bad_arguments_are_refused_before_anything_is_sent(server, call, error):
    pid = server.pid
    with pytest.raises(error):
        call(server)
    assert set(our_children()) == {pid}
    assert server.pid == pid  # the server was not disturbed
    assert spawn_out(server, sh("exit 9"))[0].returncode == 9


def test_a_call_the_child_cannot_load_raises_with_its_traceback(server, tmp_path, monkeypatch):
    # Importable here, but not on the import path the server was started with.
    (tmp_path / "only_in_the_client.py").write_text("def f():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_in_the_client

    with pytest.raises(ForkServerError, match="No module named 'only_in_the_client'"):
        server.fork(only_in_the_client.f)
    assert set(our_children()) == {server.pid}
    del sys.modules["only_in_the_client"]


# --- redirections, environment, sessions, descriptors ------------------------------------------

def test_spawn_options(server, tmp_path):
    state, out = spawn_out(server, sh("echo $FOO; pwd; echo err >&2; cat"),
                           env={"FOO": "bar", "PATH": os.environ["PATH"]}, cwd=str(tmp_path),
                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    assert state.returncode == 0
    assert out == f"bar\n{tmp_path}\nerr\n"
    code = "import os; print(os.getsid(0) == os.getpid(), os.getpgid(0) == os.getpid())"
    assert spawn_out(server, [sys.executable, "-c", code], start_new_session=True)[1] == "True True\n"
    assert spawn_out(server, [sys.executable, "-c", code], process_group=0)[1] == "False True\n"


def test_env_none_is_our_environment_now(server, monkeypatch):
    monkeypatch.setenv("SYNCMON_FORKSERVER_PROBE", "set after the server started")
    assert spawn_out(server, sh("echo $SYNCMON_FORKSERVER_PROBE"))[1] == "set after the server started\n"


LIST_FDS = "import os; print(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))"


def test_spawned_program_gets_the_descriptors_monitor_spawn_gives(server, monitor):
    r, w = os.pipe()
    keep = os.dup(r)
    try:
        for fd in (r, w):
            os.set_inheritable(fd, True)  # a careless inheritable descriptor: still not passed
        argv = [sys.executable, "-c", LIST_FDS]
        ours = spawn_out(monitor, argv, pass_fds=[keep])
        theirs = spawn_out(server, argv, pass_fds=[keep])
        assert ours[1] == theirs[1]
        assert str(keep) in theirs[1]
    finally:
        for fd in (r, w, keep):
            os.close(fd)


WRITE_TO = "import os, sys; [os.write(int(fd), b'via-' + fd.encode()) for fd in sys.argv[1:]]"


def test_pass_fds_land_on_their_own_numbers(server):
    """Whatever numbers the server received them at, the child has them at ours."""
    r, w = os.pipe()
    free = [n for n in range(3, 200) if not is_open(n)]
    fds = [os.dup2(w, n) for n in (free[-1], free[0], free[1])]  # high and low, out of order
    try:
        h = server.spawn([sys.executable, "-c", WRITE_TO, *map(str, fds)], pass_fds=fds)
    finally:
        for fd in {w, *fds}:
            os.close(fd)
    assert h.wait(timeout=HANG).returncode == 0
    assert read_all(r) == "".join(f"via-{fd}" for fd in fds)


def test_spawned_children_get_an_empty_mask_and_default_dispositions(server):
    # Our threads block SIGCHLD for the monitor; the child must not inherit that.
    h = server.spawn(["sleep", "100"])
    try:
        assert eventually(lambda: "sleep" in open(f"/proc/{h.pid}/comm").read())
        status = open(f"/proc/{h.pid}/status").read()
        assert status_sigset(status, "SigBlk") == set()
        assert status_sigset(status, "SigIgn") == set()  # not even glibc's 32 and 33
    finally:
        h.kill()
        h.wait(timeout=HANG)


def test_the_server_leaks_no_descriptor(server, tmp_path):
    def server_fds() -> list[str]:
        return sorted(os.listdir(f"/proc/{server.pid}/fd"))

    before = server_fds()
    for _ in range(5):
        spawn_out(server, ["true"], stdin=subprocess.DEVNULL)
        with pytest.raises(FileNotFoundError):
            server.spawn(["/no/such/program"])
        facts_of(server, tmp_path)
    assert server_fds() == before


# --- the server's life ---------------------------------------------------------------------------

def test_closing_the_server_leaves_its_children_running(monitor):
    with ForkServer(monitor=monitor) as srv:
        h = srv.spawn(sh("sleep 0.5; exit 4"))
        g = srv.fork(sleep_then_exit, 0.5, 6)
        server_pid = srv.pid
    assert srv.pid is None
    assert server_pid not in our_children()
    assert h.wait(timeout=HANG).returncode == 4
    assert g.wait(timeout=HANG).returncode == 6
    with pytest.raises(RuntimeError, match="closed"):
        srv.spawn(["true"])


def test_children_outlive_a_killed_server_and_the_next_request_restarts_it(server):
    h = server.spawn(sh("sleep 0.5; exit 11"))
    g = server.fork(sleep_then_exit, 0.5, 12)
    first = server.pid
    os.kill(first, signal.SIGKILL)
    assert eventually(lambda: our_children().get(first) in (None, "Z"))  # dead, reaped or not
    assert spawn_out(server, sh("exit 13"))[0].returncode == 13
    assert server.pid != first
    assert h.wait(timeout=HANG).returncode == 11
    assert g.wait(timeout=HANG).returncode == 12


def test_a_request_in_flight_when_the_server_dies_fails_clearly(server):
    pid = server.pid
    os.kill(pid, signal.SIGSTOP)  # the request waits in the socket, unread
    try:
        assert eventually(lambda: proc_stat(pid)["state"] == "T")
        outcome = []

        def request():
            try:
                outcome.append(server.spawn(["true"]))
            except ForkServerError as error:
                outcome.append(error)

        t = threading.Thread(target=request)
        t.start()
        time.sleep(0.2)
        assert not outcome
    finally:
        os.kill(pid, signal.SIGKILL)
    t.join(HANG)
    assert len(outcome) == 1 and isinstance(outcome[0], ForkServerError), outcome
    assert spawn_out(server, ["true"])[0].returncode == 0  # a new server


class Interrupted(Exception):
    pass


def test_an_interrupted_request_leaves_no_child(server):
    """A signal handler raising while the caller waits for the reply (as Ctrl-C
    would): the child made for it is learned of anyway, killed and reaped."""
    pid = server.pid
    os.kill(pid, signal.SIGSTOP)  # the request waits, unread, until the interruption

    def interrupt(*_):
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, interrupt)
    interrupter = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGUSR1))
    resume = threading.Timer(0.6, os.kill, (pid, signal.SIGCONT))
    try:
        interrupter.start()
        resume.start()
        with pytest.raises(Interrupted):
            server.spawn(["sleep", "100"])
    finally:
        interrupter.join()
        resume.join()
        signal.signal(signal.SIGUSR1, previous)
    assert set(our_children()) == {pid}
    assert spawn_out(server, ["true"])[0].returncode == 0


def test_killing_the_server_under_load_loses_no_child(server):
    """Threads keep asking while the server is SIGKILLed over and over: every
    request either fails with ForkServerError or gives a child whose status is exact."""
    stop = threading.Event()
    kills = []

    def killer():
        while not stop.is_set():
            time.sleep(random.uniform(0.005, 0.05))
            pid = server.pid
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
                except ProcessLookupError:
                    pass

    def worker(n):
        results = []
        for i in range(15):
            code = (n * 15 + i) % 200
            try:
                if i % 2:
                    h = server.fork(os._exit, code)
                else:
                    h = server.spawn(sh(f"exit {code}"))
            except ForkServerError:
                results.append(None)
                continue
            results.append((code, h))
        return results

    k = threading.Thread(target=killer)
    k.start()
    try:
        results = run_in_threads(worker, [(n,) for n in range(4)])
    finally:
        stop.set()
        k.join()
    made = [r for rs in results for r in rs if r is not None]
    assert kills and made
    for code, h in made:
        assert h.wait(timeout=HANG).returncode == code


def test_many_threads_at_once(server):
    def worker(n):
        out = []
        for i in range(10):
            code = n * 10 + i
            h = server.fork(exit_with, code) if (n + i) % 2 else server.spawn(sh(f"exit {code}"))
            stat = proc_stat(h.pid)  # None once the monitor has reaped it
            assert stat is None or stat["ppid"] == os.getpid()
            out.append((code, h))
        return out

    pairs = [p for ps in run_in_threads(worker, [(n,) for n in range(8)]) for p in ps]
    assert len({h.pid for _, h in pairs}) == len(pairs)
    for code, h in pairs:
        assert h.wait(timeout=HANG).returncode == code


def test_large_requests_travel_in_chunks(server, capfd):
    blob = "x" * 1_000_000
    env = {f"BIG{i}": "y" * 100_000 for i in range(8)}  # exec takes at most 128 KiB a string
    state, out = spawn_out(server, sh('printf %s "$BIG0$BIG7" | wc -c'), env={**env, "PATH": os.environ["PATH"]})
    assert int(out) == 200_000
    assert server.fork(print_length, blob).wait(timeout=HANG).returncode == 0
    assert capfd.readouterr().out == f"{len(blob)}\n"


# --- cgroups (CLONE_INTO_CGROUP, for process trees) --------------------------------------------

def _our_cgroup_dir() -> str | None:
    root = "/sys/fs/cgroup/unified"
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                path = root + line[3:].strip().rstrip("/")
                return path if os.access(path, os.W_OK) else None
    return None


def test_children_can_be_born_in_a_cgroup(server, tmp_path):
    parent = _our_cgroup_dir()
    if parent is None or os.geteuid() != 0:
        pytest.skip("no writable cgroup2 directory of ours")
    path = os.path.join(parent, f"syncmon-forkserver-test-{os.getpid()}")
    os.mkdir(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            r, w = os.pipe()
            try:
                h = server.spawn_parsed(SpawnOptions.parse(["cat", "/proc/self/cgroup"], stdout=w), cgroup_fd=fd)
            finally:
                os.close(w)
            out = read_all(r)
            state = h.wait(timeout=HANG)
            assert state.returncode == 0
            assert f"0::{path[len('/sys/fs/cgroup/unified'):]}\n" in out
            g = server._fork(sleep_then_exit, (0.0, 3), {}, fd)
            assert g.wait(timeout=HANG).returncode == 3
            not_a_cgroup, w = os.pipe()
            try:
                with pytest.raises(OSError) as info:
                    server.spawn_parsed(SpawnOptions.parse(["true"]), cgroup_fd=not_a_cgroup)
            finally:
                os.close(not_a_cgroup)
                os.close(w)
            assert info.value.errno == errno.EBADF  # the kernel's answer for a descriptor that is no cgroup
        finally:
            os.close(fd)
    finally:
        assert eventually(lambda: "populated 0" in open(os.path.join(path, "cgroup.events")).read())
        os.rmdir(path)


# --- the default monitor, in a fresh interpreter --------------------------------------------

README_EXAMPLE = textwrap.dedent('''
import os
import syncmon

with syncmon.ForkServer(preload=("json", "decimal")) as server:
    h = server.spawn(["sh", "-c", "echo my parent is $PPID; exit 3"])  # a ChildHandle
    g = server.fork(print, "hello from a fork child", flush=True)     # print(...) in a copy of the server
    k = server.fork(os._exit, 7)
    assert h.wait().returncode == 3
    assert g.future.result().returncode == 0 and k.wait().returncode == 7
    print("we are", os.getpid(), "- the server is", server.pid)
    try:
        server.spawn(["no-such-program"])
    except FileNotFoundError as e:
        print(e)                                                      # nothing left behind
''')  # the README's example, verbatim


def test_readme_example_on_the_default_monitor():
    lines = run_code(README_EXAMPLE, env=python_env()).splitlines()
    ours = lines[2].split()[2]
    assert lines == [f"my parent is {ours}", "hello from a fork child", lines[2],
                     "[Errno 2] No such file or directory: 'no-such-program'"]


# --- pid reuse: a pid namespace with its own low pid_max -------------------------------------

PID_REUSE = textwrap.dedent("""
    import os, random, signal, subprocess, sys, threading
    from syncmon import ForkServer, Monitor, SpawnOptions

    with open("/proc/sys/kernel/pid_max", "w") as f:
        f.write("320")                     # this namespace's own, since Linux 6.14
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write("319")                     # wrap now: from here on every pid is in [300, 320)
    VICTIM = (
        "import signal, sys\\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())\\n"
        "print('ready', flush=True); sys.stdin.read()\\n"
        "print(sorted(int(s) for s in signal.sigpending()))\\n"
    )
    errors, pids, count = [], set(), [0]

    with Monitor() as mon, ForkServer(monitor=mon) as server:
        def worker(n):
            rnd = random.Random(n)
            for i in range(50):
                code = rnd.randrange(256)
                h = server.fork(os._exit, code) if i % 2 else server.spawn(["sh", "-c", f"exit {code}"])
                subprocess.run(["true"])           # a bystander, to take the freed pids
                state = h.wait(timeout=20)
                pids.add(h.pid)
                count[0] += 1
                if state.returncode != code:
                    errors.append(f"pid {h.pid}: expected {code}, got {state}")

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()

        # A handle whose child is gone never signals the pid's next owner.
        h = server.spawn(["true"])
        h.wait(timeout=20)
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(h.pid - 1))
        victim = subprocess.Popen([sys.executable, "-c", VICTIM], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert victim.pid == h.pid, (victim.pid, h.pid)
        assert victim.stdout.readline() == "ready\\n"
        h.kill(); h.terminate(); h.kill(signal.SIGUSR1)
        pending, _ = victim.communicate("", timeout=20)
        if pending.strip() != "[]":
            errors.append(f"signals reached the victim: {pending}")

    assert not errors, errors
    assert len(pids) < count[0], "pids did not come back"
    print("ok", count[0], len(pids))
""")


def test_exact_statuses_under_pid_reuse_in_a_pid_namespace():
    from stress.namespace import unavailable

    why = unavailable()
    if why is not None:
        pytest.skip(f"no pid namespace with its own pid_max: {why}")
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "--",
                           sys.executable, "-c", PID_REUSE],
                          env=python_env(), capture_output=True, text=True, timeout=HANG * 3)
    assert done.returncode == 0, done.stderr
    word, children, distinct = done.stdout.split()
    assert word == "ok" and int(children) == 200 and int(distinct) <= 20


def test_a_fork_child_cannot_use_the_parents_server(server):
    """Its children would be our parent's (CLONE_PARENT), watched by nobody."""
    pid = os.fork()
    if pid == 0:
        try:
            server.spawn(["true"])
        except RuntimeError:
            os._exit(0)
        except BaseException:
            os._exit(2)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert server.spawn(["true"]).wait(timeout=HANG).returncode == 0


def test_spawned_handle_knows_its_command(server):
    h = server.spawn(["sh", "-c", "exit 3"])
    with pytest.raises(UncleanExit) as info:
        h.check(timeout=HANG)
    assert info.value.command == ["sh", "-c", "exit 3"] == h.command
