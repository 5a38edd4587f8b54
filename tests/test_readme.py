"""Every ```python block of README.md runs (issue 13): a block is a complete program, run from
the repository root as a user would run it, unless its section is listed below.

- `WORKER_MODULES`: sections whose block is a worker module; it is served as a real worker
  subprocess under `TestHost` and its function invoked.
- `NOT_RUNNABLE`: sections whose block cannot run by nature, each with the reason. Keep it
  small: a new block is run by default.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, arun

from workerkit import HttpRequest
from workerkit.testing import FunctionLoadFailed, TestHost, http_bindings

README = ROOT / "README.md"

#: Section heading -> why its ```python block is not run.
NOT_RUNNABLE: dict[str, str] = {}


@dataclass(frozen=True)
class Block:
    """A ```python block: the heading of its section, its first line number, its code."""

    section: str
    line: int
    code: str

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")
        return f"line{self.line}-{slug}"


def python_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    section = ""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        elif line.startswith("```"):
            fence, language = line[:3], line[3:].strip()
            end = index + 1
            while end < len(lines) and not lines[end].startswith(fence):
                end += 1
            if language == "python":
                blocks.append(Block(section, index + 2, "\n".join(lines[index + 1 : end]) + "\n"))
            index = end
        index += 1
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks_and_the_lists_name_existing_sections() -> None:
    sections = {block.section for block in BLOCKS}
    assert "A complete worker" in sections and "Testing a worker" in sections
    assert set(NOT_RUNNABLE) <= sections, "an allow-list entry names no block: remove it"
    assert set(WORKER_MODULES) <= sections, "a worker-module entry names no block: remove it"


def test_fences_are_found_as_a_reader_sees_them() -> None:
    text = "# A\n```sh\n# not a heading\n```\n## B\n```python\nx = 1\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [Block("B", 7, "x = 1\n"), Block("B", 10, "y = 2\n")]


# -- worker modules ---------------------------------------------------------------------------


def serve_the_template_worker(worker_py: Path, tmp_path: Path) -> None:
    """The "A complete worker" block: each function is a text template read at load."""
    app = tmp_path / "app"
    (app / "hello").mkdir(parents=True)
    template = app / "hello" / "hello.txt"
    template.write_text("Hello, {name}!\n")

    async def scenario() -> None:
        async with TestHost() as host:
            worker = await host.spawn([sys.executable, str(worker_py)], cwd=app, timeout=60)
            assert worker.connection is not None
            conn = worker.connection
            await conn.init(function_app_directory=str(app))
            hello = await conn.load_function(
                "hello", bindings=http_bindings(), script_file=str(template)
            )
            url = "http://127.0.0.1/api/hello"
            ada = await conn.call(hello, {"req": HttpRequest("GET", url, query={"name": "Ada"})})
            assert ada.ok, ada.error
            assert ada.http is not None
            assert (ada.http.status_code, ada.http.text()) == (200, "Hello, Ada!\n")
            assert ada.http.headers == {"content-type": "text/plain"}
            assert [(log.level, log.message) for log in ada.logs if log.kind == "User"] == [
                ("Information", "rendering hello with ['name']")
            ]
            nameless = await conn.call(hello, {"req": HttpRequest("GET", url)})
            assert nameless.http is not None and nameless.http.status_code == 400
            assert "cannot render" in nameless.http.text()
            with pytest.raises(FunctionLoadFailed, match="cannot read"):
                await conn.load_function("gone", script_file=str(app / "gone.txt"))
            await conn.terminate()
            assert await worker.wait(60) == 0

    arun(scenario(), timeout=120)


#: Section heading -> how its block, a worker module, is served and called.
WORKER_MODULES: dict[str, Callable[[Path, Path], None]] = {
    "A complete worker": serve_the_template_worker,
}


# -- running them -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "block", [b for b in BLOCKS if b.section not in NOT_RUNNABLE], ids=lambda b: b.id
)
def test_readme_python_block_runs(block: Block, tmp_path: Path) -> None:
    path = tmp_path / "snippet.py"
    path.write_text(block.code, encoding="utf-8")
    try:
        compile(block.code, f"README.md line {block.line}", "exec")
    except SyntaxError as exc:
        pytest.fail(
            f"README.md line {block.line} ({block.section}) is not a complete program: {exc}"
            " (wrap top-level await in `async def main()` and `asyncio.run(main())`)"
        )
    serve = WORKER_MODULES.get(block.section)
    if serve is not None:
        serve(path, tmp_path)
        return
    done = subprocess.run(
        [sys.executable, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, (
        f"README.md line {block.line} ({block.section}) exited with {done.returncode}:\n"
        f"{done.stdout}{done.stderr}"
    )
