"""The host's side (`workerkit._hostside`, public as `workerkit.testing`): launching a worker
with the host's argv and waiting for its stream, with the reason when none comes."""

from __future__ import annotations

import sys

import pytest
from conftest import arun

from workerkit.testing import StreamNotOpened, TestHost


def test_a_worker_that_exits_at_start_up_is_reported_at_once_with_its_stderr() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            code = "import sys; print('no module named workerkit', file=sys.stderr); sys.exit(3)"
            with pytest.raises(StreamNotOpened) as info:
                await host.spawn([sys.executable, "-c", code], timeout=None)
            assert (info.value.reason, info.value.returncode) == ("exited", 3)
            assert "worker exited with 3 before StartStream" in str(info.value)
            assert "no module named workerkit" in str(info.value)

    arun(scenario())


def test_a_worker_that_never_dials_times_out_and_its_argv_is_the_hosts() -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            # Prints its argv, then waits for ever: the host's timeout is the only way out.
            code = "import sys, time; print(sys.argv[1:], flush=True); time.sleep(600)"
            worker = await host.launch([sys.executable, "-c", code])
            assert worker.args is not None
            with pytest.raises(StreamNotOpened) as info:
                await host.wait_for_stream(worker, timeout=0.5)
            assert (info.value.reason, info.value.returncode) == ("timeout", None)
            assert worker.process.returncode is None  # still there: the caller decides
            worker.kill()
            await worker.wait(60)
            assert repr(worker.args.to_argv()) in worker.stdout.decode()

    arun(scenario())


def test_check_peer_may_wait_before_it_decides() -> None:
    # `workerkit host` waits for the pid of a worker still being started before it checks
    # a stream naming it: an impostor that dials in that window is refused, not accepted.
    import asyncio

    from conftest import open_stream_as, until

    async def scenario() -> None:
        decided = asyncio.Event()
        asked: list[str] = []

        async def check(worker_id: str, peer: tuple[str, int] | None) -> str | None:
            asked.append(worker_id)
            await decided.wait()
            return "not the process started for it"

        async with TestHost(check_peer=check) as host:
            args = host.host_args()  # launched, as far as the host knows
            impostor = asyncio.create_task(open_stream_as(host.port, args.worker_id))
            await until(lambda: asked)
            assert not impostor.done() and host.refused == []  # held until the check decides
            decided.set()
            assert await asyncio.wait_for(impostor, 60) == []  # ended, nothing sent
            assert host.refused == [(args.worker_id, "not the process started for it")]

    arun(scenario())
