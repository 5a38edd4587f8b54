"""A complete language worker: each function is a text template (Python's str.format syntax)."""

import logging
from pathlib import Path

import workerkit
from workerkit import FunctionInfo, FunctionLoadError, HttpResponse, Invocation

log = logging.getLogger("templates")
log.setLevel(logging.INFO)  # workerkit never changes the root logger's level


class TemplateWorker(workerkit.Worker):
    runtime_name = "templates"

    def __init__(self) -> None:
        super().__init__()
        self.templates: dict[str, str] = {}

    def on_function_load(self, function: FunctionInfo) -> None:
        try:
            self.templates[function.function_id] = Path(function.script_file).read_text()
        except OSError as exc:
            raise FunctionLoadError(f"cannot read {function.script_file}: {exc}") from exc

    async def on_invocation(self, invocation: Invocation) -> HttpResponse:
        request = invocation.inputs["req"]
        fields = {**request.query, **request.params}
        log.info("rendering %s with %s", invocation.function.name, sorted(fields))
        try:
            body = self.templates[invocation.function.function_id].format_map(fields)
        except (KeyError, ValueError) as exc:
            return HttpResponse(status_code=400, body=f"cannot render: {exc!r}\n")
        return HttpResponse(body=body, headers={"content-type": "text/plain"})


if __name__ == "__main__":
    TemplateWorker.main()
