"""The console command: `introllm-serve` (or `python -m service`).

What it does: reads `Settings` from flags over `INTROLLM_*` environment
variables (`introllm-serve --help` lists them; see cli.py), loads the
checkpoint, builds the app and runs uvicorn on `host:port`. SIGTERM (or a
first Ctrl-C) starts a graceful drain: readiness fails and new requests get
503 at once, requests in flight get `drain_grace_s` to finish (then end with
finish_reason `timeout`), and the process exits with status 0. A second
signal exits at once.

Exit statuses: 2 for a bad command line or setting (one line on stderr); 3
for a failed start-up, each with one ERROR log line and no traceback: a
broken checkpoint (the line names the file), a model whose layers the KV
cache cannot serve (it names the layer type), any other failure of the
engine process to start (`--log-level debug` shows its traceback), or a port
in use; 4 when the engine process died while serving (its requests in flight
have already failed with 503, readiness and liveness fail): the supervisor
restarts the server.

What it does not do: reload code, or serve more than one checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

from service.cli import settings_from_command_line
from service.logs import configure_logging

if TYPE_CHECKING:
    from fastapi import FastAPI

# The app (torch, transformers: seconds to import) is imported once the
# command line is read, so `--help` and a bad flag are answered at once.

log = logging.getLogger("service")
STARTUP_FAILURE = 3  # uvicorn's own exit code for this
ENGINE_DIED = 4


class DrainingServer(uvicorn.Server):
    """uvicorn, with SIGTERM meaning "drain, then exit" instead of "close the listener now".

    Keeping the listener open while draining lets load balancers see the
    readiness probe fail and lets late requests get a clean 503.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI, grace_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._grace_s = grace_s
        self._drain_requested = False
        self._draining: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.engine_died = False

    def exit_for_dead_engine(self) -> None:
        """The engine process died (called from the thread that noticed): stop serving now."""
        log.error("the engine process died: exiting with status %d so that the server is restarted", ENGINE_DIED)
        self.engine_died = True
        self.should_exit = True  # read by uvicorn's main loop; its shutdown closes the connections left

    async def startup(self, sockets=None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets=sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in uvicorn's captured signals on purpose: uvicorn would
        # re-raise it after shutdown and the process would die by the signal
        # instead of exiting 0 after a clean drain.
        if self._drain_requested or self._loop is None or not self.started:
            self.force_exit = self._drain_requested
            self.should_exit = True
            return
        self._drain_requested = True
        log.info("signal %s: draining", signal.Signals(sig).name)
        # A signal handler may interrupt the loop anywhere: only hand it work.
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        from service.api.app import drain

        try:
            idle = await drain(self._app, self._grace_s)
            log.info("drain finished (%s); exiting", "idle" if idle else "requests still running")
        finally:
            self.should_exit = True


def main(argv: Sequence[str] | None = None) -> None:
    settings = settings_from_command_line(argv)
    settings.use_compile_cache_dir()  # before torch is imported
    configure_logging(settings)
    from service.api.engine_boot import prestart

    # The engine process imports torch and the engine while this one imports the app and reads
    # the tokenizer: on 2 cores that overlap saves the seconds one of the imports takes.
    engine = prestart(settings.engine_start_method)
    from model import CheckpointError, UnsupportedModelError
    from service.api.app import create_app
    from service.api.engine_client import EngineStartError

    try:
        # Loaded before uvicorn starts, as uvicorn logs a traceback for any
        # error raised in the lifespan. Nothing observable changes: uvicorn
        # binds the socket only after the lifespan's start-up anyway.
        app = create_app(settings, load_now=True, prestarted=engine)
    except (CheckpointError, UnsupportedModelError, EngineStartError) as exc:
        log.error("cannot start: %s", exc)
        sys.exit(STARTUP_FAILURE)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # logging is configure_logging's: uvicorn's lines go through its handler
        # After the drain only finished responses are left to flush.
        timeout_graceful_shutdown=5,
        proxy_headers=True,
    )
    server = DrainingServer(config, app, settings.drain_grace_s)
    app.state.on_engine_death = server.exit_for_dead_engine
    server.run()
    if server.engine_died:
        sys.exit(ENGINE_DIED)
    if not server.started:  # start-up failed (bad checkpoint, port in use): say so to the supervisor
        sys.exit(STARTUP_FAILURE)


if __name__ == "__main__":
    main()
