"""workerkit._sharedmap: map files laid out as the host's MemoryMappedFileAccessor writes them.

The maps the tests read are written here with `struct` and plain file I/O (`host_write`), not
with the module, so a layout mistake in the module cannot pass its own test; the maps the
module writes are checked the same way (`host_read`)."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workerkit import _sharedmap as sm

FOLDER_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def host_write(folder: Path, content: bytes, *, flag: int = 1, length: int | None = None) -> str:
    """A map file as SharedMemoryMap.CreateWithContentAsync leaves it: flag, int64 LE, bytes."""
    name = str(uuid.uuid4())
    folder.mkdir(parents=True, exist_ok=True)
    header = struct.pack("<Bq", flag, len(content) if length is None else length)
    (folder / name).write_bytes(header + content)
    return name


def host_read(path: Path) -> bytes:
    """The content of a map file, checking the header as the host's reader would."""
    raw = path.read_bytes()
    assert raw[0] == 1, "initialized flag"
    (length,) = struct.unpack("<q", raw[1:9])
    assert len(raw) == length + 9
    return raw[9:]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "AzureFunctions"


def test_directories_default_and_list(tmp_path: Path) -> None:
    assert sm.directories({}) == [Path("/dev/shm/AzureFunctions")]
    assert sm.directories({sm.DIRECTORIES_ENV: " , "}) == [Path("/dev/shm/AzureFunctions")]
    listed = sm.directories({sm.DIRECTORIES_ENV: f"{tmp_path}/a, ,{tmp_path}/b"})
    assert listed == [tmp_path / "a" / "AzureFunctions", tmp_path / "b" / "AzureFunctions"]


def test_directories_read_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sm.DIRECTORIES_ENV, str(tmp_path))
    assert sm.directories() == [tmp_path / "AzureFunctions"]
    assert sm.ensure_directories() == [tmp_path / "AzureFunctions"]
    assert (tmp_path / "AzureFunctions").is_dir()


def test_ensure_directories_skips_folders_it_cannot_create(tmp_path: Path) -> None:
    good, bad = tmp_path / "AzureFunctions", tmp_path / "missing" / "AzureFunctions"
    assert sm.ensure_directories([bad, good]) == [good]
    assert not bad.parent.exists()


@FOLDER_SETTINGS
@given(content=st.binary(max_size=5000), data=st.data())
def test_reads_what_the_host_writes(folder: Path, content: bytes, data: st.DataObject) -> None:
    name = host_write(folder, content)
    offset = data.draw(st.integers(0, len(content)), "offset")
    count = data.draw(st.integers(0, len(content) - offset), "count")
    with sm.read_map(name, offset, count, [folder]) as view:
        assert view.readonly
        assert bytes(view) == content[offset : offset + count]
    with sm.open_map(name, [folder]) as reader:
        assert reader.length == len(content)
        assert bytes(reader.view()) == content
    (folder / name).unlink()


@FOLDER_SETTINGS
@given(content=st.binary(max_size=5000))
def test_writes_what_the_host_reads(folder: Path, content: bytes) -> None:
    created = sm.write_map(content, [folder])
    assert created.closed
    assert created.path == folder / created.name
    assert uuid.UUID(created.name)
    assert host_read(created.path) == content
    assert created.delete() is True
    assert not created.path.exists()
    assert created.delete() is False


def test_large_map_round_trip_and_text(folder: Path) -> None:
    text = "grüße, 世界 " * 300_000  # > 2 MiB of UTF-8 with non-ASCII
    encoded = text.encode()
    created = sm.write_map(encoded, [folder])
    with sm.read_map(created.name, 0, len(encoded), [folder]) as view:
        assert str(view, "utf-8") == text
    assert sm.delete_map(created.name, [folder]) is True
    assert sm.delete_map(created.name, [folder]) is False


