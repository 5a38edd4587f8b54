"""What the documentation users read with help() says, checked against what workerkit does."""

import asyncio
import contextvars
import inspect
import pydoc
import threading
import tomllib
from typing import Any

from conftest import ROOT, arun, until

import workerkit
from workerkit import FunctionInfo, Invocation, Worker, current_invocation_id
from workerkit._generated import AzureFunctionsRpcMessages as pb
from workerkit.emulator._triggers import timer_payload, trigger_data
from workerkit.testing import TestHost, binding
from workerkit.worker import HOOKS

# -- the package guide ----------------------------------------------------------------------


def test_package_guide_names_the_hooks_and_where_to_look_next() -> None:
    guide = workerkit.__doc__
    assert guide is not None
    assert "language worker" in guide
    for hook in HOOKS:
        assert hook in guide, hook
    for pointer in (
        "help(workerkit.Worker)",
        "help(workerkit.Invocation)",
        "workerkit.testing",
        "workerkit host APP_DIR --worker WORKER_DIR",
        "MyWorker.main()",
    ):
        assert pointer in guide, pointer


def test_help_shows_the_guide_before_the_class_reference() -> None:
    text = pydoc.render_doc(workerkit, renderer=pydoc.plaintext)
    guide_at = text.index("help(workerkit.Worker)")
    assert guide_at < text.index("CLASSES")
    # current_invocation_id takes no docstring of its own (a ContextVar): the guide has it.
    assert text.index("`current_invocation_id` is a") < text.index("CLASSES")


def test_every_export_has_its_own_documentation() -> None:
    for name in workerkit.__all__:
        obj = getattr(workerkit, name)
        if name == "current_invocation_id":
            assert name in (workerkit.__doc__ or "")
            continue
        doc = inspect.getdoc(obj) or ""
        # A dataclass without a docstring gets its signature as one.
        assert doc and not doc.startswith(f"{name}("), name


def test_input_documentation_covers_the_app_directory_and_bindings() -> None:
    function_doc = inspect.getdoc(FunctionInfo) or ""
    assert "function_app_directory" in function_doc
    assert "function.json" in function_doc and "queueName" in function_doc
    binding_doc = inspect.getdoc(workerkit.Binding) or ""
    assert "nothing more" in binding_doc and "function.json" in binding_doc
    init_doc = inspect.getdoc(workerkit.InitRequest) or ""
    assert "function_app_directory: the function app's directory" in init_doc
    invocation_doc = inspect.getdoc(Invocation) or ""
    for documented in ("timerTrigger", "queueTrigger", "httpTrigger", "trigger_metadata"):
        assert documented in invocation_doc, documented


# -- documented facts, checked on a real worker over a real stream --------------------------


