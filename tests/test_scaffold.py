"""`workerkit new`: a template copied, renamed, refusing to overwrite, and ready to run: its
own tests and conformance cases pass, its commands work when pasted, and its Dockerfile
matches its worker.config.json."""

from __future__ import annotations

import fnmatch
import glob
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import EXAMPLES, ROOT, arun
from example_apps import SUCCESS, function_id, load_app, start

from workerkit import HttpRequest, scaffold
from workerkit.testing import TestHost

TEMPLATES = list(scaffold.TEMPLATES)


def source_files(directory: Path) -> set[Path]:
    """The files of an example that a new project gets: no caches, no dot-files but the kept."""
    return {
        p.relative_to(directory)
        for p in directory.rglob("*")
        if p.is_file()
        and not any(
            part == "__pycache__"
            or part.endswith(".pyc")
            or (part.startswith(".") and part not in scaffold.KEPT_DOTFILES)
            for part in p.relative_to(directory).parts
        )
    }


@pytest.mark.parametrize("template", TEMPLATES)
def test_a_new_project_is_the_template_renamed(tmp_path: Path, template: str) -> None:
    target = tmp_path / "Acme-Widgets"
    assert scaffold.create(target, template) == "acme_widgets"
    original = scaffold.TEMPLATES[template]
    where = target.as_posix()

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
    assert f"workerkit host {where}/app --worker {where}" in readme
    assert f"python -m pytest {where}/tests" in readme
    assert f"--cases {where}/conformance.json" in readme
    assert f"cd {where}\nexport FUNCTIONS_WORKER_RUNTIME=acme_widgets\n" in readme
    assert 'languageWorkers__acme_widgets__workerDirectory="$PWD"' in readme
    assert f"examples/{original.directory}" not in readme
    assert "tests/test_examples_" not in readme  # this repository's tests are not the project's
    assert "`tests/test_acme_widgets.py`" in readme
    dockerfile = (target / "Dockerfile").read_text()
    assert dockerfile.startswith("# This worker and its function app under the Azure Functions")
    assert "FUNCTIONS_WORKER_RUNTIME=acme_widgets \\" in dockerfile
    assert "/azure-functions-host/workers/acme_widgets/" in dockerfile
    assert f"workers/{original.language}/" not in dockerfile
    tests = (target / "tests" / "test_acme_widgets.py").read_text()
    assert "from workerkit.testing import" in tests

    # Everything else is copied as it is, the sample app included; no caches.
    copied = {p.relative_to(target) for p in target.rglob("*") if p.is_file()}
    source = EXAMPLES / original.directory
    old_tests, new_tests = Path(original.test_file), Path("tests/test_acme_widgets.py")
    expected = source_files(source)
    assert {old_tests, Path(".dockerignore"), Path("conformance.json")} <= expected
    assert copied == expected - {old_tests} | {new_tests}
    for path in expected - {Path(n) for n in scaffold.RENAMED_FILES} - {old_tests}:
        assert (target / path).read_bytes() == (source / path).read_bytes()
        assert (target / path).stat().st_mode == (source / path).stat().st_mode


