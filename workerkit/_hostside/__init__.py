"""The host's side of the protocol, written once: the gRPC server workers dial, worker
processes started with the host's command line, and each stream's request/reply matching.

- `connection`: `HostConnection`, one worker's stream;
- `server`: `TestHost` (the server), `WorkerProcess` and `InProcessWorker`.

`workerkit.testing` is its public face; `workerkit host` and `workerkit conformance` build on
it.
"""
