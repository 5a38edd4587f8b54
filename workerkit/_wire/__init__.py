"""The wire: protobuf for the FunctionRpc contract.

- `pb`: the generated betterproto2 messages (`workerkit/_generated`), imported only when a
  message off the hot path needs them;
- `fastwire`: hand-written reading and writing of the hot messages (invocations, logs, the
  start-up conversation), checked against the generated code by property tests.
"""
