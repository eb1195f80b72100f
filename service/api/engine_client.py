"""The engine in a process of its own: its client, in the API process.

Why: one CPython process has one GIL. With the engine in a thread of the
server, every bit of HTTP work (uvicorn, pydantic, JSON, SSE,
detokenization) lengthened a decode step, and at 16 clients HTTP delivered
0.66 of what the engine does alone (BENCHMARKS.md). As vLLM V1 splits its
API server from its EngineCore, the engine process here owns the model, the
KV slots and the scheduler loop (service/engine/process.py runs `engine.Engine`
in its main thread);
the API process keeps HTTP, validation, tokenization, detokenization, stop
strings, SSE and the Prometheus registry.

The channel (every message in service/messages.py): two one-way OS pipes (`multiprocessing.Pipe(duplex=False)`),
messages encoded with msgspec's msgpack as typed structs (no pickle on the
hot path). API -> engine: `Add`, `Cancel` and `Control` messages, sent as
they happen. Engine -> API: one `Step` message per loop iteration carrying
every event of that iteration for all rows (first tokens, sampled tokens,
ends, failures), the batch sizes it decoded and the load (running,
waiting): not one message per token per request. Why pipes rather than ZMQ:
one peer each way needs no broker or socket names, a pipe is bounded by the
kernel (a writer waits when the reader falls a buffer behind: back-pressure,
never unbounded memory), and end-of-file on it is the other process's death,
seen at once without polling. bench/ipc.py measures the two transports.

Admission stays in the API process: `EngineProcess.submit` refuses (429)
from its own count of requests in flight, which is never below the engine's
(a request leaves the count when its last event has arrived), so the engine
never refuses what the client admitted.

Death: if the engine process exits without being asked (killed, crashed),
the client's reader sees end-of-file, marks the engine dead (`failure`),
fails every request in flight with an 'unavailable' error at once, and calls
the `on_death` callbacks (the console command then exits non-zero, so the
supervisor restarts the server). If the API process dies, the engine sees
end-of-file on its input pipe and stops.

Start (engine_boot.py): the `spawn` method by default (forking a process that
has started torch's threads, or CUDA, can deadlock); `forkserver` with the
engine module preloaded starts later engines of the same process in
milliseconds instead of the seconds torch takes to import (the tests start
many servers). The console command starts the process first thing, so that
its imports overlap the API process's; the process then waits for its
`EngineSpec` on its input pipe. SIGINT and SIGTERM are ignored in the
engine: a terminal's Ctrl-C, or a supervisor's SIGTERM to every process,
is the API process's to handle: it drains, then stops the engine.

What it does not do: HTTP, tokenization, import torch (the engine process's
side is service/engine/process.py), or restart a dead engine.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

import msgspec

from service.api.engine_boot import Prestarted, StartMethod, prestart
from service.messages import (
    Add,
    Cancel,
    Control,
    EndedOut,
    EngineEvent,
    EngineFull,
    EngineRequest,
    EngineSpec,
    EngineUnavailable,
    Failed,
    FailedOut,
    FromEngine,
    Ready,
    StartFailed,
    Step,
    Ticket,
    ToEngine,
    from_wire,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the client (API process)


class EngineStartError(RuntimeError):
    """The engine process did not start (its message says why)."""


class EngineDied(RuntimeError):
    """The engine process exited without being asked to."""


class EngineProcess:
    """The API process's side: starts the engine process, submits, and routes its events to each request's sink.

    Thread-safe; the same interface as `engine.Engine` as far as the scheduler is concerned.
    """

    def __init__(
        self, process: multiprocessing.process.BaseProcess, to_engine: Connection, from_engine: Connection,
        ready: Ready, *, max_running: int, max_waiting: int, observer=None,
    ) -> None:
        self._process = process
        self._to_engine = to_engine
        self._from_engine = from_engine
        self.device = ready.device
        self.dtype = ready.dtype
        self.torch_threads = ready.torch_threads
        self.pid = ready.pid
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.observer = observer
        self.failure: BaseException | None = None
        self._encoder = msgspec.msgpack.Encoder()
        self._send_lock = threading.Lock()
        self._cond = threading.Condition()
        # Guarded by _cond:
        self._sinks: dict[int, object] = {}  # requests in flight -> their sinks
        self._rows_left: dict[int, int] = {}  # requests in flight -> their rows not yet ended
        self._rows = 0  # rows in flight: the sum of _rows_left
        self._next_id = 0
        self._running = 0  # as the engine last reported
        self._stopping = False
        self._dead = False
        self._death_callbacks: list[Callable[[], None]] = []
        self._reader = threading.Thread(target=self._read, name="introllm-engine-outputs", daemon=True)
        self._reader.start()

    @classmethod
    def start(
        cls, spec: EngineSpec, *, observer=None, start_method: StartMethod = "spawn",
        prestarted: Prestarted | None = None,
    ) -> EngineProcess:
        """Start the engine process (or use one `engine_boot.prestart` started) and wait until it
        is ready (its warm-up, compilation included).

        Raises `CheckpointError` for a broken checkpoint and `EngineStartError` for anything else.
        """
        booted = prestarted or prestart(start_method)
        process, to_engine, from_engine = booted.process, booted.to_engine, booted.from_engine
        log.info("engine process %d started (%s); loading %s", process.pid, booted.start_method, spec.checkpoint)
        try:
            to_engine.send_bytes(msgspec.msgpack.encode(spec))
            message = msgspec.msgpack.decode(from_engine.recv_bytes(), type=FromEngine)  # Ready or StartFailed
        except (EOFError, OSError):
            booted.close()
            raise EngineStartError(
                f"the engine process exited during start-up (exit code {process.exitcode})"
            ) from None
        if isinstance(message, StartFailed):
            booted.close()  # it has exited: joined here
            if message.checkpoint_error:
                from model import CheckpointError

                raise CheckpointError(message.message)
            raise EngineStartError(f"the engine process failed to start: {message.message}")
        assert isinstance(message, Ready), message
        log.info("engine process %d ready: %s, %s, %d torch threads", message.pid, message.device, message.dtype,
                 message.torch_threads)
        return cls(process, to_engine, from_engine, message, max_running=spec.max_running,
                   max_waiting=spec.max_waiting, observer=observer)

    # ------------------------------------------------------------ the scheduler's interface

    @property
    def alive(self) -> bool:
        with self._cond:
            return not self._stopping and not self._dead

    def submit(self, request: EngineRequest) -> Ticket:
        """Send a request to the engine; raises EngineFull or EngineUnavailable instead of waiting."""
        spec, params = request.controller, request.params
        with self._cond:
            if self._stopping or self._dead:
                raise EngineUnavailable("the engine is not running")
            bound = self.max_running + self.max_waiting
            if self._rows + request.n > bound:
                raise EngineFull(f"{self._rows} rows in flight, {request.n} more asked (bound {bound})")
            request_id = self._next_id
            self._next_id += 1
            self._sinks[request_id] = request.sink
            self._rows_left[request_id] = request.n
            self._rows += request.n
            self._publish_load_locked()
            self._cond.notify_all()
        self._send(Add(
            request_id, request.prompt_ids, spec.mode, spec.temperature, spec.tau_range, spec.deterministic,
            params.max_new_tokens, params.top_k, params.top_p, params.greedy, params.ignore_eos,
            request.seed, request.deadline, request.n,
        ))
        return Ticket(functools.partial(self._cancel, request_id))

    def load(self) -> tuple[int, int]:
        """(running, waiting): running as the engine last reported, waiting the rest of those in flight."""
        with self._cond:
            return self._load_locked()

    def _load_locked(self) -> tuple[int, int]:
        running = min(self._running, self._rows)
        return running, self._rows - running

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self.wait_until(lambda running, waiting: running + waiting == 0, timeout)

    def wait_until(self, predicate: Callable[[int, int], bool], timeout: float | None = None) -> bool:
        """Block until predicate(running, waiting) holds; False on timeout. Woken on every change."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(*self._load_locked()), timeout)

    def cap_deadlines(self, deadline: float) -> None:
        self._control(Control("cap_deadlines", deadline))

    def pause(self) -> None:
        """Hold decode steps in the engine (see `engine.Engine.pause`)."""
        self._control(Control("pause"))

    def resume(self) -> None:
        self._control(Control("resume"))

    def _control(self, message: Control) -> None:
        try:
            self._send(message)
        except EngineUnavailable:
            pass  # the engine is gone: there is nothing left to control (its requests have failed)

    def on_death(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the reader thread) if the engine process dies unasked."""
        with self._cond:
            self._death_callbacks.append(callback)

    def stop(self, timeout: float | None = None) -> None:
        """Stop the engine process: requests still in it end with 'unavailable'; killed after `timeout`."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
        try:
            self._send(Control("stop"))
        except EngineUnavailable:
            pass  # already gone
        self._process.join(timeout)
        if self._process.is_alive():
            log.warning("the engine process %d did not stop in %s s: killing it", self._process.pid, timeout)
            self._process.kill()
            self._process.join()
        log.info("engine process %d stopped, exit code %s", self._process.pid, self._process.exitcode)
        self._reader.join(timeout)
        self._fail_all("the engine stopped")
        self._to_engine.close()

    # ------------------------------------------------------------ internals

    def _cancel(self, request_id: int, reason: str, choice: int | None = None) -> None:
        with self._cond:
            if request_id not in self._sinks or self._dead:
                return
        try:
            self._send(Cancel(request_id, reason, choice))
        except EngineUnavailable:
            pass  # the engine is gone: the request fails with it

    def _send(self, message: ToEngine) -> None:
        payload = self._encoder.encode(message)
        try:
            with self._send_lock:
                self._to_engine.send_bytes(payload)
        except (OSError, ValueError) as exc:  # broken pipe, or closed by stop()
            raise EngineUnavailable("the engine process is gone") from exc

    def _read(self) -> None:
        """The reader thread: one `Step` per engine iteration, routed to the requests' sinks."""
        decoder = msgspec.msgpack.Decoder(FromEngine)
        try:
            while True:
                message = decoder.decode(self._from_engine.recv_bytes())
                if isinstance(message, Step):
                    self._deliver(message)
        except (EOFError, OSError):
            pass
        except Exception:
            log.exception("reading the engine's messages failed")
        self._process.join(5.0)
        with self._cond:
            asked = self._stopping
            if not asked:
                self._dead = True
                self.failure = EngineDied(f"the engine process died (exit code {self._process.exitcode})")
            callbacks = list(self._death_callbacks)
        if asked:
            return
        log.error("%s: failing the requests in flight", self.failure)
        self._fail_all(str(self.failure))
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("an engine-death callback failed")

    def _deliver(self, step: Step) -> None:
        by_request: dict[int, list[EngineEvent]] = {}
        ended: list[int] = []
        rows_ended: list[int] = []
        for event in step.events:
            by_request.setdefault(event.id, []).append(from_wire(event))
            if isinstance(event, EndedOut):
                rows_ended.append(event.id)
            if isinstance(event, FailedOut) or isinstance(event, EndedOut) and event.final:
                ended.append(event.id)
        with self._cond:
            sinks = [(request_id, self._sinks.get(request_id), events) for request_id, events in by_request.items()]
            for request_id in rows_ended:
                if self._rows_left.get(request_id, 0) > 0:
                    self._rows_left[request_id] -= 1
                    self._rows -= 1
            for request_id in ended:
                self._sinks.pop(request_id, None)
                self._rows -= self._rows_left.pop(request_id, 0)
            self._running = step.running
            self._publish_load_locked()
            self._cond.notify_all()
        if self.observer is not None:
            for size in step.batch_sizes:
                self.observer.observe_batch(size)
        for request_id, sink, events in sinks:
            if sink is not None and not _push_quietly(sink, events) and request_id not in ended:
                self._cancel(request_id, "cancelled")  # nobody reads it any more: free its row

    def _fail_all(self, message: str) -> None:
        with self._cond:
            sinks, self._sinks = list(self._sinks.values()), {}
            self._rows_left, self._rows = {}, 0
            self._running = 0
            self._publish_load_locked()
            self._cond.notify_all()
        for sink in sinks:
            _push_quietly(sink, [Failed("unavailable", message)])

    def _publish_load_locked(self) -> None:
        if self.observer is not None:
            self.observer.set_load(*self._load_locked())


def _push_quietly(sink, events: list[EngineEvent]) -> bool:
    """Hand events to a request's sink; False if its reader is gone (its event loop closed)."""
    try:
        sink.push(events)
        return True
    except Exception:
        log.debug("dropping events of a request whose reader is gone", exc_info=True)
        return False
