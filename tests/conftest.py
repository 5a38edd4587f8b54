"""Shared helpers: every scenario runs in a fresh event loop with an overall time limit."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from google_pb2 import Pb2, compile_pb2

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def arun(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
    """Run `coro` to completion in a new loop; fail (not hang) after `timeout` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture(scope="session")
def pb2(tmp_path_factory: pytest.TempPathFactory) -> Pb2:
    """Google's protobuf classes for our proto/, compiled once per session."""
    return compile_pb2(tmp_path_factory)
