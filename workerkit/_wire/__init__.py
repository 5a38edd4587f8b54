"""The wire: protobuf for the FunctionRpc contract.

- `schema`: field numbers and tags of the messages read and written by hand, generated from
  proto/ by ``make proto`` (do not edit; a test fails when it is stale);
- `primitives`: the encoding itself: varints, a field iterator, writers of tagged fields;
- `messages`: the hot messages read and written by hand (invocations, responses, logs, the
  start-up conversation);
- `values`: the fast value path, `TypedData` bytes to Python values and back
  (`decode_value`, `encode_chunks`, `LazyValues`);
- `pb`: the generated betterproto2 messages (`workerkit._generated`), imported only when a
  message off the hot path needs them.

`messages` and `values` are checked against betterproto2 and `workerkit.convert` by property
tests (tests/test_fastwire.py).
"""
