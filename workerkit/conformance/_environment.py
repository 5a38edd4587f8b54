"""The environment a worker under test is launched with: what ``func start`` (Core Tools,
the host's process) gives the host for the app, and what the host then adds for a worker.

Core Tools' part is `workerkit.emulator`'s (``core_tools_environment``, which
``workerkit host`` uses too); the host's is ``CreateWorkerProcess`` in
Azure/azure-functions-host ``src/WebJobs.Script/Workers/Rpc/RpcWorkerProcess.cs`` and
``src/WebJobs.Script/Workers/ProcessManagement/DefaultWorkerProcessFactory.cs``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def launch_environment(
    base: Mapping[str, str],
    app_dir: Path,
    worker_dir: str | os.PathLike[str],
    *,
    settings: Mapping[str, str] | None = None,
    connection_strings: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """`base` (the environment ``func start`` runs in) with what Core Tools and the host add.

    Core Tools: ``AzureWebJobsScriptRoot`` (= `app_dir`), ``WEBSITE_HOSTNAME``
    (``localhost:7071``), ``AZURE_FUNCTIONS_ENVIRONMENT=Development``, the app's `settings`
    (``local.settings.json`` ``Values``) and the rest it sets, each only where `base` has no
    non-empty value. The host: ``FUNCTIONS_WORKER_DIRECTORY``,
    ``FUNCTIONS_APPLICATION_DIRECTORY`` and, for a python worker,
    ``PYTHON_THREADPOOL_THREAD_COUNT=1000`` unless set.

    Raises:
        ValueError: ``func start`` would stop before starting the host (the message says why).
    """
    from ..emulator._launch import CoreToolsError, core_tools_environment

    try:
        env = core_tools_environment(
            app_dir, settings=settings, environ=base, connection_strings=connection_strings
        )
    except CoreToolsError as exc:
        raise ValueError(str(exc)) from None
    env["FUNCTIONS_APPLICATION_DIRECTORY"] = str(app_dir)
    env["FUNCTIONS_WORKER_DIRECTORY"] = os.fspath(worker_dir)
    if env.get("FUNCTIONS_WORKER_RUNTIME", "").lower() == "python":
        env["PYTHON_THREADPOOL_THREAD_COUNT"] = env.get("PYTHON_THREADPOOL_THREAD_COUNT") or "1000"
    return env
