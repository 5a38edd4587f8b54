"""The host's side (`workerkit._hostside`, public as `workerkit.testing`): launching a worker
with the host's argv and waiting for its stream, with the reason when none comes."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from conftest import arun

from workerkit.cli import HostArgs
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


def test_launch_with_a_complete_argv_runs_it_as_given_with_the_environment_as_given() -> None:
    # The emulator's command line has the host's arguments inside it, not at its end.
    async def scenario() -> None:
        async with TestHost() as host:
            args = host.host_args()
            code = "import os, sys; print(sys.argv[1:], os.environ.get('PYTHONUNBUFFERED'))"
            argv = [sys.executable, "-c", code, *args.to_argv(), "--after"]
            env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
            worker = await host.launch(args=args, argv=argv, env=env)
            assert worker.args is args
            assert await worker.wait(60) == 0
            assert worker.stdout.decode().strip() == f"{[*args.to_argv(), '--after']!r} None"

            with pytest.raises(ValueError):
                await host.launch(argv=argv)  # which worker id is in it?
            with pytest.raises(ValueError):
                await host.launch([sys.executable], args=args, argv=argv)
            with pytest.raises(ValueError):
                await host.launch([sys.executable], args=HostArgs("127.0.0.1", 1, "stray", "r"))

    arun(scenario())


@pytest.mark.skipif(not hasattr(os, "getpgid"), reason="process groups are POSIX")
@pytest.mark.parametrize("new_session", [False, True])
def test_launch_may_start_the_worker_in_a_session_of_its_own(new_session: bool) -> None:
    async def scenario() -> None:
        async with TestHost() as host:
            code = "import os; print(os.getpgid(0) == os.getpid(), os.getsid(0) == os.getpid())"
            worker = await host.launch([sys.executable, "-c", code], start_new_session=new_session)
            assert await worker.wait(60) == 0
            assert worker.stdout.decode().split() == [str(new_session)] * 2

    arun(scenario())


def test_launch_may_hand_the_output_over_line_by_line_instead_of_collecting_it() -> None:
    async def scenario() -> None:
        lines: dict[bool, list[bytes]] = {False: [], True: []}
        async with TestHost() as host:
            code = (
                "import sys; sys.stdout.write('one\\r\\ntwo'); sys.stdout.flush();"
                " sys.stderr.write('err\\n' + 'x' * 200000 + '\\nlast\\n')"
            )
            worker = await host.launch(
                [sys.executable, "-c", code],
                on_output=lambda line, stderr: lines[stderr].append(line),
            )
            assert await worker.wait(60) == 0  # and its output all read
            assert (worker.stdout, worker.stderr) == (bytearray(), bytearray())
        assert lines[False] == [b"one\r", b"two"]  # the last one without its newline too
        err = lines[True]
        assert (err[0], err[-1]) == (b"err", b"last")
        long = err[1:-1]  # in pieces, none much longer than 64 KiB
        assert len(long) > 1 and max(map(len, long)) <= 2 * 65536
        assert b"".join(long) == b"x" * 200000

    arun(scenario())


@pytest.mark.parametrize("refusals_fail", [True, False])
def test_wait_for_stream_may_wait_on_past_a_refused_stream(
    refusals_fail: bool, tmp_path: Path
) -> None:
    # The emulator keeps waiting for its own worker when a stray stream is refused.
    from conftest import open_stream_as

    async def scenario() -> None:
        go = tmp_path / "go"
        async with TestHost() as host:
            # Exits (5) once told to: after the stray stream below was refused.
            code = (
                "import os, sys, time\n"
                f"while not os.path.exists({str(go)!r}): time.sleep(0.01)\n"
                "sys.exit(5)"
            )
            worker = await host.launch([sys.executable, "-c", code])
            waiting = asyncio.create_task(
                host.wait_for_stream(worker, timeout=None, refusals_fail=refusals_fail)
            )
            assert await asyncio.wait_for(open_stream_as(host.port, "stray"), 60) == []
            assert host.refused == [("stray", "start_stream")]
            go.touch()
            with pytest.raises(StreamNotOpened) as info:
                await asyncio.wait_for(waiting, 60)
            if refusals_fail:
                assert info.value.reason == "refused"
                assert info.value.refusal == ("stray", "start_stream")
                worker.kill()
            else:
                assert (info.value.reason, info.value.returncode) == ("exited", 5)

    arun(scenario())


def test_a_worker_that_writes_a_lot_before_it_exits_is_reported_with_the_end_only() -> None:
    # Its stderr is read as it comes (a full pipe would block it for ever): megabytes of
    # it, a line longer than the part kept of each line, and then the exit.
    async def scenario() -> None:
        async with TestHost() as host:
            code = (
                "import sys\n"
                "for n in range(100000): print('line', n, file=sys.stderr)\n"
                "print('x' * 5000, file=sys.stderr)\n"
                "print('the last line', file=sys.stderr)\n"
                "sys.exit(7)\n"
            )
            with pytest.raises(StreamNotOpened) as info:
                await host.spawn([sys.executable, "-c", code], timeout=None)
            assert (info.value.reason, info.value.returncode) == ("exited", 7)
            tail = info.value.stderr_tail.splitlines()
            assert len(tail) == 20
            assert tail[0] == "line 99982" and tail[-1] == "the last line"
            assert tail[-2] == "x" * 1000  # the start of a long line
            assert str(info.value).endswith("\n" + "\n".join(tail))
            assert len(str(info.value)) < 25 * 1000

    arun(scenario())
