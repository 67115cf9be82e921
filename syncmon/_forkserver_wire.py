"""What the fork server and its clients say to each other, and how.

Two kinds of ``AF_UNIX``/``SOCK_SEQPACKET`` sockets (message boundaries kept,
descriptors passed with ``SCM_RIGHTS``):

* the **request socket**, one per server: the client sends a request as a
  header message carrying every descriptor of the request, then the pickled
  body in chunks (a ``SEQPACKET`` message must fit the socket buffer, and a
  large environment or a big pickled call need not);
* a **reply channel**, one per request: a socketpair the client makes; its
  far end travels inside the request.  The server *and* the new child each
  send ``(BORN, pid)`` with a pidfd on it, so the child is reported even if
  one of the two is killed between the ``clone3`` and its report.  The
  client reads it to end-of-file, which comes once the server has closed its
  copy and the child has exec'd (spawn: the copy is close-on-exec) or is about
  to run the call (fork).  No reply needs the server to stay alive, and no
  request waits behind another's reply.

Every descriptor received is close-on-exec (``MSG_CMSG_CLOEXEC``): another
thread of the client may be starting a program at that moment.  Every send
passes ``MSG_NOSIGNAL``: a peer that went away is an ``EPIPE``, not a SIGPIPE.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
from typing import Any, Sequence

#: Message tags on a reply channel.
BORN = "born"  # (BORN, pid) + the child's pidfd
EXEC_FAILED = "exec-failed"  # (EXEC_FAILED, errno, step): the child is about to exit 127
LOAD_FAILED = "load-failed"  # (LOAD_FAILED, traceback text): the child is about to exit 1
CLONE_FAILED = "clone-failed"  # (CLONE_FAILED, errno): there is no child
#: Messages on the request socket from the server, at startup.
READY = "ready"
STARTUP_FAILED = "startup-failed"

#: The kernel passes at most this many descriptors in one message (SCM_MAX_FD).
MAX_FDS = 253
_CHUNK = 32 * 1024
_HEADER = struct.Struct("!Q")
_REPLY_BYTES = 64 * 1024
_SEND_FLAGS = socket.MSG_NOSIGNAL
_RECV_FLAGS = socket.MSG_CMSG_CLOEXEC


def send_request(sock: socket.socket, body: bytes, fds: Sequence[int]) -> None:
    """Send one request.  Call with the client's send lock held: its messages
    must not interleave with another request's."""
    socket.send_fds(sock, [_HEADER.pack(len(body))], list(fds), _SEND_FLAGS)
    for start in range(0, len(body), _CHUNK):
        sock.send(body[start:start + _CHUNK], _SEND_FLAGS)


def recv_request(sock: socket.socket) -> tuple[bytes, list[int]] | None:
    """One request, or None when the client has gone.  The caller owns the
    descriptors returned, even when this raises after receiving them."""
    header, fds, flags, _ = socket.recv_fds(sock, _HEADER.size, MAX_FDS, _RECV_FLAGS)
    if not header and not fds:
        return None
    try:
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(header) != _HEADER.size:
            raise ConnectionError("malformed fork-server request header")
        (size,) = _HEADER.unpack(header)
        chunks = []
        while size:
            chunk = sock.recv(min(size, _CHUNK))
            if not chunk:
                raise ConnectionError("the client went away in the middle of a request")
            chunks.append(chunk)
            size -= len(chunk)
    except BaseException:
        close_all(fds)
        raise
    return b"".join(chunks), fds


def send_message(sock: socket.socket, message: tuple[Any, ...], fds: Sequence[int] = ()) -> None:
    socket.send_fds(sock, [pickle.dumps(message)], list(fds), _SEND_FLAGS)


def recv_message(sock: socket.socket) -> tuple[tuple[Any, ...] | None, list[int]]:
    """The next message and its descriptors; ``(None, [])`` at end-of-file.

    At most one descriptor is accepted: the kernel closes any more that a
    message carried (``MSG_CTRUNC``) rather than install them.
    """
    data, fds, _, _ = socket.recv_fds(sock, _REPLY_BYTES, 1, _RECV_FLAGS)
    if not data:
        close_all(fds)
        return None, []
    try:
        message = pickle.loads(data)
    except BaseException:
        close_all(fds)
        raise
    return message, fds


def close_all(fds: Sequence[int]) -> None:
    for fd in fds:
        os.close(fd)
