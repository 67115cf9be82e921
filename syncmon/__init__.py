"""syncmon: watch child processes from threaded Python, without polling and without pid races.

One monitor thread blocks in epoll on a signalfd for SIGCHLD (and on pidfds);
every :class:`ChildHandle` asks the kernel about its own child alone with
``waitid(P_PIDFD / P_PID, WNOHANG)`` and sleeps on the monitor's condition.
Nothing in syncmon ever reaps "any child", so a pid is never used after its
process was reaped.  Importing syncmon starts no thread.
"""

from .child import ChildHandle
from .forkserver import ForkServer
from .launch import SpawnOptions
from .monitor import Monitor, adopt, default_monitor, spawn
from .state import CLD, ChildState, ReapedElsewhere, ResourceUsage, UncleanExit, W
from .watch import InheritedAcrossFork
from .pool import CommandPool
from .popen import Popen
from .process_pool import ProcessPoolExecutor, WorkerDied
from .tree import ProcessTree, TreeUsage

__all__ = [
    "CLD",
    "ChildHandle",
    "ChildState",
    "CommandPool",
    "ForkServer",
    "InheritedAcrossFork",
    "Monitor",
    "Popen",
    "ProcessPoolExecutor",
    "ProcessTree",
    "ReapedElsewhere",
    "ResourceUsage",
    "SpawnOptions",
    "TreeUsage",
    "UncleanExit",
    "W",
    "WorkerDied",
    "adopt",
    "default_monitor",
    "spawn",
]


def __getattr__(name: str) -> object:
    # ``syncmon.aio`` imports asyncio, which a threaded program need not pay for.
    if name == "aio":
        import importlib

        return importlib.import_module(".aio", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
