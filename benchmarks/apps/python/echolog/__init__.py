"""Echo that logs 10 lines per invocation, for workerkit's Python example."""

import logging

from workerkit import HttpRequest, HttpResponse

log = logging.getLogger("bench")


def main(req: HttpRequest) -> HttpResponse:
    for line in range(10):
        log.info("echo log line %d", line)
    content_type = req.headers.get("content-type", "application/octet-stream")
    return HttpResponse(body=req.body, headers={"content-type": content_type})
