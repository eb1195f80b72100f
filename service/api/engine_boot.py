"""Start the engine process early, while the API process imports its own (torch-free) modules.

What it does: `prestart` starts the engine process with no work yet; the
child imports torch, transformers and the engine (seconds) while the API
process (which never imports torch) imports the app and reads the checkpoint's tokenizer and config, in
parallel on another core, then waits for its `EngineSpec` on its input pipe
(`service.engine.process.run_engine_process`). Measured on 2 cores: the warm start
to ready went from about 35 s to (see BENCHMARKS.md) with the two imports
overlapped instead of one after the other.

Light on purpose: this module imports nothing heavy, so the console command
can call it first.

What it does not do: decide what the engine runs (messages.EngineSpec,
built by app.load) or talk to a running engine (engine_client.EngineProcess).
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Literal

StartMethod = Literal["spawn", "forkserver"]
PRELOADED = ["service.engine.process", "model", "service.engine.engine"]  # what forkserver imports once


@dataclass
class Prestarted:
    """An engine process waiting for its spec, and the API process's ends of its two pipes."""

    process: BaseProcess
    to_engine: Connection
    from_engine: Connection
    start_method: StartMethod

    def close(self) -> None:
        """Give up on it (the API side failed before sending the spec)."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.to_engine.close()
        self.from_engine.close()


def prestart(start_method: StartMethod = "spawn") -> Prestarted:
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        context.set_forkserver_preload(PRELOADED)
    to_engine_reader, to_engine = context.Pipe(duplex=False)
    from_engine, from_engine_writer = context.Pipe(duplex=False)
    process = context.Process(target=_boot, args=(to_engine_reader, from_engine_writer), name="introllm-engine")
    process.start()
    # Our copies of the child's ends: closed, so that end-of-file means the child is gone.
    to_engine_reader.close()
    from_engine_writer.close()
    return Prestarted(process, to_engine, from_engine, start_method)


def _boot(inputs: Connection, outputs: Connection) -> None:
    """The engine process's entry: the heavy imports happen here, in the child."""
    import signal

    # Ctrl-C and SIGTERM are the API process's to handle (a terminal's process group, or a
    # supervisor that signals every process, reaches both): it drains, then stops the engine
    # with a message. The engine also stops if the API process is gone (end-of-file on its pipe).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from service.engine.process import run_engine_process

    run_engine_process(inputs, outputs)