def test_create_then_write_through_the_content_view(folder: Path) -> None:
    created = sm.create_map(10, [folder])
    assert host_read(created.path) == bytes(10)  # zeroed, header already valid
    created.content[2:5] = b"abc"
    created.write(b"xy", offset=8)
    with pytest.raises(sm.MapRangeError):
        created.write(b"xyz", offset=8)
    with pytest.raises(sm.MapRangeError):
        created.write(b"x", offset=-1)
    created.close()
    created.close()
    with pytest.raises(ValueError, match="closed"):
        created.content  # noqa: B018
    assert host_read(created.path) == b"\0\0abc\0\0\0xy"
    created.delete()


def test_search_order_over_several_folders(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "AzureFunctions", tmp_path / "b" / "AzureFunctions"
    name = host_write(second, b"in the second")
    with sm.read_map(name, 0, 13, [first, second]) as view:
        assert bytes(view) == b"in the second"
    assert sm.map_path(name, [first, second]) == second / name
    # created in the first folder that can be made, even when the base is new
    first.parent.mkdir()
    created = sm.write_map(b"new", [first, second])
    assert created.path.parent == first


def test_creation_skips_folders_that_cannot_exist(tmp_path: Path) -> None:
    bad = tmp_path / "no-such-base" / "AzureFunctions"
    good = tmp_path / "AzureFunctions"
    created = sm.write_map(b"x", [bad, good])
    assert created.path.parent == good
    with pytest.raises(sm.SharedMapError, match="no directory can hold"):
        sm.write_map(b"x", [bad])


def test_names_are_escaped_so_that_none_leaves_the_folder(folder: Path) -> None:
    # The host joins its GUID names to the folder as they are; escaping leaves a GUID alone
    # and keeps "/" and ".." inside (test_sharedmem_review.py tries many more names).
    created = sm.write_map(b"x", [folder], name="a b/../c")
    assert created.path == folder / "a%20b%2F..%2Fc"
    with sm.read_map("a b/../c", 0, 1, [folder]) as view:
        assert bytes(view) == b"x"
    for bad in ("", ".", ".."):
        with pytest.raises(sm.SharedMapError, match="invalid shared memory map name"):
            sm.open_map(bad, [folder])


def test_missing_map(folder: Path) -> None:
    folder.mkdir()
    with pytest.raises(sm.MapNotFoundError, match="not found in"):
        sm.open_map(str(uuid.uuid4()), [folder])
    with pytest.raises(sm.MapNotFoundError):
        sm.open_map("x", [folder / "nowhere"])


def test_flag_not_set(folder: Path) -> None:
    name = host_write(folder, b"data", flag=0)
    with pytest.raises(sm.MapFormatError, match="not initialized"):
        sm.open_map(name, [folder])


def test_any_nonzero_flag_counts_as_set_like_a_dotnet_bool(folder: Path) -> None:
    name = host_write(folder, b"data", flag=7)
    with sm.read_map(name, 0, 4, [folder]) as view:
        assert bytes(view) == b"data"


@pytest.mark.parametrize("size", [0, 1, 8])
def test_file_shorter_than_header(folder: Path, size: int) -> None:
    folder.mkdir()
    (folder / "short").write_bytes(b"\x01" * size)
    with pytest.raises(sm.MapFormatError, match="shorter than its 9-byte header"):
        sm.open_map("short", [folder])


@FOLDER_SETTINGS
@given(content=st.binary(max_size=64), extra=st.integers(1, 1 << 62))
def test_header_length_beyond_the_file(folder: Path, content: bytes, extra: int) -> None:
    name = host_write(folder, content, length=len(content) + extra)
    with pytest.raises(sm.MapFormatError, match="claims"):
        sm.open_map(name, [folder])
    (folder / name).unlink()


@FOLDER_SETTINGS
@given(length=st.integers(-(1 << 63), -1))
def test_negative_header_length(folder: Path, length: int) -> None:
    name = host_write(folder, b"abc", length=length)
    with pytest.raises(sm.MapFormatError, match="claims"):
        sm.open_map(name, [folder])
    (folder / name).unlink()


def test_header_length_shorter_than_the_file_is_fine(folder: Path) -> None:
    name = host_write(folder, b"abcdef", length=3)
    with sm.open_map(name, [folder]) as reader:
        assert reader.length == 3
        with pytest.raises(sm.MapRangeError):
            reader.view(0, 4)


@FOLDER_SETTINGS
@given(content=st.binary(max_size=100), data=st.data())
def test_range_outside_the_content(folder: Path, content: bytes, data: st.DataObject) -> None:
    name = host_write(folder, content)
    offset, count = data.draw(
        st.one_of(
            st.tuples(st.integers(-(1 << 40), -1), st.integers(0, 10)),
            st.tuples(st.integers(0, 10), st.integers(-(1 << 40), -1)),
            st.integers(0, len(content)).flatmap(
                lambda o: st.tuples(st.just(o), st.integers(len(content) - o + 1, 1 << 40))
            ),
        ),
        "offset, count",
    )
    with sm.open_map(name, [folder]) as reader, pytest.raises(sm.MapRangeError, match="outside"):
        reader.view(offset, count)
    (folder / name).unlink()


def test_read_map_releases_its_view(folder: Path) -> None:
    name = host_write(folder, b"abc")
    with sm.read_map(name, 0, 3, [folder]) as view:
        pass
    with pytest.raises(ValueError):
        bytes(view)
    reader = sm.open_map(name, [folder])
    kept = reader.view()[1:]  # a slice outlives the reader's own view
    with pytest.raises(BufferError):
        reader.close()
    assert reader.closed
    del kept
    with pytest.raises(ValueError, match="closed"):
        reader.view()


def test_create_refuses_an_existing_name(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "AzureFunctions", tmp_path / "b" / "AzureFunctions"
    name = host_write(second, b"taken")
    with pytest.raises(sm.MapExistsError, match="already exists"):
        sm.create_map(1, [first, second], name=name)
    with pytest.raises(sm.MapRangeError):
        sm.create_map(-1, [first])
    assert (second / name).read_bytes()[9:] == b"taken"


def test_read_only_file_is_not_writable_through_a_reader(folder: Path) -> None:
    name = host_write(folder, b"abc")
    with sm.open_map(name, [folder]) as reader:
        view = reader.view()
        with pytest.raises(TypeError):
            view[0] = 0  # type: ignore[index]


@FOLDER_SETTINGS
@given(content=st.binary(max_size=5000), data=st.data())
def test_read_bytes_agrees_with_the_view(folder: Path, content: bytes, data: st.DataObject) -> None:
    name = host_write(folder, content)
    offset = data.draw(st.integers(0, len(content)), "offset")
    count = data.draw(st.integers(0, len(content) - offset), "count")
    got = sm.read_bytes(name, offset, count, [folder])
    assert type(got) is bytes and got == content[offset : offset + count]
    (folder / name).unlink()


def test_read_bytes_checks_what_open_map_checks(folder: Path) -> None:
    cases = {
        host_write(folder, b"data", flag=0): (sm.MapFormatError, "not initialized"),
        host_write(folder, b"data", length=99): (sm.MapFormatError, "claims 99"),
        host_write(folder, b"data", length=-5): (sm.MapFormatError, "claims -5"),
        host_write(folder, b"data"): (sm.MapRangeError, "outside"),
        "no-such-map": (sm.MapNotFoundError, "not found"),
    }
    (folder / "short").write_bytes(b"\x01\x02")
    cases["short"] = (sm.MapFormatError, "shorter than its 9-byte header")
    for name, (error, words) in cases.items():
        with pytest.raises(error, match=words):
            sm.read_bytes(name, 2, 3, [folder])
    with pytest.raises(sm.MapRangeError):
        sm.read_bytes(host_write(folder, b"data"), -1, 1, [folder])


def test_write_map_refuses_a_name_that_exists_and_leaves_it_alone(folder: Path) -> None:
    name = host_write(folder, b"host's")
    with pytest.raises(sm.MapExistsError):
        sm.write_map(b"mine", [folder], name=name)
    assert host_read(folder / name) == b"host's"
