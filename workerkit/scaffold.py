"""``workerkit new DIR --template {python,process,lua}``: start a worker from an example.

Copies ``examples/<template>`` (shipped inside the package as ``workerkit/_examples``) into
DIR and renames it: the language id in ``worker.config.json`` (what
``FUNCTIONS_WORKER_RUNTIME`` selects), the worker class and ``runtime_name`` in
``worker.py``, and the title and commands of the README. The sample app comes along, so the
new worker runs at once under ``workerkit host DIR/app --worker DIR``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

# `HELP`, `configure` and `run` are the `workerkit new` command, which workerkit.__main__ finds
# here; they are not part of the Python API.
__all__ = ["TEMPLATES", "ScaffoldError", "create", "language_id"]

HELP = "create a new worker project from a template (python, process or lua)"


@dataclass(frozen=True, slots=True)
class Template:
    """An example that `create` can copy, and the names in it that `create` replaces."""

    language: str
    class_name: str
    summary: str


TEMPLATES: dict[str, Template] = {
    "python": Template("pyworker", "PythonWorker", "Python functions, the classic way"),
    "process": Template("process", "ProcessWorker", "each function an executable"),
    "lua": Template("lua", "LuaWorker", "Lua functions in an embedded interpreter"),
}
#: Runtime names the real host already uses: a custom worker must not take them.
RESERVED = frozenset(
    {"python", "node", "java", "powershell", "dotnet", "dotnet-isolated", "custom", "native"}
)
#: Files whose text mentions the names; the sample app is copied unchanged.
RENAMED_FILES = ("worker.py", "worker.config.json", "README.md")
_LANGUAGE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


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


def create(target: Path, template: str, language: str | None = None) -> str:
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
    source = template_root() / template
    shutil.copytree(source, target, ignore=_IGNORE, dirs_exist_ok=True)

    class_name = "".join(part.capitalize() for part in name.split("_"))
    if not class_name.endswith("Worker"):
        class_name += "Worker"
    replacements: list[tuple[re.Pattern[str], str]] = [
        (re.compile(rf"\b{spec.class_name}\b"), class_name),
        (re.compile(rf'(?<="language": )"{spec.language}"'), f'"{name}"'),
        (re.compile(rf'(?<=runtime_name = )"{spec.language}"'), f'"{name}"'),
        (re.compile(rf"(?<=FUNCTIONS_WORKER_RUNTIME=){spec.language}\b"), name),
        (re.compile(rf"(?<=languageWorkers__){spec.language}(?=__)"), name),
        (re.compile(rf"(?<=workers/){spec.language}\b"), name),
        (re.compile(rf"\bexamples/{template}\b"), target.as_posix()),
        (re.compile(r"\A# .*"), f"# {name}: {spec.summary} (from the workerkit template)"),
    ]
    for file_name in RENAMED_FILES:
        path = target / file_name
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            for pattern, new in replacements:
                text = pattern.sub(new.replace("\\", "\\\\"), text)
            path.write_text(text, encoding="utf-8")
    return name


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of ``workerkit new``."""
    parser.add_argument("directory", type=Path, help="the new project (must not exist, or empty)")
    parser.add_argument(
        "--template", "-t", choices=sorted(TEMPLATES), required=True, help="what to start from"
    )
    parser.add_argument(
        "--name",
        help="language id (FUNCTIONS_WORKER_RUNTIME); default: derived from the directory name",
    )


def run(args: argparse.Namespace) -> int:
    """Create the project; print where it is and how to run it. Returns the exit status."""
    try:
        name = create(args.directory, args.template, args.name)
    except ScaffoldError as exc:
        print(f"workerkit new: {exc}", file=sys.stderr)
        return 1
    where = args.directory.as_posix()
    print(f"created {where}/ from the {args.template} template (language {name!r})")
    print("run it against the local emulator:")
    if (args.directory / "requirements.txt").is_file():
        print(f"  python -m pip install -r {where}/requirements.txt")
    print(f"  workerkit host {where}/app --worker {where}")
    print(f"then read {where}/README.md to install it into a real Functions host")
    return 0
