"""``workerkit new DIR [--template NAME]``: start a worker from an example.

Copies an example (shipped inside the package as ``workerkit/_examples``) into DIR and
renames it: the language id in ``worker.config.json`` (what ``FUNCTIONS_WORKER_RUNTIME``
selects), the worker class and ``runtime_name`` in ``worker.py``, the language in the
``Dockerfile``, the test file's name, and the title and commands of the README (paths quoted
for the shell). The sample app, its tests (``tests/``, pytest) and its ``conformance.json``
(``workerkit conformance``) come along, so the new worker runs at once under
``workerkit host DIR/app --worker DIR`` and its checks pass as they are.

The default template, ``minimal``, is the smallest worker (``examples/templates``: each
function a text template), the one the README shows first.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

# `HELP`, `configure` and `run` are the `workerkit new` command, which workerkit.__main__ finds
# here; they are not part of the Python API.
__all__ = ["DEFAULT_TEMPLATE", "TEMPLATES", "ScaffoldError", "create", "language_id"]

HELP = "create a new worker project from an example (minimal, python, process or lua)"


@dataclass(frozen=True, slots=True)
class Template:
    """An example that `create` can copy, and the names in it that `create` replaces.

    Attributes:
        directory: the example's directory under ``examples/``.
        language: its language id (``worker.config.json``, ``runtime_name``, the Dockerfile).
        class_name: its worker class.
        summary: one line for ``--help`` and the new README's title.
    """

    directory: str
    language: str
    class_name: str
    summary: str

    @property
    def test_file(self) -> str:
        """Its tests, named after the language so that several projects' tests can run in
        one pytest session (pytest refuses two test modules of the same name)."""
        return f"tests/test_{self.language}.py"


#: The examples, by the name ``--template`` takes. ``minimal`` is examples/templates: a
#: worker whose functions are text templates; "templates" would read as a kind of template.
TEMPLATES: dict[str, Template] = {
    "minimal": Template("templates", "templates", "TemplateWorker", "functions as text templates"),
    "python": Template("python", "pyworker", "PythonWorker", "Python functions, the classic way"),
    "process": Template("process", "process", "ProcessWorker", "each function an executable"),
    "lua": Template("lua", "lua", "LuaWorker", "Lua functions in an embedded interpreter"),
}
DEFAULT_TEMPLATE = "minimal"
#: Runtime names the real host already uses: a custom worker must not take them.
RESERVED = frozenset(
    {"python", "node", "java", "powershell", "dotnet", "dotnet-isolated", "custom", "native"}
)
#: Files whose text mentions the names (besides the test file, `Template.test_file`); the
#: sample app and the rest are copied unchanged.
RENAMED_FILES = ("worker.py", "worker.config.json", "README.md", "Dockerfile")
#: Dot-files that belong to a project (caches, virtual environments and the like do not).
KEPT_DOTFILES = frozenset({".dockerignore"})
_LANGUAGE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def _ignore(directory: str, names: list[str]) -> set[str]:
    """What `shutil.copytree` leaves out: caches and dot-files other than `KEPT_DOTFILES`."""
    return {
        name
        for name in names
        if name == "__pycache__"
        or name.endswith(".pyc")
        or (name.startswith(".") and name not in KEPT_DOTFILES)
    }


class ScaffoldError(Exception):
    """The project cannot be created as asked (the message says why)."""


def language_id(text: str) -> str:
    """A language id derived from `text` (a directory name): ``My-Lua worker`` -> ``my_lua_worker``.

    Lower-case letters, digits and single underscores, starting with a letter: it must work
    as ``FUNCTIONS_WORKER_RUNTIME`` and inside ``languageWorkers__<id>__workerDirectory``.
    """
    name = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    if name and not name[0].isalpha():
        name = "w" + name
    return name


def _check_language(name: str) -> None:
    if not _LANGUAGE.match(name):
        raise ScaffoldError(
            f"language {name!r} must be lower-case letters and digits, single underscores "
            "between them, starting with a letter (it becomes FUNCTIONS_WORKER_RUNTIME)"
        )
    if name in RESERVED:
        raise ScaffoldError(f"language {name!r} is a built-in runtime of the Functions host")


def template_root() -> Path:
    """Where the templates are: inside the installed package, or the checkout's examples/."""
    root = resources.files("workerkit").joinpath("_examples")
    if not isinstance(root, Path) or not root.is_dir():
        raise ScaffoldError(f"the templates are missing from this installation ({root})")
    return root


def shell_path(path: Path, suffix: str = "") -> str:
    """`path` (plus `suffix`, e.g. ``/app``) as one shell word, quoted when it needs to be."""
    return shlex.quote(path.as_posix() + suffix)