class Recorder(Worker):
    """Records what the hooks received and what `current_invocation_id` was where."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, Any] = {}

    def on_function_load(self, function: FunctionInfo) -> None:
        self.seen["on_function_load"] = current_invocation_id.get()

    async def on_invocation(self, invocation: Invocation) -> None:
        seen = self.seen
        seen["inputs"] = dict(invocation.inputs)
        seen["trigger_metadata"] = dict(invocation.trigger_metadata)
        seen["hook"] = current_invocation_id.get()
        seen["task"] = await asyncio.create_task(_current())
        seen["to_thread"] = await asyncio.to_thread(current_invocation_id.get)
        seen["thread"] = await _in_a_thread(current_invocation_id.get)
        seen["copied into a thread"] = await _in_a_thread(
            contextvars.copy_context().run, current_invocation_id.get
        )
        if invocation.function.name == "waits":
            seen["waiting"] = current_invocation_id.get()  # everything above is recorded
            await asyncio.sleep(3600)  # until cancelled

    async def on_cancel(self, invocation: Invocation) -> None:
        self.seen["on_cancel"] = current_invocation_id.get()


class SyncRecorder(Recorder):
    def on_invocation(self, invocation: Invocation) -> None:  # type: ignore[override]
        self.seen["hook"] = current_invocation_id.get()
        box: list[str] = []
        thread = threading.Thread(target=lambda: box.append(current_invocation_id.get()))
        thread.start()
        thread.join(60)
        self.seen["thread"] = box[0]


async def _current() -> str:
    return current_invocation_id.get()


async def _in_a_thread(target: Any, *args: Any) -> str:
    box: list[str] = []
    thread = threading.Thread(target=lambda: box.append(target(*args)))
    thread.start()
    await asyncio.to_thread(thread.join, 60)
    return box[0]


def test_current_invocation_id_is_set_where_the_guide_says() -> None:
    worker = Recorder()

    async def scenario() -> None:
        async with TestHost() as host:
            conn = (await host.start_worker(worker)).connection
            await conn.init()
            await conn.load("f", "plain", bindings={"msg": binding("queueTrigger")})
            assert worker.seen["on_function_load"] == ""
            result = await conn.call("f", {"msg": "hello"}, invocation_id="inv-1")
            assert result.ok, result.error
            assert current_invocation_id.get() == ""  # outside invocations
            await conn.load("w", "waits", bindings={"msg": binding("queueTrigger")})
            pending = await conn.start_invocation("w", {"msg": "x"}, invocation_id="inv-2")
            await until(lambda: worker.seen.get("waiting") == "inv-2")
            await conn.cancel("inv-2")
            assert (await pending.result()).result.status == pb.StatusResultStatus.Cancelled
            await until(lambda: "on_cancel" in worker.seen)

    arun(scenario())
    assert worker.seen["hook"] == "inv-2"
    assert worker.seen["task"] == worker.seen["to_thread"] == "inv-2"
    assert worker.seen["copied into a thread"] == "inv-2"
    assert worker.seen["thread"] == ""
    assert worker.seen["on_cancel"] == ""


def test_current_invocation_id_in_a_plain_def_hook_and_its_threads() -> None:
    worker = SyncRecorder()

    async def scenario() -> None:
        async with TestHost() as host:
            conn = (await host.start_worker(worker)).connection
            await conn.init()
            await conn.load("f", "plain", bindings={"msg": binding("queueTrigger")})
            result = await conn.call("f", {"msg": "hello"}, invocation_id="inv-9")
            assert result.ok, result.error

    arun(scenario())
    assert worker.seen == {"on_function_load": "", "hook": "inv-9", "thread": ""}


def test_timer_and_queue_inputs_have_the_documented_shape() -> None:
    """What `Invocation`'s docstring promises for the host's timer and queue data (shaped
    by the emulator as the host shapes it)."""
    worker = Recorder()
    queue = {"type": "queueTrigger", "direction": "in", "name": "msg"}
    message, metadata = trigger_data(queue, '{"order": 7}', capabilities={})

    async def scenario() -> dict[str, Any]:
        async with TestHost() as host:
            conn = (await host.start_worker(worker)).connection
            await conn.init()
            await conn.load("t", "tick", bindings={"timer": binding("timerTrigger")})
            result = await conn.call("t", {"timer": timer_payload(None, None)})
            assert result.ok, result.error
            timer = dict(worker.seen)
            await conn.load("q", "orders", bindings={"msg": binding("queueTrigger")})
            result = await conn.call("q", {"msg": message}, trigger_metadata=metadata)
            assert result.ok, result.error
            return timer

    timer = arun(scenario())
    tick = timer["inputs"]["timer"]
    assert isinstance(tick, dict)
    assert {"Schedule", "ScheduleStatus", "IsPastDue"} <= set(tick)
    assert {"Last", "Next", "LastUpdated"} <= set(tick["ScheduleStatus"])
    assert tick["IsPastDue"] is False
    assert timer["trigger_metadata"] == {}  # a timer sends none

    assert worker.seen["inputs"] == {"msg": '{"order": 7}'}  # JSON stays text
    meta = worker.seen["trigger_metadata"]
    for key in ("Id", "PopReceipt", "InsertionTime", "ExpirationTime", "NextVisibleTime"):
        assert isinstance(meta[key], str), key
    assert meta["DequeueCount"] == 1 and isinstance(meta["DequeueCount"], int)
    assert meta["QueueTrigger"] == '{"order": 7}'


# -- packaging -------------------------------------------------------------------------------


def test_license_is_an_spdx_expression_the_build_backend_supports() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = config["project"]
    assert project["license"] == "MIT"
    # setuptools refuses a `License ::` classifier next to a license expression.
    assert not [c for c in project["classifiers"] if c.startswith("License ::")]
    # PEP 639 license expressions need setuptools 77 or later.
    assert "setuptools>=77" in config["build-system"]["requires"]
