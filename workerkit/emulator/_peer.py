"""Who is on the other end of a loopback connection: the emulator serves only the worker
process it launched.

The worker id the host passes is on the worker's command line, which any local process can
read (``/proc/PID/cmdline``); the real host accepts the first stream that names it. The
emulator also checks that the connection belongs to the process it started (or one of that
process's descendants), on Linux, through ``/proc``: the inode of the client's socket, found
by its port in ``/proc/net/tcp`` and ``tcp6``, must be among that family's open files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["launched_by"]

_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def launched_by(pid: int, client_port: int, server_port: int) -> bool | None:
    """Whether process `pid` or a descendant holds the client end of the TCP connection
    from `client_port` to `server_port`; None where this platform cannot tell (no /proc)."""
    inodes = _socket_inodes(client_port, server_port)
    if inodes is None:
        return None
    if not inodes:
        return False  # no such connection (any more)
    wanted = {f"socket:[{inode}]" for inode in inodes}
    return any(link in wanted for member in _family(pid) for link in _open_files(member))


def _socket_inodes(client_port: int, server_port: int) -> set[str] | None:
    found: set[str] = set()
    readable = False
    for table in _TABLES:
        try:
            with open(table) as rows:
                lines = rows.read().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) < 10:
                continue
            local, remote, inode = fields[1], fields[2], fields[9]
            if _port(local) == client_port and _port(remote) == server_port and inode != "0":
                found.add(inode)
    return found if readable else None


def _port(address: str) -> int:
    """The port of an address as /proc/net/tcp writes it (``0100007F:1F90``)."""
    try:
        return int(address.rpartition(":")[2], 16)
    except ValueError:
        return -1


def _family(pid: int) -> Iterable[int]:
    """`pid` and its descendants."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [pid]
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                after_name = stat.read().rpartition(")")[2].split()
            parent = int(after_name[1])
        except (OSError, ValueError, IndexError):  # gone meanwhile, or unreadable
            continue
        children.setdefault(parent, []).append(int(entry))
    family, pending = [], [pid]
    while pending:
        member = pending.pop()
        family.append(member)
        pending.extend(children.get(member, ()))
    return family


def _open_files(pid: int) -> Iterable[str]:
    directory = f"/proc/{pid}/fd"
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        try:
            yield os.readlink(f"{directory}/{name}")
        except OSError:
            continue
