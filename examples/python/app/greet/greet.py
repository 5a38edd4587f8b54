"""HTTP, async def, named outputs: answers on `res` and queues a copy on `outbox`."""

import asyncio
import logging

from pyfunc import Context, Out

from workerkit import HttpRequest, HttpResponse

from .phrases import PHRASES  # relative imports work: the folder is a package

log = logging.getLogger("greet")


async def greet(
    req: HttpRequest, res: Out[HttpResponse], outbox: Out[str], context: Context
) -> None:
    lang = req.params.get("lang", "en")
    phrase = PHRASES.get(lang)
    if phrase is None:
        res.set(HttpResponse(status_code=404, body=f"no greeting in {lang!r}\n"))
        return
    await asyncio.sleep(0)  # stands for awaiting something real
    text = f"{phrase}, {req.text() or 'world'}!"
    log.info("greeting in %s for invocation %s", lang, context.invocation_id)
    outbox.set(text)
    res.set(HttpResponse.from_json({"greeting": text}, status_code=201))
