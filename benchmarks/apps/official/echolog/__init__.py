"""Echo that logs 10 lines per invocation, for the official Python worker."""

import logging

import azure.functions as func  # type: ignore[import-not-found]

log = logging.getLogger("bench")


def main(req: func.HttpRequest) -> func.HttpResponse:
    for line in range(10):
        log.info("echo log line %d", line)
    return func.HttpResponse(
        req.get_body(), mimetype=req.headers.get("content-type", "application/octet-stream")
    )
