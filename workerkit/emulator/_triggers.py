"""Trigger data for non-HTTP triggers, shaped like the host's. The host converts what a
binding extension produces with ``ToRpc`` (in Azure/azure-functions-host,
src/WebJobs.Script.Grpc/MessageExtensions/GrpcMessageConversionExtensions.cs): a string
stays a string, a byte array becomes bytes, arrays become ``collection_*`` for a worker that
declared ``TypedDataCollection``, and most other values (integers, dates, objects) become
json. The shapes below follow what the official workers' converters read
(azure-functions-python-library, ``azure/functions/*.py``).

`trigger_data` turns the text a user gives the admin endpoint (``{"input": "..."}``) into
the trigger's `TypedData` and its ``trigger_metadata``, per binding type:

================  ==========================================  ==============================
trigger           input data                                  trigger_metadata (kind)
================  ==========================================  ==============================
timerTrigger      json timer object (input ignored)           none
warmupTrigger     json ``{}``: the host's WarmupContext       none
                  (input ignored)
queueTrigger      string (bytes with dataType binary/stream)   QueueTrigger, Id, PopReceipt
                                                              (string); DequeueCount (json
                                                              number); InsertionTime,
                                                              ExpirationTime, NextVisibleTime
                                                              (json string)
blobTrigger       bytes (string with dataType string)         BlobTrigger, Uri, the path's
                                                              {placeholders} (string);
                                                              Properties, Metadata (json)
eventHubTrigger   string; many: a collection or json array    EnqueuedTimeUtc, SequenceNumber,
                                                              Offset, PartitionKey,
                                                              SystemProperties, Properties
                                                              (…Array for many)
serviceBusTrigger string; many: a collection or json array    MessageId, DeliveryCount,
                                                              EnqueuedTimeUtc, ExpiresAtUtc,
                                                              LockToken, SequenceNumber,
                                                              ContentType, ApplicationProperties,
                                                              UserProperties
eventGridTrigger  json (the input must be a JSON object)      none
cosmosDBTrigger   json array (an object input is wrapped)     none
kafkaTrigger      string                                      Key, Offset, Partition, Topic,
                                                              Timestamp, Headers
anything else     string (bytes with dataType binary/stream)  none
================  ==========================================  ==============================

A value the host would send as ``null`` is left out of the metadata, as the host does. The
admin request may add or override metadata with a ``"metadata"`` object (strings are sent as
``string``, other JSON values as ``json``).
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from workerkit._generated import AzureFunctionsRpcMessages as pb

__all__ = ["TriggerInputError", "timer_payload", "trigger_data"]

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


class TriggerInputError(ValueError):
    """The admin request's input cannot be shaped for this trigger (answered with 400)."""


def timer_payload(
    last: datetime.datetime | None,
    next_run: datetime.datetime | None,
    *,
    past_due: bool = False,
    last_updated: datetime.datetime | None = None,
) -> pb.TypedData:
    """The timer trigger's input: ``json`` of the host's ``TimerInfo`` object.

    ``{"Schedule":{"AdjustForDST":true},"ScheduleStatus":{"Last":…,"Next":…,"LastUpdated":…},
    "IsPastDue":false}``; ``Last`` is ``0001-01-01T00:00:00`` before the first run, ``Next``
    ``9999-12-31T23:59:59`` for a schedule that never fires again (NCrontab's end date),
    ``LastUpdated`` now unless given.
    """
    now = datetime.datetime.now().astimezone()
    status = {
        "Last": _iso(last) if last is not None else "0001-01-01T00:00:00",
        "Next": _iso(next_run) if next_run is not None else "9999-12-31T23:59:59",
        "LastUpdated": _iso(last_updated if last_updated is not None else now),
    }
    body = {"Schedule": {"AdjustForDST": True}, "ScheduleStatus": status, "IsPastDue": past_due}
    return pb.TypedData(json=json.dumps(body, separators=(",", ":")))


