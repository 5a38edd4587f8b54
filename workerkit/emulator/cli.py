"""``workerkit host``: run a function app against a language worker, like ``func start``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import traceback
from pathlib import Path

HELP = "run a function app against a language worker on this machine (like func start)"

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
}


def _size(text: str) -> int:
    """A byte count: ``1048576``, ``512KB``, ``100MB`` (binary units)."""
    stripped = text.strip().lower()
    digits = stripped.rstrip("kmgb")
    unit = stripped[len(digits) :]
    if not digits.isdigit() or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 1048576, 512KB or 100MB")
    return int(digits) * _UNITS[unit]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("the function timeout must be positive")
    return value


def _count(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= 10**9:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 for a free port)")
    return int(text)


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare ``workerkit host``'s arguments."""
    parser.add_argument(
        "app_dir",
        nargs="?",
        type=Path,
        default=Path("."),
        metavar="APP_DIR",
        help="the function app directory, with host.json (default: .)",
    )
    parser.add_argument(
        "--worker",
        "-w",
        dest="worker_dir",
        type=Path,
        metavar="WORKER_DIR",
        help="the directory with worker.config.json (default: the"
        " languageWorkers__<FUNCTIONS_WORKER_RUNTIME>__workerDirectory setting)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=None,
        help="HTTP port (default: local.settings.json Host.LocalHttpPort or 7071; 0: any free)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address or name to listen on (default 127.0.0.1; any other gets a warning"
        " saying whether it is loopback only)",
    )
    parser.add_argument(
        "--max-body-size",
        type=_size,
        default="100MB",
        metavar="SIZE",
        help="largest request body accepted, e.g. 10MB (default 100MB; larger: 413)",
    )
    parser.add_argument(
        "--max-connections",
        type=_count,
        default=1000,
        metavar="N",
        help="most client connections open at once (default 1000; more are closed at once)",
    )
    parser.add_argument(
        "--function-timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="override host.json functionTimeout (default there: 5 minutes)",
    )
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="also print the workers' system logs from Information (as func start --verbose)"
        " and every protocol message",
    )
    parser.add_argument(
        "--no-color", action="store_true", help="no colour even on a terminal (also: NO_COLOR)"
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run until Ctrl-C / SIGTERM (exit 0) or until the worker fails for good (exit 1)."""
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        print("workerkit host needs aiohttp: pip install 'workerkit[host]'", file=sys.stderr)
        return 1
    from ._console import Console
    from ._emulator import Emulator, EmulatorError, EmulatorOptions

    options = EmulatorOptions(
        app_dir=args.app_dir,
        worker_dir=args.worker_dir,
        host=args.host,
        port=args.port,
        max_body_size=args.max_body_size,
        function_timeout=args.function_timeout,
        max_connections=args.max_connections,
    )
    console = Console(color=False if args.no_color else None, verbose=args.verbose)
    emulator = Emulator(options, console)

    def report(error: BaseException | None) -> None:
        """An error that is the emulator's own bug: one line (with --verbose, the traceback),
        never an unhandled exception."""
        if error is None or isinstance(error, EmulatorError):
            return
        console.error(f"workerkit host: internal error, please report it: {error!r}")
        if args.verbose:
            traceback.print_exception(error, file=sys.stderr)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        signals = 0

        def on_signal() -> None:
            nonlocal signals
            signals += 1
            if signals == 1:
                console.info("Stopping: draining invocations (Ctrl+C again to kill the workers).")
                emulator.request_stop()
            else:
                emulator.request_kill()

        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, on_signal)
        try:
            starting = asyncio.create_task(emulator.start())
            stopped = asyncio.create_task(emulator.wait_stop_requested())
            await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not starting.done():  # Ctrl-C while starting
                starting.cancel()
                await asyncio.wait({starting})
                if not starting.cancelled():
                    report(starting.exception())
                return 1
            try:
                starting.result()
            except EmulatorError as exc:
                print(f"workerkit host: error: {exc}", file=sys.stderr)
                return 1
            return await emulator.run()
        except Exception as exc:  # a bug: say so, and still stop everything
            report(exc)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(emulator.stop(), 30)
            return 1
        finally:
            emulator.kill_workers()  # whatever happened, no worker outlives the host

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed
        emulator.kill_workers()
        return 130
