"""Shared helpers: every scenario runs in a fresh event loop with an overall time limit."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def arun(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    """Run `coro` to completion in a new loop; fail (not hang) after `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def python() -> str:
    return sys.executable
