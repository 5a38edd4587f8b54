"""The ``workerkit`` command: tools around workers (each subcommand lives in its own module).

A subcommand module exposes ``HELP: str``, ``configure(parser)`` to declare its arguments and
``run(args) -> int``; it keeps heavy imports inside ``run`` so ``workerkit --help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: subcommand -> module implementing it
COMMANDS: dict[str, str] = {
    "conformance": "workerkit.conformance",
    "host": "workerkit.emulator.cli",
    "new": "workerkit.scaffold",
}


def main(argv: Sequence[str] | None = None) -> int:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="workerkit", description="Tools for Azure Functions language workers."
    )
    parser.add_argument("--version", action="version", version=f"workerkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=module.HELP, description=module.HELP)
        module.configure(sub)
        sub.set_defaults(run=module.run)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
