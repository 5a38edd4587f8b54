"""Entry point for tests that need a real worker process: `python subprocess_worker.py ARGV`.

WK_WORKER selects the class from tests/workers.py (default: Scenarios).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workers

if __name__ == "__main__":
    getattr(workers, os.environ.get("WK_WORKER", "Scenarios")).main()
