"""Map files: the memory-mapped files of shared-memory data transfer, for both ends.

On Linux the Functions host and its worker pass values of 1 MiB and more through files in a
memory-backed directory instead of inline protobuf. This module is the one place that reads,
writes, creates and deletes those files; the worker side (`workerkit._runtime.sharedmem`) and
the host side (`workerkit host`) both use it. Facts from the host's source (repository
Azure/azure-functions-host, `src/WebJobs.Script/Workers/SharedMemoryDataTransfer/`):

- Where (`SharedMemoryConstants.cs`, `MemoryMappedFileAccessorUnix.cs`): each directory named
  by ``FUNCTIONS_UNIX_SHARED_MEMORY_DIRECTORIES`` (comma-separated), else ``/dev/shm``, plus the
  suffix ``AzureFunctions``. A map is the file ``<dir>/AzureFunctions/<name>``: the host
  joins the name to the folder as it is (``Path.Combine``) and only ever makes GUIDs. Here a
  name is percent-escaped first (``/`` becomes ``%2F``; a GUID is left as it is), so a name
  from the other side (``../../etc/passwd``) can never reach a file outside the folders;
  ``""``, ``.``, ``..`` and names too long for a file name are refused. Opening looks
  through the directories in order and follows no symbolic link; creating takes the first
  whose file system has more than the file's size plus 1 MiB free, creating
  ``AzureFunctions/`` if missing.
- Layout (`MemoryMappedFileAccessor.cs`, `SharedMemoryMap.cs`): byte 0 is the "initialized"
  flag (1 once the creator took the file; a creator refuses a file whose flag is already set);
  bytes 1-8 hold the content length as a little-endian signed 64-bit integer; the content
  follows, so the file is the content length plus 9 bytes. A reference
  (`RpcSharedMemory`) names ``offset`` and ``count`` relative to the content.
- Sizes (`SharedMemoryConstants.cs`): values of at least 1 MiB (`MIN_TRANSFER_BYTES`) and at
  most 2 GiB - 1 (`MAX_TRANSFER_BYTES`) go through maps; the host reads the offset and count
  of a worker's map as 32-bit integers (`RpcSharedMemoryDataExtensions.cs`).

Reading maps the file and hands out a `memoryview` over the content, so a caller copies the
bytes once, straight from the map (``bytes(view)``, ``str(view, "utf-8")``). A view pins the
mapping: release every view before `MapReader.close` (a ``with`` block of `open_map` does
both). A mapping is only safe while nobody truncates the file (touching a page past its end
is SIGBUS, which kills the process): `read_bytes` reads with ``pread`` instead, so a file cut
short is an error; use it for maps whose writer is not trusted. Every malformed map is a
`SharedMapError` subclass saying what is wrong with which map; reads and writes go on after
a short transfer (a signal, a file system that returns less), so one never yields bytes
that are not the map's.

Errors::

    SharedMapError            any problem with a map file (I/O errors are wrapped)
    ├── MapNotFoundError      no directory holds a map of that name
    ├── MapExistsError        creating: a file of that name exists, or its flag is set
    ├── MapFormatError        the header is not initialized, or its length does not fit the file
    └── MapRangeError         offset/count outside the content, or a size out of range
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

__all__ = [
    "DIRECTORIES_ENV",
    "HEADER_BYTES",
    "MAX_TRANSFER_BYTES",
    "MIN_TRANSFER_BYTES",
    "CreatedMap",
    "MapExistsError",
    "MapFormatError",
    "MapNotFoundError",
    "MapRangeError",
    "MapReader",
    "SharedMapError",
    "create_map",
    "delete_map",
    "directories",
    "ensure_directories",
    "map_path",
    "open_map",
    "read_bytes",
    "read_map",
    "write_map",
]

#: The environment variable listing the base directories, comma-separated.
DIRECTORIES_ENV = "FUNCTIONS_UNIX_SHARED_MEMORY_DIRECTORIES"
#: The base directory when the variable is unset (`SharedMemoryConstants.TempDirs`).
DEFAULT_BASE = "/dev/shm"
#: The folder under each base directory that holds the maps (`TempDirSuffix`).
SUFFIX = "AzureFunctions"
#: The initialized flag (byte 0) and the content length (bytes 1-8, little-endian int64).
HEADER = struct.Struct("<?q")
HEADER_BYTES = HEADER.size  # 9
#: Smallest and largest value sent through a map (`Min/MaxObjectBytesForSharedMemoryTransfer`).
MIN_TRANSFER_BYTES = 1024 * 1024
MAX_TRANSFER_BYTES = 2 * 1024 * 1024 * 1024 - 1
#: Free space a directory needs beyond the file, to be chosen for a new map (`TempDirMinSize`).
FREE_SPACE_MARGIN = 1024 * 1024


class SharedMapError(Exception):
    """A map file cannot be used: missing, malformed, out of range, or an I/O error."""


class MapNotFoundError(SharedMapError):
    """No shared-memory directory holds a map of that name."""


class MapExistsError(SharedMapError):
    """A map to be created exists already (the file, or a file whose flag is set)."""


class MapFormatError(SharedMapError):
    """A map's header is not initialized, or its content length does not fit the file."""


