"""Queue trigger, plain def: a JSON order in; a receipt on a queue, the order to a blob."""

import logging
from typing import Any

from pyfunc import Context, Out


def main(msg: dict[str, Any], receipt: Out[str], context: Context) -> dict[str, Any]:
    items = msg.get("items", [])
    total = sum(item["price"] * item.get("quantity", 1) for item in items)
    dequeued = context.trigger_metadata.get("DequeueCount", 1)
    logging.info(
        "order %s: %d items, total %.2f (attempt %s)", msg.get("id"), len(items), total, dequeued
    )
    receipt.set(f"order {msg.get('id')}: {total:.2f}")
    return {**msg, "total": total}
