"""Tests for workerkit's public surface: __all__, module names, py.typed, import footprint."""

import importlib.resources
import inspect
import json
import subprocess
import sys
import typing

import workerkit

#: Top-level modules `import workerkit` may load besides the standard library: workerkit, its
#: two dependencies and theirs, plus artefacts of how the environment was installed.
ALLOWED_THIRD_PARTY = frozenset(
    {
        "workerkit",
        "betterproto2",
        "grpclib",
        # grpclib's dependencies
        "h2",
        "hpack",
        "hyperframe",
        "multidict",
        # betterproto2's dependencies
        "dateutil",
        "six",
        "typing_extensions",
        # install artefacts
        "_distutils_hack",
        "certifi",
    }
)
#: Name prefixes of install artefacts (editable-install finders, sysconfig data).
ALLOWED_PREFIXES = ("__editable__", "_sysconfigdata_")
FORBIDDEN = ("grpc", "google", "hypothesis", "pytest", "grpc_tools", "_pytest")


def public_names() -> set[str]:
    return {
        name
        for name in dir(workerkit)
        if not name.startswith("_") and not inspect.ismodule(getattr(workerkit, name))
    }


def test_all_is_sorted_without_duplicates() -> None:
    assert list(workerkit.__all__) == sorted(workerkit.__all__)
    assert len(set(workerkit.__all__)) == len(workerkit.__all__)


def test_all_equals_public_names() -> None:
    assert set(workerkit.__all__) == public_names()


def test_every_name_in_all_exists() -> None:
    for name in workerkit.__all__:
        assert getattr(workerkit, name) is not None, name


def test_exported_classes_belong_to_workerkit() -> None:
    classes = [getattr(workerkit, n) for n in workerkit.__all__]
    classes = [obj for obj in classes if isinstance(obj, type)]
    assert len(classes) >= 25
    wrong = {cls.__name__: cls.__module__ for cls in classes if cls.__module__ != "workerkit"}
    assert wrong == {}


def test_exported_classes_keep_resolvable_type_hints() -> None:
    """BUG (workerkit/__init__.py): rewriting ``__module__`` to "workerkit" breaks
    ``typing.get_type_hints`` on every exported class whose module uses
    ``from __future__ import annotations`` (``_types.py``, ``worker.py``): hints are
    resolved in ``sys.modules[cls.__module__]`` = the ``workerkit`` namespace, which has no
    ``Mapping``/``Any``/``ClassVar``/``Direction``... so NameError."""
    broken = {}
    for name in workerkit.__all__:
        obj = getattr(workerkit, name)
        if not isinstance(obj, type):
            continue
        try:
            typing.get_type_hints(obj)
        except Exception as exc:
            broken[name] = f"{type(exc).__name__}: {exc}"
    assert broken == {}, (
        "BUG: typing.get_type_hints() fails on exported classes after workerkit/__init__.py "
        f"rewrote their __module__: {broken}"
    )


def test_py_typed_is_shipped() -> None:
    marker = importlib.resources.files("workerkit").joinpath("py.typed")
    assert marker.is_file()


def test_version_is_a_string() -> None:
    assert isinstance(workerkit.__version__, str) and workerkit.__version__


def _loaded_top_level_modules(statement: str) -> tuple[set[str], set[str]]:
    code = (
        "import json, sys\n"
        f"{statement}\n"
        "names = {m.partition('.')[0] for m in sys.modules}\n"
        "extra = sorted(names - set(sys.stdlib_module_names) - {'__main__'})\n"
        "print(json.dumps({'extra': extra, 'all': sorted(names)}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    return set(data["extra"]), set(data["all"])


def _not_allowed(extra: set[str]) -> set[str]:
    return {
        name
        for name in extra
        if name not in ALLOWED_THIRD_PARTY and not name.startswith(ALLOWED_PREFIXES)
    }


def test_import_loads_only_stdlib_and_declared_dependencies() -> None:
    extra, everything = _loaded_top_level_modules("import workerkit")
    # grpclib loads when a worker serves, betterproto2 when a message needs it (workerkit._wire.pb)
    artefacts = {"_distutils_hack", "certifi"}
    assert {n for n in extra - artefacts if not n.startswith(ALLOWED_PREFIXES)} == {"workerkit"}
    assert _not_allowed(extra) == set(), sorted(extra)
    assert not set(FORBIDDEN) & everything


def test_import_testing_works_with_the_same_footprint() -> None:
    extra, everything = _loaded_top_level_modules(
        "import workerkit.testing\nassert workerkit.testing.TestHost"
    )
    assert _not_allowed(extra) == set(), sorted(extra)
    assert not set(FORBIDDEN) & everything


def test_import_testing_in_process() -> None:
    import workerkit.testing as testing

    assert inspect.isclass(testing.TestHost)
    assert inspect.ismodule(workerkit.testing)
    # Importing a submodule adds a module attribute, never a public non-module name.
    assert set(workerkit.__all__) == public_names()


def test_testing_exports_the_typed_results_of_loads_and_calls() -> None:
    import workerkit.testing as testing

    assert list(testing.__all__) == sorted(testing.__all__)
    added = {
        "CallFailed",
        "CallResult",
        "CallStatus",
        "FunctionLoadFailed",
        "LoadResult",
        "LogEntry",
    }
    assert added <= set(testing.__all__)
    for name in testing.__all__:
        assert getattr(testing, name) is not None, name
    for cls in (testing.CallResult, testing.LoadResult, testing.LogEntry):
        assert typing.get_type_hints(cls), cls  # annotations resolvable
    for method in ("load_function", "call", "call_result"):
        assert typing.get_type_hints(getattr(testing.HostConnection, method)), method