@pytest.mark.parametrize("template", TEMPLATES)
def test_a_new_project_passes_its_own_tests_and_conformance_cases(
    tmp_path: Path, template: str
) -> None:
    # A directory name with a space, renamed: the project's checks run as they are.
    target = tmp_path / "my project"
    scaffold.create(target, template)
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"],
        cwd=target, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert tests.returncode == 0, tests.stdout + tests.stderr
    passed = re.findall(r"^tests/test_my_project\.py::\w+ PASSED", tests.stdout, re.MULTILINE)
    assert len(passed) >= 3, tests.stdout

    config = json.loads((target / "worker.config.json").read_text())
    indexing = ["--worker-indexing"] if config["description"].get("workerIndexing") else []
    checked = subprocess.run(
        [sys.executable, "-m", "workerkit", "conformance", "--app", "app",
         "--cases", "conformance.json", *indexing, "--json", "--", sys.executable, "worker.py"],
        cwd=target, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    results = {s["name"]: s["result"] for s in report["scenarios"]}
    cases = json.loads((target / "conformance.json").read_text())["cases"]
    assert len(cases) >= 4
    assert all(results[f"case:{case['name']}"] == "pass" for case in cases), results
    assert report["counts"]["fail"] == 0 and report["counts"]["warn"] == 0, results


def test_the_new_projects_run(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            for template in TEMPLATES:
                target = tmp_path / f"my{template}"
                scaffold.create(target, template)
                worker, conn = await start(host, "", app=target / "app", worker_dir=target)
                loads = await load_app(conn, target / "app")
                assert all(r.result.status == SUCCESS for r in loads.values()), loads
                request = HttpRequest("GET", "http://x/api/hello?name=Ada", query={"name": "Ada"})
                result = await conn.call(function_id("hello"), {"req": request})
                assert result.http is not None, template
                assert result.http.text() == "Hello, Ada!\n", template
                await conn.terminate()
                assert await worker.wait(60) == 0

    arun(scenario())


# -- the Dockerfile --------------------------------------------------------------------------
@dataclass
class Stage:
    """One build stage of a Dockerfile: its base, name and instructions."""

    base: str
    name: str = ""
    copies: list[tuple[str | None, list[str], str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    runs: list[str] = field(default_factory=list)


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the stages of a Dockerfile (the instructions used here)."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
        else:
            logical.append(pending + line)
            pending = ""
    assert not pending, "a continued line at the end"
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instruction, _, rest = line.strip().partition(" ")
        words = shlex.split(rest)
        match instruction.upper():
            case "ARG" if not stages:
                name, _, default = rest.strip().partition("=")
                args[name] = default
            case "FROM":
                base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
                name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
                stages.append(Stage(base, name))
            case "COPY":
                source_stage = None
                if words[0].startswith("--from="):
                    source_stage = words.pop(0).removeprefix("--from=")
                stages[-1].copies.append((source_stage, words[:-1], words[-1]))
            case "ENV":
                stages[-1].env.update(word.split("=", 1) for word in words)
            case "RUN":
                stages[-1].runs.append(rest)
            case "EXPOSE":
                pass
            case other:
                raise AssertionError(f"an instruction this test does not check: {other}")
    return args, stages


def docker_ignored(project: Path) -> list[str]:
    lines = (project / ".dockerignore").read_text().splitlines()
    return [p.strip().rstrip("/") for p in lines if p.strip() and not p.startswith("#")]


def is_ignored(path: str, patterns: list[str]) -> bool:
    parts = path.rstrip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    return any(fnmatch.fnmatch(p, pattern) for p in prefixes for pattern in patterns)


def check_dockerfile(project: Path) -> None:
    """The project's Dockerfile puts its worker and app where the host looks, under the
    language of its worker.config.json, with the interpreter the config's command needs."""
    description = json.loads((project / "worker.config.json").read_text())["description"]
    language = description["language"]
    args, stages = parse_dockerfile((project / "Dockerfile").read_text())
    final = stages[-1]
    built = {stage.name: stage for stage in stages if stage.name}
    # Microsoft's host image for custom handlers and other languages: no language worker.
    assert final.base == "mcr.microsoft.com/azure-functions/base:4"
    env = final.env
    assert env["FUNCTIONS_WORKER_RUNTIME"] == language
    assert env["AzureFunctionsJobHost__Logging__Console__IsEnabled"] == "true"
    assert env["ASPNETCORE_URLS"] == "http://+:80"
    copies = {dest.rstrip("/"): sources for stage, sources, dest in final.copies if not stage}

    # The worker directory, under the host's workers/, with the config, the worker and
    # every module of it.
    worker_sources = copies[f"/azure-functions-host/workers/{language}"]
    modules = {p.name for p in project.glob("*.py")}
    assert {"worker.config.json", description["defaultWorkerPath"], *modules} <= set(worker_sources)
    # The app where AzureWebJobsScriptRoot says.
    assert copies[env["AzureWebJobsScriptRoot"]] == ["app/"]
    assert (project / "app" / "host.json").is_file()
    build_context = [s for sources in copies.values() for s in sources]
    for source in build_context:
        assert (project / source).exists(), source

    # The config's executable (python3) is the interpreter of the venv the build stage made,
    # copied into the final image with the Python it links to.
    executable = env[f"languageWorkers__{language}__defaultExecutablePath"]
    assert executable == f"/opt/venv/bin/{description['defaultExecutablePath']}"
    copied_in = {(stage, sources[0], dest) for stage, sources, dest in final.copies if stage}
    assert copied_in == {
        ("python", "/opt/venv", "/opt/venv"),
        ("python", "/opt/python", "/opt/python"),
    }
    builder = built["python"]
    assert builder.base == final.base  # the same libraries under the interpreter
    assert builder.env["UV_PYTHON_INSTALL_DIR"] == "/opt/python"
    install = " ".join(builder.runs)
    assert "uv venv --python 3.12 /opt/venv" in install
    assert "uv pip install --python /opt/venv/bin/python /tmp/wheels/workerkit-*.whl" in install
    builder_copies = {dest: sources for stage, sources, dest in builder.copies if not stage}
    assert builder_copies["/tmp/wheels/"] == ["wheels/"]
    if (project / "requirements.txt").exists():
        assert builder_copies["/tmp/requirements.txt"] == ["requirements.txt"]
        assert "-r /tmp/requirements.txt" in install
    assert built["uv"].base == args["UV_IMAGE"]

    # .dockerignore keeps the tests and local settings out, never what the build copies.
    ignored = docker_ignored(project)
    assert is_ignored("tests/test_x.py", ignored)
    assert is_ignored("app/local.settings.json", ignored)
    assert is_ignored("app/hello/__pycache__/x.pyc", ignored)
    for source in [*build_context, "wheels/workerkit-1.0-py3-none-any.whl", "requirements.txt"]:
        assert not is_ignored(source, ignored), source
    for path in source_files(project):
        if path.parts[0] == "app":
            assert not is_ignored(path.as_posix(), ignored) or path.name == "local.settings.json"


@pytest.mark.parametrize("template", TEMPLATES)
def test_the_dockerfile_matches_the_worker_config(tmp_path: Path, template: str) -> None:
    check_dockerfile(EXAMPLES / scaffold.TEMPLATES[template].directory)
    target = tmp_path / "Acme-Widgets"
    scaffold.create(target, template)
    check_dockerfile(target)


@pytest.mark.parametrize(
    ("file", "old", "new"),
    [
        ("worker.config.json", '"language": "shop"', '"language": "store"'),
        (
            "worker.config.json",
            '"defaultWorkerPath": "worker.py"',
            '"defaultWorkerPath": "main.py"',
        ),
        (
            "worker.config.json",
            '"defaultExecutablePath": "python3"',
            '"defaultExecutablePath": "py"',
        ),
        ("Dockerfile", "COPY app/ /home/site/wwwroot/", "COPY app/ /home/site/app/"),
        (".dockerignore", "tests/", "*.py"),
    ],
)
def test_the_dockerfile_check_catches_a_mismatch(
    tmp_path: Path, file: str, old: str, new: str
) -> None:
    target = tmp_path / "shop"
    scaffold.create(target, "minimal")
    check_dockerfile(target)
    path = target / file
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new))
    with pytest.raises((AssertionError, KeyError)):
        check_dockerfile(target)


# -- the command line ------------------------------------------------------------------------
def new(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workerkit", "new", *args],
        capture_output=True, text=True, cwd=cwd, timeout=30,
    )  # fmt: skip


def test_the_command_line(tmp_path: Path) -> None:
    done = new(tmp_path, "hello-lua", "--template", "lua")
    assert done.returncode == 0, done.stderr
    assert "created hello-lua/ from the lua template (language 'hello_lua')" in done.stdout
    assert "workerkit host hello-lua/app --worker hello-lua" in done.stdout
    assert "python -m pip install -r hello-lua/requirements.txt" in done.stdout
    assert "besides workerkit, which is not on the package index yet" in done.stdout
    assert "python -m pytest hello-lua/tests" in done.stdout

    # A non-empty directory is refused and left alone.
    before = sorted(p.name for p in (tmp_path / "hello-lua").iterdir())
    again = new(tmp_path, "hello-lua", "--template", "python")
    assert again.returncode == 1
    assert "hello-lua exists and is not an empty directory; nothing was written" in again.stderr
    assert sorted(p.name for p in (tmp_path / "hello-lua").iterdir()) == before

    # An empty directory is fine; --name sets the language.
    (tmp_path / "empty").mkdir()
    done = new(tmp_path, "empty", "-t", "process", "--name", "shell_funcs")
    assert done.returncode == 0, done.stderr
    config = json.loads((tmp_path / "empty" / "worker.config.json").read_text())
    assert config["description"]["language"] == "shell_funcs"

    for bad, why in (("python", "built-in runtime"), ("My-Lang", "lower-case letters")):
        refused = new(tmp_path, "other", "-t", "lua", "--name", bad)
        assert refused.returncode == 1 and why in refused.stderr
        assert not (tmp_path / "other").exists()
    assert new(tmp_path, "x", "-t", "cobol").returncode == 2  # argparse: invalid choice

    # Every example is offered, each with what it is.
    helped = new(tmp_path, "--help")
    assert all(f"{name}: {t.summary}" in " ".join(helped.stdout.split()) for name, t in
               scaffold.TEMPLATES.items())  # fmt: skip


def test_the_default_template_is_the_smallest_worker(tmp_path: Path) -> None:
    done = new(tmp_path, "plain")
    assert done.returncode == 0, done.stderr
    assert "created plain/ from the minimal template (language 'plain')" in done.stdout
    assert "requirements.txt" not in done.stdout
    assert (tmp_path / "plain" / "app" / "hello" / "hello.txt").is_file()
    assert "class PlainWorker(workerkit.Worker):" in (tmp_path / "plain" / "worker.py").read_text()
    assert scaffold.DEFAULT_TEMPLATE == "minimal"
    assert scaffold.TEMPLATES["minimal"].directory == "templates"


def test_commands_for_a_directory_with_a_space_work_when_pasted(tmp_path: Path) -> None:
    done = new(tmp_path, "my worker")
    assert done.returncode == 0, done.stderr
    printed = done.stdout
    assert "workerkit host 'my worker/app' --worker 'my worker'" in printed
    readme = (tmp_path / "my worker" / "README.md").read_text()
    assert "workerkit host 'my worker/app' --worker 'my worker'" in readme
    assert "cd 'my worker'\n" in readme

    # The printed test commands, pasted into a shell (`python` and `workerkit` being this
    # interpreter's); each must find the project.
    python = shlex.quote(sys.executable)
    pasted = [
        line.strip()
        for line in printed.splitlines()
        if line.strip().startswith(("python -m pytest", "workerkit conformance"))
    ]
    assert len(pasted) == 2, printed
    for line in pasted:
        line = re.sub(r"^python ", f"{python} ", line)
        line = re.sub(r"^workerkit ", f"{python} -m workerkit ", line)
        line = line.replace(" python3 ", f" {python} ")
        ran = subprocess.run(
            ["bash", "-c", line], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert ran.returncode == 0, f"{line}\n{ran.stdout}\n{ran.stderr}"


def test_the_lua_requirements_do_not_name_workerkit_yet() -> None:
    lua = EXAMPLES / "lua"
    lines = (lua / "requirements.txt").read_text().splitlines()
    assert [line for line in lines if line and not line.startswith("#")] == ["lupa>=2.0"]
    text = "\n".join(lines) + (lua / "README.md").read_text()
    assert "python -m pip install /path/to/workerkit" in text
    assert "python -m pip install wheels/workerkit-*.whl" in text


def test_language_ids_derived_from_directory_names() -> None:
    assert scaffold.language_id("My-Lua worker") == "my_lua_worker"
    assert scaffold.language_id("42things") == "w42things"
    assert scaffold.language_id("__x__y__") == "x_y"


def test_the_templates_ship_inside_the_package() -> None:
    # workerkit/_examples is what an installed wheel carries (pyproject package-data);
    # in a checkout it is a symlink to examples/.
    root = scaffold.template_root()
    for template in scaffold.TEMPLATES.values():
        for name in ("worker.config.json", "README.md", "Dockerfile", ".dockerignore"):
            assert (root / template.directory / name).is_file(), (template, name)
        assert (root / template.directory / template.test_file).is_file()
    # setuptools expands package-data with glob(recursive=True), which skips dot-files
    # unless named: every file a new project gets must match a pattern.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = {
        Path(found)
        for pattern in pyproject["package-data"]["workerkit._examples"]
        for found in glob.glob(pattern, root_dir=EXAMPLES, recursive=True)
        if (EXAMPLES / found).is_file()
    }
    for template in scaffold.TEMPLATES.values():
        directory = EXAMPLES / template.directory
        wanted = {Path(template.directory) / p for p in source_files(directory)}
        assert wanted <= shipped, wanted - shipped


def test_public_names_leave_the_command_out() -> None:
    assert sorted(scaffold.__all__) == [
        "DEFAULT_TEMPLATE", "ScaffoldError", "TEMPLATES", "create", "language_id",
    ]  # fmt: skip
    # `workerkit new` reaches its plumbing by attribute (workerkit.__main__.COMMANDS).
    assert callable(scaffold.configure) and callable(scaffold.run) and scaffold.HELP
