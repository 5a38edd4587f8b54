"""A local Functions host for a language worker: ``workerkit host``, and the pieces it reads with.

    workerkit host path/to/app --worker path/to/worker   # what make demo runs

The discovery API reads what the real host reads and rejects what it rejects, naming the
file and the reason:

- `read_worker_config` → `WorkerConfig` (`WorkerConfigError`): ``worker.config.json``,
  including ``%VAR%``, ``{workerDirectoryPath}``, profiles, ``processOptions`` and the
  ``languageWorkers:<language>:*`` settings; `WorkerConfig.command` is the host's exact argv.
- `discover_functions` → `FunctionSpec` list and `AppError` list: ``<app>/*/function.json``;
  `FunctionSpec.load_request` is the host's ``FunctionLoadRequest``.
- `read_host_json`, `read_local_settings`: the app's ``host.json`` and ``local.settings.json``.

`Emulator` (with `EmulatorOptions`) runs a function app against a worker subprocess: HTTP
triggers on ``http://127.0.0.1:7071/api/...``, timers, and ``POST /admin/functions/<name>``
for other triggers; an HTTP request for a worker that reports ``HttpUri`` is forwarded to it
and its response relayed as it comes (HTTP streaming, as the host's proxy does). It needs
aiohttp (``pip install 'workerkit[host]'``), imported only when it starts; nothing here
imports aiohttp.
"""

from ._app import (
    AppError,
    FunctionSpec,
    HostSettings,
    LocalSettings,
    discover_functions,
    functions_from_metadata,
    read_host_json,
    read_local_settings,
)
from ._config import WorkerConfigError, read_worker_config
from ._console import Console
from ._cron import CronSchedule, IntervalSchedule, ScheduleError, parse_schedule
from ._emulator import Emulator, EmulatorError, EmulatorOptions
from ._launch import WorkerConfig

__all__ = [
    "AppError",
    "Console",
    "CronSchedule",
    "Emulator",
    "EmulatorError",
    "EmulatorOptions",
    "FunctionSpec",
    "HostSettings",
    "IntervalSchedule",
    "LocalSettings",
    "ScheduleError",
    "WorkerConfig",
    "WorkerConfigError",
    "discover_functions",
    "functions_from_metadata",
    "parse_schedule",
    "read_host_json",
    "read_local_settings",
    "read_worker_config",
]

for _name in __all__:
    _obj = globals()[_name]
    try:
        _obj.__module__ = __name__
    except (AttributeError, TypeError):
        pass
del _name, _obj
