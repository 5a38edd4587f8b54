"""Timer, async def: the host sends {"Schedule": ..., "ScheduleStatus": ..., "IsPastDue": ...}."""

import logging
from typing import Any


async def main(timer: dict[str, Any]) -> None:
    if timer.get("IsPastDue"):
        logging.warning("tick is running late")
    status = timer.get("ScheduleStatus") or {}
    logging.info("tick; next run at %s", status.get("Next", "?"))
