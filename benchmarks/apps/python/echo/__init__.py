"""Echo for workerkit's Python example (examples/python): the classic `main(req)`."""

from workerkit import HttpRequest, HttpResponse


def main(req: HttpRequest) -> HttpResponse:
    content_type = req.headers.get("content-type", "application/octet-stream")
    return HttpResponse(body=req.body, headers={"content-type": content_type})
