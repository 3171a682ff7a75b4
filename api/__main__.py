"""Start the server: `python -m api` serves the embedded model on http://127.0.0.1:8000.

    python -m api --model /models/Qwen3-8B --small-model /models/Qwen3-1.7B --small-device cuda:1
    python -m api --config system3 --small-device cuda:1   # a preset (configs/), flags override it
    python -m api --help          # every flag, its default and its unit
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
import logging
import signal
import sys

from api.config import parse_args
from api.launch import serve
from models.errors import ModelLoadError


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # `kill -USR1 PID` prints every thread's stack to stderr: what a stuck step or shutdown waits on,
    # where a profiler cannot attach. (Not when stderr is no file, as under a test's capture.)
    with contextlib.suppress(io.UnsupportedOperation, AttributeError):
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    config = parse_args(argv)  # after logging is set up: a preset may have something to say
    try:
        return serve(config)
    except (ModelLoadError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
