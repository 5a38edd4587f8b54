"""CPU-bound HTTP function for workerkit's Python example (examples/python): pure-Python
arithmetic that holds the GIL for its whole run, ``?n=`` steps (plain ``def``: it runs in the
worker's thread pool, so one worker process uses at most one core however many calls overlap).
"""

from workerkit import HttpRequest, HttpResponse


def burn(steps: int) -> int:
    """The work: a multiplicative hash of 0..steps-1 (the driver checks the answer)."""
    total = 0
    for i in range(steps):
        total = (total * 31 + i) % 1_000_003
    return total


def main(req: HttpRequest) -> HttpResponse:
    steps = int(req.query.get("n", "100000"))
    return HttpResponse(body=str(burn(steps)), headers={"content-type": "text/plain"})