def create(target: Path, template: str = DEFAULT_TEMPLATE, language: str | None = None) -> str:
    """Copy `template` into `target` and rename it; return the language id used.

    Args:
        target: the new project's directory; it must not exist or be empty.
        template: a key of `TEMPLATES`.
        language: the language id; by default derived from the directory's name.

    Raises:
        ScaffoldError: unknown template, invalid language id, or a non-empty `target`.
    """
    if template not in TEMPLATES:
        raise ScaffoldError(f"no template {template!r} (choose from {', '.join(TEMPLATES)})")
    spec = TEMPLATES[template]
    name = language or language_id(target.resolve().name)
    _check_language(name)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ScaffoldError(f"{target} exists and is not an empty directory; nothing was written")
    shutil.copytree(template_root() / spec.directory, target, ignore=_ignore, dirs_exist_ok=True)

    class_name = "".join(part.capitalize() for part in name.split("_"))
    if not class_name.endswith("Worker"):
        class_name += "Worker"
    old = re.escape(spec.language)
    replacements: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
        (re.compile(rf"\b{spec.class_name}\b"), class_name),
        (re.compile(rf'(?<="language": )"{old}"'), f'"{name}"'),
        (re.compile(rf'(?<=runtime_name = )"{old}"'), f'"{name}"'),
        (re.compile(rf"(?<=FUNCTIONS_WORKER_RUNTIME=){old}\b"), name),
        (re.compile(rf"(?<=languageWorkers__){old}(?=__)"), name),
        (re.compile(rf"(?<=workers/){old}\b"), name),
        (re.compile(rf"(?<=test_){old}(?=\.py\b)"), name),
        # A path into the example, as one shell word: the same path into the new project.
        (
            re.compile(rf"(?<![\w./-])examples/{spec.directory}((?:/[\w.-]+)*/?)(?![\w.-])"),
            lambda found: shell_path(target, found.group(1)),
        ),
    ]
    title = (re.compile(r"\A# .*"), f"# {name}: {spec.summary} (from the workerkit template)")
    old_tests = target / spec.test_file
    new_tests = target / f"tests/test_{name}.py"
    if old_tests.is_file() and old_tests != new_tests:
        old_tests.rename(new_tests)
    for path in [*(target / n for n in RENAMED_FILES), new_tests]:
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            for pattern, new in [*replacements, *([title] if path.name == "README.md" else [])]:
                text = pattern.sub(new if callable(new) else _literal(new), text)
            path.write_text(text, encoding="utf-8")
    return name


def _literal(text: str) -> str:
    """`text` as a `re.sub` replacement that is taken literally (backslashes included)."""
    return text.replace("\\", "\\\\")


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``workerkit new``."""
    parser.add_argument("directory", type=Path, help="the new project (must not exist, or empty)")
    choices = "; ".join(f"{key}: {spec.summary}" for key, spec in TEMPLATES.items())
    parser.add_argument(
        "--template",
        "-t",
        choices=list(TEMPLATES),
        default=DEFAULT_TEMPLATE,
        help=f"the example to start from (default {DEFAULT_TEMPLATE}). {choices}",
    )
    parser.add_argument(
        "--name",
        help="language id (FUNCTIONS_WORKER_RUNTIME); default: derived from the directory name",
    )


def run(args: argparse.Namespace) -> int:
    """Create the project; print where it is and how to run it. Returns the exit status."""
    target: Path = args.directory
    try:
        name = create(target, args.template, args.name)
    except ScaffoldError as exc:
        print(f"workerkit new: {exc}", file=sys.stderr)
        return 1
    print(f"created {target.as_posix()}/ from the {args.template} template (language {name!r})")
    print("run it under the local host:")
    if (target / "requirements.txt").is_file():
        print(f"  python -m pip install -r {shell_path(target, '/requirements.txt')}")
        print(
            "    (what the worker needs besides workerkit, which is not on the package index "
            "yet: README.md says how to install it from a checkout or a wheel)"
        )
    print(f"  workerkit host {shell_path(target, '/app')} --worker {shell_path(target)}")
    print("test it:")
    print(f"  python -m pytest {shell_path(target, '/tests')}")
    indexing = " --worker-indexing" if _worker_indexing(target) else ""
    print(
        f"  workerkit conformance --app {shell_path(target, '/app')} "
        f"--cases {shell_path(target, '/conformance.json')}{indexing} "
        f"-- python3 {shell_path(target, '/worker.py')}"
    )
    print(
        f"then read {shell_path(target, '/README.md')}: the real Functions host, and the "
        "Dockerfile that puts both in one image"
    )
    return 0


def _worker_indexing(project: Path) -> bool:
    """Whether the project's ``worker.config.json`` asks for worker indexing."""
    try:
        config = json.loads((project / "worker.config.json").read_text(encoding="utf-8"))
        return str(config["description"].get("workerIndexing", "")).lower() == "true"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
