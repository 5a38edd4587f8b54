"""`workerkit new`: a template copied, renamed, refusing to overwrite, and ready to run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, arun
from example_apps import SUCCESS, function_id, load_app, start

from workerkit import HttpRequest, scaffold
from workerkit.convert import decode_output
from workerkit.testing import TestHost


@pytest.mark.parametrize("template", sorted(scaffold.TEMPLATES))
def test_a_new_project_is_the_template_renamed(tmp_path: Path, template: str) -> None:
    target = tmp_path / "Acme-Widgets"
    assert scaffold.create(target, template) == "acme_widgets"
    original = scaffold.TEMPLATES[template]

    config = json.loads((target / "worker.config.json").read_text())
    assert config["description"]["language"] == "acme_widgets"
    assert config["processOptions"]["initializationTimeout"] == "00:02:00"
    worker = (target / "worker.py").read_text()
    assert "class AcmeWidgetsWorker(workerkit.Worker):" in worker
    assert 'runtime_name = "acme_widgets"' in worker
    assert "AcmeWidgetsWorker.main()" in worker
    assert original.class_name not in worker
    readme = (target / "README.md").read_text()
    assert readme.startswith("# acme_widgets: ")
    assert f"workerkit host {target.as_posix()}/app --worker {target.as_posix()}" in readme
    assert "FUNCTIONS_WORKER_RUNTIME=acme_widgets" in readme
    assert "languageWorkers__acme_widgets__workerDirectory" in readme
    assert f"examples/{template}" not in readme
    assert f"FUNCTIONS_WORKER_RUNTIME={original.language}\n" not in readme
    # Everything else is copied as it is, the sample app included; no caches.
    copied = {p.relative_to(target) for p in target.rglob("*") if p.is_file()}
    source = EXAMPLES / template
    expected = {
        p.relative_to(source)
        for p in source.rglob("*")
        if p.is_file()
        and not any(
            part == "__pycache__" or part.startswith(".") for part in p.relative_to(source).parts
        )
    }
    assert copied == expected
    for path in expected - {Path(n) for n in scaffold.RENAMED_FILES}:
        assert (target / path).read_bytes() == (source / path).read_bytes()
        assert (target / path).stat().st_mode == (source / path).stat().st_mode


def test_the_new_projects_run(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            for template in sorted(scaffold.TEMPLATES):
                target = tmp_path / f"my{template}"
                scaffold.create(target, template)
                worker, conn = await start(host, "", app=target / "app", worker_dir=target)
                loads = await load_app(conn, target / "app")
                assert all(r.result.status == SUCCESS for r in loads.values()), loads
                request = HttpRequest("GET", "http://x/api/hello?name=Ada", query={"name": "Ada"})
                reply = await conn.invoke(function_id("hello"), {"req": request})
                assert decode_output(reply.return_value).text() == "Hello, Ada!\n", template
                await conn.terminate()
                assert await worker.wait(60) == 0

    arun(scenario())


def test_the_command_line(tmp_path: Path) -> None:
    def new(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "workerkit", "new", *args],
            capture_output=True, text=True, cwd=tmp_path, timeout=30,
        )  # fmt: skip

    done = new("hello-lua", "--template", "lua")
    assert done.returncode == 0, done.stderr
    assert "created hello-lua/ from the lua template (language 'hello_lua')" in done.stdout
    assert "workerkit host hello-lua/app --worker hello-lua" in done.stdout

    # A non-empty directory is refused and left alone.
    before = sorted(p.name for p in (tmp_path / "hello-lua").iterdir())
    again = new("hello-lua", "--template", "python")
    assert again.returncode == 1
    assert "hello-lua exists and is not an empty directory; nothing was written" in again.stderr
    assert sorted(p.name for p in (tmp_path / "hello-lua").iterdir()) == before

    # An empty directory is fine; --name sets the language.
    (tmp_path / "empty").mkdir()
    done = new("empty", "-t", "process", "--name", "shell_funcs")
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "empty" / "worker.config.json").read_text())
    assert config["description"]["language"] == "shell_funcs"

    for bad, why in (("python", "built-in runtime"), ("My-Lang", "lower-case letters")):
        refused = new("other", "-t", "lua", "--name", bad)
        assert refused.returncode == 1 and why in refused.stderr
        assert not (tmp_path / "other").exists()
    assert new("x", "-t", "cobol").returncode == 2  # argparse: invalid choice


def test_language_ids_derived_from_directory_names() -> None:
    assert scaffold.language_id("My-Lua worker") == "my_lua_worker"
    assert scaffold.language_id("42things") == "w42things"
    assert scaffold.language_id("__x__y__") == "x_y"


def test_the_templates_ship_inside_the_package() -> None:
    # workerkit/_examples is what an installed wheel carries (pyproject package-data);
    # in a checkout it is a symlink to examples/.
    root = scaffold.template_root()
    for template in scaffold.TEMPLATES:
        assert (root / template / "worker.config.json").is_file()
        assert (root / template / "README.md").is_file()


def test_public_names_leave_the_command_out() -> None:
    assert sorted(scaffold.__all__) == ["ScaffoldError", "TEMPLATES", "create", "language_id"]
    # `workerkit new` reaches its plumbing by attribute (workerkit.__main__.COMMANDS).
    assert callable(scaffold.configure) and callable(scaffold.run) and scaffold.HELP
