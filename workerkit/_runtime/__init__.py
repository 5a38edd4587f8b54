"""The runtime: what runs inside a worker process and talks to the host.

- `session`: one worker's conversation with the host (handshake, loads, invocations,
  cancel, shutdown), with the thread pool, the watchdog and the log route around it;
- `transport`: the gRPC stream (grpclib), one reader, one writer, bounded queues;
- `logs`: the root-logger handler that turns records into `RpcLog`s for the right session;
- `watchdog`: reports an event loop blocked by user code.

Authors never import it: `workerkit.Worker` starts a session.
"""