def trigger_data(
    trigger: Mapping[str, Any],
    text: str,
    *,
    capabilities: Mapping[str, str],
    extra_metadata: Mapping[str, Any] | None = None,
) -> tuple[pb.TypedData, dict[str, pb.TypedData]]:
    """The trigger input and ``trigger_metadata`` for `text` given to `trigger` (module table).

    Args:
        trigger: the trigger binding (``type``, ``dataType``, ``cardinality``, ``path``, …).
        text: the admin request's ``input``.
        capabilities: the worker's; ``TypedDataCollection`` selects ``collection_*`` for
            ``cardinality: many``.
        extra_metadata: the admin request's ``metadata`` object, merged last.

    Raises:
        TriggerInputError: the input does not fit the trigger (e.g. not JSON for Event Grid).
    """
    kind = str(_get(trigger, "type") or "").lower()
    data_type = str(_get(trigger, "dataType") or "").lower()
    many = str(_get(trigger, "cardinality") or "").lower() == "many"
    now = datetime.datetime.now(datetime.UTC)
    metadata: dict[str, Any] = {}
    data: pb.TypedData
    if kind == "timertrigger":
        data = timer_payload(None, None)
    elif kind == "warmuptrigger":  # an object without properties, as JSON (ToRpcDefault)
        data = pb.TypedData(json="{}")
    elif kind == "queuetrigger":
        data = _text_or_bytes(text, data_type, default_bytes=False)
        metadata = {
            "QueueTrigger": text,
            "Id": str(uuid.uuid4()),
            "PopReceipt": uuid.uuid4().hex,
            "DequeueCount": _Json(1),
            "InsertionTime": _Json(_iso(now)),
            "ExpirationTime": _Json(_iso(now + datetime.timedelta(days=7))),
            "NextVisibleTime": _Json(_iso(now + datetime.timedelta(minutes=10))),
        }
    elif kind == "blobtrigger":
        data = _text_or_bytes(text, data_type, default_bytes=True)
        path = str(_get(trigger, "path") or "samples/{name}")
        names = {name: "emulated" for name in _PLACEHOLDER.findall(path)}
        blob = _PLACEHOLDER.sub("emulated", path)
        metadata = {
            "BlobTrigger": blob,
            "Uri": f"http://127.0.0.1:10000/devstoreaccount1/{blob}",
            "Properties": _Json(
                {
                    "Length": len(text.encode()),
                    "ContentType": "application/octet-stream",
                    "LastModified": _iso(now),
                    "BlobType": "BlockBlob",
                }
            ),
            "Metadata": _Json({}),
            **names,
        }
    elif kind == "eventhubtrigger":
        items = _items(text) if many else [text]
        system = [
            {"SequenceNumber": n, "Offset": str(n * 100), "EnqueuedTimeUtc": _iso(now)}
            for n in range(len(items))
        ]
        data = _many(items, capabilities) if many else pb.TypedData(string=text)
        if many:
            metadata = {
                "SystemPropertiesArray": _Json(system),
                "PropertiesArray": _Json([{} for _ in items]),
                "EnqueuedTimeUtcArray": _Json([_iso(now) for _ in items]),
                "SequenceNumberArray": _Json([s["SequenceNumber"] for s in system]),
                "OffsetArray": _Json([s["Offset"] for s in system]),
            }
        else:
            metadata = {
                "EnqueuedTimeUtc": _Json(_iso(now)),
                "SequenceNumber": _Json(0),
                "Offset": "0",
                "SystemProperties": _Json(system[0]),
                "Properties": _Json({}),
            }
    elif kind == "servicebustrigger":
        items = _items(text) if many else [text]
        data = _many(items, capabilities) if many else _text_or_bytes(text, data_type, False)
        one = {
            "MessageId": uuid.uuid4().hex,
            "DeliveryCount": 1,
            "EnqueuedTimeUtc": _iso(now),
            "ExpiresAtUtc": _iso(now + datetime.timedelta(days=14)),
            "LockToken": str(uuid.uuid4()),
            "SequenceNumber": 1,
            "ApplicationProperties": {},
            "UserProperties": {},
        }
        if many:
            metadata = {f"{key}Array": _Json([one[key] for _ in items]) for key in one}
        else:
            metadata = {
                key: (
                    value
                    if isinstance(value, str) and key in ("MessageId", "LockToken")
                    else _Json(value)
                )
                for key, value in one.items()
            }
    elif kind == "eventgridtrigger":
        event = _json(text, "eventGridTrigger input must be a JSON event object")
        if not isinstance(event, dict):
            raise TriggerInputError("eventGridTrigger input must be a JSON event object")
        data = pb.TypedData(json=json.dumps(event, separators=(",", ":")))
    elif kind == "cosmosdbtrigger":
        documents = _json(text, "cosmosDBTrigger input must be a JSON document or array")
        if not isinstance(documents, list):
            documents = [documents]
        data = pb.TypedData(json=json.dumps(documents, separators=(",", ":")))
    elif kind == "kafkatrigger":
        data = _text_or_bytes(text, data_type, default_bytes=False)
        metadata = {
            "Key": "",
            "Offset": _Json(0),
            "Partition": _Json(0),
            "Topic": str(_get(trigger, "topic") or "topic"),
            "Timestamp": _Json(_iso(now)),
            "Headers": _Json([]),
        }
    else:
        data = _text_or_bytes(text, data_type, default_bytes=False)
    for key, value in (extra_metadata or {}).items():
        metadata[key] = value if isinstance(value, str) else _Json(value)
    return data, {key: _typed(value) for key, value in metadata.items() if value is not None}


class _Json:
    """A metadata value the host sends as ``TypedData.json``."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _typed(value: Any) -> pb.TypedData:
    if isinstance(value, _Json):
        return pb.TypedData(json=json.dumps(value.value, separators=(",", ":")))
    return pb.TypedData(string=str(value))


def _text_or_bytes(text: str, data_type: str, default_bytes: bool) -> pb.TypedData:
    if data_type in ("binary", "stream") or (default_bytes and data_type != "string"):
        return pb.TypedData(bytes=text.encode())
    return pb.TypedData(string=text)


def _items(text: str) -> list[str]:
    """A batch from the input: a JSON array's items (non-strings as JSON text), else one item."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return [text]
    if not isinstance(value, list):
        return [text]
    return [v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for v in value]


def _many(items: list[str], capabilities: Mapping[str, str]) -> pb.TypedData:
    if capabilities.get("TypedDataCollection"):
        return pb.TypedData(collection_string=pb.CollectionString(string=items))
    return pb.TypedData(json=json.dumps(items, separators=(",", ":")))


def _json(text: str, problem: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TriggerInputError(f"{problem}: {exc}") from None


def _iso(when: datetime.datetime) -> str:
    return when.isoformat(timespec="microseconds")


def _get(obj: Mapping[str, Any], key: str) -> Any:
    lowered = key.lower()
    for name, value in obj.items():
        if name.lower() == lowered:
            return value
    return None
