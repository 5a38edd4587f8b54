"""HTTP, plain def: greets ?name=... (or a JSON body's "name")."""

import logging

from workerkit import HttpRequest, HttpResponse


def main(req: HttpRequest) -> HttpResponse:
    name = req.query.get("name")
    if not name and req.body:
        try:
            name = req.json().get("name")
        except (ValueError, AttributeError):
            return HttpResponse(status_code=400, body="the body must be a JSON object\n")
    if not name:
        return HttpResponse(status_code=400, body='pass ?name=... or {"name": ...}\n')
    logging.info("greeting %s", name)
    return HttpResponse(body=f"Hello, {name}!\n", headers={"content-type": "text/plain"})
