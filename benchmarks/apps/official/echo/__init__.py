"""Echo for the official Python worker: the classic `main(req)` returning the body."""

import azure.functions as func  # type: ignore[import-not-found]


def main(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        req.get_body(), mimetype=req.headers.get("content-type", "application/octet-stream")
    )
