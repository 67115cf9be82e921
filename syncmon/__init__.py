"""syncmon: watch child processes from threaded Python, without polling and without pid races.

One monitor thread blocks in epoll on a signalfd for SIGCHLD (and on pidfds);
every :class:`ChildHandle` asks the kernel about its own child alone with
``waitid(P_PIDFD / P_PID, WNOHANG)`` and sleeps on the monitor's condition.
Nothing in syncmon ever reaps "any child", so a pid is never used after its
process was reaped.  Importing syncmon starts no thread.
"""

from typing import TYPE_CHECKING

from .child import ChildHandle
from .launch import SpawnOptions
from .monitor import Monitor, adopt, default_monitor, spawn
from .pool import CommandPool
from .popen import Popen
from .state import CLD, ChildState, ReapedElsewhere, ResourceUsage, UncleanExit, W
from .watch import InheritedAcrossFork

if TYPE_CHECKING:
    from .forkserver import ForkServer
    from .process_pool import ProcessPoolExecutor, WorkerDied
    from .tree import ProcessTree, TreeUsage

#: Imported on first use: the fork server, trees and the process pool bring in
#: pickle, sockets and ctypes (about a third of syncmon's import time), which a
#: program that only watches its children need not pay for; ``aio`` brings asyncio.
_LAZY = {
    "ForkServer": ".forkserver",
    "ProcessPoolExecutor": ".process_pool",
    "WorkerDied": ".process_pool",
    "ProcessTree": ".tree",
    "TreeUsage": ".tree",
}

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
    import importlib

    if name == "aio":
        return importlib.import_module(".aio", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # once: later lookups do not come here
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
