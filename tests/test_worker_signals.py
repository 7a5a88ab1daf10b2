"""A gateway worker that gets SIGTERM while it is still starting stops.

Granian forks its workers from a main process whose Python handler for SIGTERM only sets a flag
on the main process's server object. A worker inherits that handler until Granian installs its
own, after the app factory (`tollway.server.app.create_app`) returns: a SIGTERM in between used
to be swallowed, and the worker served on until a shutdown killed it 30 s later (seen in about
one stop in four of a two-worker gateway stopped right after it became ready). Here the worker
is forked the same way, from a process with such a handler, and signalled once the factory has
run: it must die of the signal, not run on.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path
from types import FrameType

from tollway.server.app import CONFIG_ENV, create_app


def _worker(config: str) -> None:
    os.environ[CONFIG_ENV] = config
    create_app()
    os.kill(os.getpid(), signal.SIGTERM)  # as Granian's shutdown does, before the worker serves
    time.sleep(10)  # reached only if the signal was swallowed


def test_sigterm_stops_a_worker_that_is_still_starting(tmp_path: Path) -> None:
    config = tmp_path / "tollway.toml"
    config.write_text(
        f'[ledger]\npath = "{tmp_path / "ledger.db"}"\n'
        '[[providers]]\nname = "mock"\nkind = "mock"\n'
        '[[models]]\nname = "mock-gpt"\nprovider = "mock"\n'
    )
    seen: list[int] = []

    def main_process_handler(signum: int, frame: FrameType | None) -> None:
        seen.append(signum)  # what Granian's main process does: set a flag

    previous = signal.signal(signal.SIGTERM, main_process_handler)
    try:
        worker = multiprocessing.get_context("fork").Process(target=_worker, args=(str(config),))
        worker.start()
        worker.join(30)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if worker.is_alive():
            worker.kill()
    assert worker.exitcode == -signal.SIGTERM
    assert not seen  # the worker's signal never reached this process's handler