class MapRangeError(SharedMapError):
    """An offset or count outside the map's content, or a size no map can have."""


def directories(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The folders that hold maps, in the order they are searched.

    Args:
        environ: the environment to read ``FUNCTIONS_UNIX_SHARED_MEMORY_DIRECTORIES`` from
            (default: ``os.environ``, read at each call).

    Returns:
        ``<base>/AzureFunctions`` for each comma-separated base directory (blank entries
        skipped), or for ``/dev/shm`` when the variable is unset or lists none.
    """
    env = os.environ if environ is None else environ
    bases = [part.strip() for part in env.get(DIRECTORIES_ENV, "").split(",")]
    return [Path(base, SUFFIX) for base in (list(filter(None, bases)) or [DEFAULT_BASE])]


def ensure_directories(folders: Sequence[Path] | None = None) -> list[Path]:
    """Create the map folders that are missing; return those that exist afterwards.

    A folder that cannot be created (a base that does not exist, no permission) is left
    out rather than raised: another may do.
    """
    usable = []
    for folder in directories() if folders is None else folders:
        try:
            folder.mkdir(parents=False, exist_ok=True)
        except OSError:
            continue
        if folder.is_dir():
            usable.append(folder)
    return usable


#: The longest file name Linux file systems take, in bytes (NAME_MAX).
_NAME_MAX = 255


def _file_name(name: str) -> str:
    """The file name of map `name`: percent-escaped, so it is one name inside the folder."""
    if not name or name in (".", ".."):
        raise SharedMapError(f"invalid shared memory map name {name!r}")
    escaped = quote(name, safe="")
    if len(escaped) > _NAME_MAX:
        raise SharedMapError(
            f"invalid shared memory map name {name[:40]!r}...: longer than a file name can be"
        )
    return escaped


def map_path(name: str, folders: Sequence[Path] | None = None) -> Path:
    """The path of the existing map `name`: the first folder that has it.

    Raises:
        MapNotFoundError: no folder has a file of that name.
        SharedMapError: `name` is empty, ``.`` or ``..``.
    """
    searched = directories() if folders is None else folders
    file_name = _file_name(name)
    for folder in searched:
        path = folder / file_name
        try:
            if stat.S_ISREG(path.lstat().st_mode):  # a symbolic link is no map
                return path
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise SharedMapError(f"cannot look for shared memory map {name!r}: {exc}") from exc
    where = ", ".join(str(folder) for folder in searched)
    raise MapNotFoundError(f"shared memory map {name!r} not found in {where}")


class MapReader:
    """An open map file, read-only: its content as memoryviews. Close it (or use ``with``).

    Attributes:
        name: the map's name.
        path: its file.
        length: the content length its header gives.
    """

    def __init__(self, name: str, path: Path, mapping: mmap.mmap, length: int) -> None:
        self.name = name
        self.path = path
        self.length = length
        self._mmap: mmap.mmap | None = mapping
        self._views: list[memoryview] = []

    def view(self, offset: int = 0, count: int | None = None) -> memoryview:
        """A read-only view of `count` content bytes from `offset` (default: to the end).

        No bytes are copied. The view is released by `close`; copy what must outlive it.

        Raises:
            MapRangeError: the range is not inside the content.
            ValueError: the reader is closed.
        """
        if self._mmap is None:
            raise ValueError(f"shared memory map {self.name!r} is closed")
        if count is None:
            count = self.length - offset
        _check_range(self.name, self.length, offset, count)
        whole = memoryview(self._mmap)
        start = HEADER_BYTES + offset
        view = whole[start : start + count]
        whole.release()
        self._views.append(view)
        return view

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._mmap is None

    def close(self) -> None:
        """Release the views this reader handed out and unmap the file; idempotent.

        Raises:
            BufferError: a view derived from one of ours (a slice of it) is still alive.
        """
        mapping, self._mmap = self._mmap, None
        for view in self._views:
            view.release()
        self._views.clear()
        if mapping is not None:
            mapping.close()

    def __enter__(self) -> MapReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_header(name: str, size: int, header: bytes | mmap.mmap) -> int:
    """The content length of map `name` (a file of `size` bytes), checked against the file."""
    if min(size, len(header)) < HEADER_BYTES:
        raise MapFormatError(
            f"shared memory map {name!r} is {size} bytes, shorter than its "
            f"{HEADER_BYTES}-byte header"
        )
    # byte 0 is a .NET bool: any value but 0 reads as set (BitConverter.ToBoolean)
    initialized, length = HEADER.unpack_from(header, 0)
    if not initialized:
        raise MapFormatError(f"shared memory map {name!r} is not initialized (byte 0 is 0)")
    if length < 0 or length > size - HEADER_BYTES:
        raise MapFormatError(
            f"shared memory map {name!r} claims {length} content bytes but the file "
            f"holds {size - HEADER_BYTES}"
        )
    return int(length)


def _open_file(name: str, path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError as exc:  # deleted since map_path saw it
        raise MapNotFoundError(f"shared memory map {name!r} not found: {exc}") from exc
    except OSError as exc:
        raise SharedMapError(f"cannot open shared memory map {name!r}: {exc}") from exc


def _pread_exact(name: str, fd: int, count: int, position: int) -> bytes:
    """`count` bytes at `position` of `fd`, however many ``pread`` calls that takes (one
    returns at most ~2 GiB, and fewer bytes than asked on a signal on some file systems).

    Raises:
        MapFormatError: the file ends first (it was cut short meanwhile).
        OSError: from ``pread``.
    """
    first = os.pread(fd, count, position)  # the usual case: all of it, no second copy
    if len(first) == count:
        return first
    data = bytearray(count)
    view = memoryview(data)
    view[: len(first)] = first
    done = len(first)
    while done < count:
        got = os.preadv(fd, [view[done:]], position + done)
        if got == 0:
            raise MapFormatError(f"shared memory map {name!r} ended after {done} bytes")
        done += got
    view.release()
    return bytes(data)  # (a second copy, only after a short read)


def read_bytes(name: str, offset: int, count: int, folders: Sequence[Path] | None = None) -> bytes:
    """`count` content bytes from `offset` of map `name`, as `bytes`, copied once.

    The same checks as `open_map` and `MapReader.view`, but read with ``pread`` into the new
    `bytes` rather than through a mapping: one copy either way, without the page faults of
    mapping the file (a little faster for a few MiB), and a file cut short meanwhile is an
    error rather than SIGBUS. No handle stays open.

    Raises:
        MapNotFoundError, MapFormatError, MapRangeError, SharedMapError: as `open_map` and
            `MapReader.view`.
    """
    path = map_path(name, folders)
    fd = _open_file(name, path)
    try:
        length = _check_header(name, os.fstat(fd).st_size, os.pread(fd, HEADER_BYTES, 0))
        _check_range(name, length, offset, count)
        return _pread_exact(name, fd, count, HEADER_BYTES + offset)
    except OSError as exc:
        raise SharedMapError(f"cannot read shared memory map {name!r}: {exc}") from exc
    finally:
        os.close(fd)


def _check_range(name: str, length: int, offset: int, count: int) -> None:
    if offset < 0 or count < 0 or offset + count > length:
        raise MapRangeError(
            f"shared memory map {name!r} has {length} content bytes; "
            f"offset {offset} and count {count} are outside it"
        )


def open_map(name: str, folders: Sequence[Path] | None = None) -> MapReader:
    """Open the map `name` for reading and check its header against the file.

    Args:
        name: the map's name, as in ``RpcSharedMemory.name``.
        folders: where to look (default: `directories`).

    Raises:
        MapNotFoundError: no folder holds the map.
        MapFormatError: the file is shorter than the header, the flag is not set, or the
            content length is negative or runs past the end of the file.
        SharedMapError: any other I/O error (wrapping the `OSError`).
    """
    path = map_path(name, folders)
    fd = _open_file(name, path)
    try:
        size = os.fstat(fd).st_size
        _check_header(name, size, os.pread(fd, HEADER_BYTES, 0))
        mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    except OSError as exc:
        raise SharedMapError(f"cannot map shared memory map {name!r}: {exc}") from exc
    finally:
        os.close(fd)  # the mapping keeps the file; the descriptor is no longer needed
    try:
        length = _check_header(name, size, mapping)  # again: the file may have changed
    except BaseException:
        mapping.close()
        raise
    return MapReader(name, path, mapping, length)


@contextmanager
def read_map(
    name: str, offset: int, count: int, folders: Sequence[Path] | None = None
) -> Iterator[memoryview]:
    """Open map `name` and yield a view of `count` bytes from `offset`; close on exit.

    ``with read_map(name, 0, n) as view: data = bytes(view)`` copies once. A view (or a
    slice of it) kept past the block makes the exit raise `BufferError`.

    Raises:
        MapNotFoundError, MapFormatError, MapRangeError, SharedMapError: as `open_map` and
            `MapReader.view`.
    """
    with open_map(name, folders) as reader:
        yield reader.view(offset, count)


class CreatedMap:
    """A map this process created: writable until `close`, the file kept until `delete`.

    Attributes:
        name: the map's name (a uuid unless given).
        path: its file.
        length: its content length.
    """

    def __init__(self, name: str, path: Path, mapping: mmap.mmap | None, length: int) -> None:
        self.name = name
        self.path = path
        self.length = length
        self._mmap = mapping
        self._view: memoryview | None = None

    @property
    def content(self) -> memoryview:
        """The writable content bytes (no copy), valid until `close`.

        Raises:
            ValueError: the map's handle is closed.
        """
        if self._mmap is None:
            raise ValueError(f"shared memory map {self.name!r} is closed")
        if self._view is None:
            whole = memoryview(self._mmap)
            self._view = whole[HEADER_BYTES:]
            whole.release()
        return self._view

    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> None:
        """Copy `data` into the content at `offset` (one copy).

        Raises:
            MapRangeError: it does not fit in the content.
            ValueError: the map's handle is closed.
        """
        size = memoryview(data).nbytes
        if offset < 0 or offset + size > self.length:
            raise MapRangeError(
                f"{size} bytes at offset {offset} do not fit in shared memory map "
                f"{self.name!r} of {self.length} content bytes"
            )
        self.content[offset : offset + size] = memoryview(data).cast("B")

    @property
    def closed(self) -> bool:
        """Whether the handle is closed (the file stays until `delete`)."""
        return self._mmap is None

    def close(self) -> None:
        """Unmap the file, keeping it for the reader; idempotent.

        Raises:
            BufferError: a slice of `content` is still alive.
        """
        mapping, self._mmap = self._mmap, None
        if self._view is not None:
            self._view.release()
            self._view = None
        if mapping is not None:
            mapping.close()

    def delete(self) -> bool:
        """Close the handle and delete the file; False when the file was already gone."""
        self.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        return True


def _choose_folder(size: int, folders: Sequence[Path]) -> Path:
    """The first folder with room for `size` bytes and the margin, created if missing."""
    tried = []
    for folder in folders:
        try:
            folder.mkdir(exist_ok=True)
            stats = os.statvfs(folder)
        except OSError as exc:
            tried.append(f"{folder} ({exc.strerror or exc})")
            continue
        if stats.f_bavail * stats.f_frsize > size + FREE_SPACE_MARGIN:
            return folder
        tried.append(f"{folder} (not enough free space)")
    raise SharedMapError(
        f"no directory can hold a shared memory map of {size} bytes: " + ", ".join(tried)
    )


def create_map(
    length: int, folders: Sequence[Path] | None = None, name: str | None = None
) -> CreatedMap:
    """Create a map for `length` content bytes: header written, content zeroed, mapped.

    Args:
        length: content bytes (the file is 9 more).
        folders: where it may go (default: `directories`); the first with room is used.
        name: the map's name (default: a new uuid).

    Raises:
        MapExistsError: a map of that name exists in any folder, or the new file's
            initialized flag is already set.
        MapRangeError: `length` is negative.
        SharedMapError: no folder has room, or any other I/O error.
    """
    return _create(length, folders, name, mapped=True)


def _create(
    length: int, folders: Sequence[Path] | None, name: str | None, *, mapped: bool
) -> CreatedMap:
    """`create_map`; with `mapped` False the header is written and the file closed."""
    if length < 0:
        raise MapRangeError(f"a shared memory map cannot hold {length} bytes")
    searched = directories() if folders is None else folders
    name = str(uuid.uuid4()) if name is None else name
    try:
        existing = map_path(name, searched)
    except MapNotFoundError:
        pass
    else:
        raise MapExistsError(f"shared memory map {name!r} already exists: {existing}")
    path = _choose_folder(length + HEADER_BYTES, searched) / _file_name(name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError as exc:
        raise MapExistsError(f"shared memory map {name!r} already exists: {path}") from exc
    except OSError as exc:
        raise SharedMapError(f"cannot create shared memory map {name!r}: {exc}") from exc
    mapping = None
    try:
        os.ftruncate(fd, length + HEADER_BYTES)
        if os.pread(fd, 1, 0) != b"\0":
            raise MapExistsError(f"shared memory map {name!r} is already initialized: {path}")
        if mapped:
            mapping = mmap.mmap(fd, length + HEADER_BYTES)
            HEADER.pack_into(mapping, 0, True, length)
        elif os.pwrite(fd, HEADER.pack(True, length), 0) != HEADER_BYTES:
            raise OSError(f"the {HEADER_BYTES}-byte header was written short")
    except BaseException as exc:
        if mapping is not None:
            mapping.close()
        path.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise SharedMapError(f"cannot create shared memory map {name!r}: {exc}") from exc
        raise
    finally:
        os.close(fd)
    return CreatedMap(name, path, mapping, length)


def write_map(
    data: bytes | bytearray | memoryview,
    folders: Sequence[Path] | None = None,
    name: str | None = None,
) -> CreatedMap:
    """Create a map holding `data` (one copy, with ``pwrite``) and close it; the file stays.

    Returns:
        The map, closed: its `name` goes into ``RpcSharedMemory``; `CreatedMap.delete`
        removes the file.

    Raises:
        MapExistsError, MapRangeError, SharedMapError: as `create_map`.
    """
    view = memoryview(data).cast("B")
    created = _create(view.nbytes, folders, name, mapped=False)
    try:
        fd = os.open(created.path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            written = 0
            while written < view.nbytes:  # at most ~2 GiB a call, and less on a signal
                written += os.pwrite(fd, view[written:], HEADER_BYTES + written)
        finally:
            os.close(fd)
    except OSError as exc:
        created.delete()
        raise SharedMapError(f"cannot write shared memory map {created.name!r}: {exc}") from exc
    except BaseException:
        created.delete()
        raise
    return created


def delete_map(name: str, folders: Sequence[Path] | None = None) -> bool:
    """Delete the map file `name` wherever it is; False when no folder has it.

    Raises:
        SharedMapError: `name` is invalid, or the file cannot be removed.
    """
    try:
        path = map_path(name, folders)
    except MapNotFoundError:
        return False
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise SharedMapError(f"cannot delete shared memory map {name!r}: {exc}") from exc
    return True
