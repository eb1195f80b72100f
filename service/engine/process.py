"""The engine process's side of the pipes: build the engine from its `EngineSpec`, then serve messages.

What it does: `run_engine_process` (started by service/api/engine_boot.py)
waits for the spec, loads the checkpoint, builds and warms up the engine
(`engine.Engine`; with compile=auto, a compilation failure falls back to
eager; on a first start on a CPU, a helper process compiles the sampler's
graph meanwhile, `start_compile_aside`), says `Ready` (or `StartFailed` in
one line), then runs the loop in its main thread while an input thread
applies `Add`, `Cancel` and `Control` messages. Each loop iteration's events leave as one `Step` (`_Outbox`).
Why two processes and why pipes: service/api/engine_client.py.

What it does not do: HTTP, tokenization, text, admission (the API process
admits; a refusal here is reported as a failed request, never dropped).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import msgspec

from service.engine.engine import Engine
from service.engine.graphs import default_folder as default_graph_folder
from service.messages import (
    Add,
    Cancel,
    ControllerSpec,
    DecodeParams,
    EndedOut,
    EngineEvent,
    EngineFull,
    EngineRequest,
    EngineSpec,
    EngineUnavailable,
    Failed,
    FailedOut,
    Ready,
    SampledOut,
    StartedOut,
    StartFailed,
    Step,
    Ticket,
    ToEngine,
    is_terminal,
    to_wire,
)
from service.settings import dtype_decision, resolve_device

log = logging.getLogger(__name__)




class _Outbox:
    """Events of the current iteration, sent as one `Step` by `flush` (from the engine thread)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._encoder = msgspec.msgpack.Encoder()
        self._lock = threading.Lock()  # the input thread adds refusals; the engine thread everything else
        self._events: list[StartedOut | SampledOut | EndedOut | FailedOut] = []
        self._batch_sizes: list[int] = []
        self._load = (0, 0)
        self._sent_load = (0, 0)
        self.tickets: dict[int, Ticket] = {}

    def add(self, request_id: int, events: list[EngineEvent]) -> None:
        with self._lock:
            self._events.extend(to_wire(request_id, event) for event in events)
            if is_terminal(events[-1]):
                self.tickets.pop(request_id, None)

    def observe_batch(self, size: int) -> None:  # engine.Observer
        with self._lock:
            self._batch_sizes.append(size)

    def set_load(self, running: int, waiting: int) -> None:  # engine.Observer
        with self._lock:
            self._load = (running, waiting)

    def flush(self) -> None:
        with self._lock:
            if not self._events and not self._batch_sizes and self._load == self._sent_load:
                return
            step = Step(self._events, self._batch_sizes, *self._load)
            self._events, self._batch_sizes, self._sent_load = [], [], self._load
            payload = self._encoder.encode(step)
            # Sent under the lock: messages leave in the order their events happened.
            self._connection.send_bytes(payload)


class _OutboxSink:
    def __init__(self, outbox: _Outbox, request_id: int) -> None:
        self._outbox = outbox
        self._id = request_id

    def push(self, events: list[EngineEvent]) -> None:
        self._outbox.add(self._id, events)


def run_engine_process(inputs: Connection, outputs: Connection) -> None:
    """The engine process's body: wait for the spec, load, warm up, say Ready, then run the loop
    until told to stop (or until the API process is gone)."""
    encoder = msgspec.msgpack.Encoder()
    try:
        spec = msgspec.msgpack.decode(inputs.recv_bytes(), type=EngineSpec)
    except (EOFError, OSError):
        return  # the API process gave up before sending the spec (a broken checkpoint, say)
    try:
        engine, outbox, ready = _build_engine(spec, outputs)
    except Exception as exc:
        from model import CheckpointError

        # The API process logs the one error line; the traceback is for `--log-level debug`.
        log.debug("the engine failed to start", exc_info=True)
        outputs.send_bytes(encoder.encode(StartFailed(isinstance(exc, CheckpointError), start_failure_line(exc))))
        outputs.close()
        raise SystemExit(1) from None
    reader = threading.Thread(
        target=_read_inputs, args=(engine, outbox, inputs), name="introllm-engine-inputs", daemon=True
    )
    reader.start()
    outputs.send_bytes(encoder.encode(ready))
    engine.run()  # until a Control("stop") or the API process's end
    outputs.close()
    # Nothing is left to do: leave as a forked multiprocessing child does, without the interpreter's teardown.
    # Its C++ static destructors sometimes abort here (about 1 stop in 40 under load: "terminate called without
    # an active exception" on the server's stderr, a line no log format accounts for, and SIGABRT for a clean stop).
    logging.shutdown()
    os._exit(0)


def start_failure_line(exc: BaseException) -> str:
    """One line saying why the start failed: the message of an error that explains itself (a broken
    checkpoint, a model the cache cannot serve), else the exception's type and the first line of its
    message (a compiler's error runs to pages)."""
    from model import CheckpointError, UnsupportedModelError

    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if isinstance(exc, (CheckpointError, UnsupportedModelError)):
        return first
    return f"{type(exc).__name__}: {first[:300]}" if first else type(exc).__name__


def _build_engine(spec: EngineSpec, outputs: Connection):
    import torch

    configure_process(spec)
    device = resolve_device(spec.device)
    checkpoint = load_spec_checkpoint(spec, device)
    outbox = _Outbox(outputs)
    helper = None

    def build(compile: bool) -> Engine:
        nonlocal helper
        engine = engine_from_spec(spec, checkpoint, compile, observer=outbox, after_iteration=outbox.flush)
        if compile:
            helper = start_compile_aside(spec, engine)
        if spec.warm_up_prompt_ids is not None:
            # With `compile`, this is where the decode step compiles (before readiness).
            engine.warm_up(list(spec.warm_up_prompt_ids))
        return engine

    try:
        engine = build(spec.compile)
    except Exception as exc:
        if not (spec.compile and spec.compile_fallback):
            raise
        # compile=auto promised a start: say why in one line and serve eager (a half-compiled model is dropped).
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        log.warning("compile=auto: compiling failed at warm-up (%s: %s); serving without torch.compile",
                    type(exc).__name__, reason)
        torch._dynamo.reset()
        engine = build(False)
    finally:
        if helper is not None and helper.is_alive():
            helper.terminate()  # its graphs are no longer wanted (a failed or eager start)
    dtype = str(next(checkpoint.model.parameters()).dtype).removeprefix("torch.")
    return engine, outbox, Ready(str(engine.device), dtype, torch.get_num_threads(), os.getpid())


def configure_process(spec: EngineSpec) -> None:
    """Logging and torch's threads as the spec says (the engine process and its compile helper alike)."""
    import torch

    from service.logs import configure_handler

    configure_handler(spec.log_format, spec.log_level)
    torch.set_num_threads(spec.torch_threads)


def load_spec_checkpoint(spec: EngineSpec, device, announce: bool = True):
    """The spec's checkpoint on `device` (with compile on a CPU, inductor's instruction-set probe meanwhile);
    `announce` logs the dtype it chose and why (the engine does, its compile helper does not)."""
    from model import load_checkpoint

    if spec.compile and device.type == "cpu":
        _probe_vector_isa_meanwhile()
    dtype, why = dtype_decision(spec.dtype, device)
    if announce:
        log.info(why)
    return load_checkpoint(spec.checkpoint, device, dtype, trust_remote_code=spec.trust_remote_code)


def engine_from_spec(spec: EngineSpec, checkpoint, compile: bool, graph_folder: Path | None = None,
                     **kwargs) -> Engine:
    """The engine the spec describes, on the loaded checkpoint, saving its graphs in graph_folder (default:
    beside inductor's cache) when it compiles (kwargs: `Engine`'s observer and the like)."""
    return Engine(
        checkpoint.model,
        checkpoint.head,
        eos_token_ids=eos_token_ids(checkpoint),
        max_running=spec.max_running,
        max_waiting=spec.max_waiting,
        max_sequence_length=spec.max_sequence_length,
        prefill_token_budget=spec.prefill_token_budget,
        prefill_in_step=spec.prefill_in_step,
        compile=compile,
        native_decode=spec.native_decode,
        graph_folder=(graph_folder or default_graph_folder()) if compile else None,
        **kwargs,
    )


# The graphs a helper process compiles while the engine compiles the others. On the bundled model a cold start
# compiled the mixed layer (~28 s), the step's forward (~20 s) and the sampler (~30 s) one after another, in
# inductor's code generation, which is Python on one core, while the second core idled.
ASIDE_KINDS = ("sample",)
# How long the engine waits for the helper before compiling the graph itself (a helper stuck in a compiler).
ASIDE_TIMEOUT_S = 600.0


def start_compile_aside(spec: EngineSpec, engine: Engine) -> BaseProcess | None:
    """Start a process compiling the `ASIDE_KINDS` graphs into the engine's graph folder, and have the engine
    wait for it before compiling one of them itself (`GraphCache.compiled_aside`), when that is worth it and
    safe: the setting is on, a warm-up will compile, the graphs are not saved yet, the machine has a second
    CPU, and memory left (within the container's limit too) for a second engine process and its compilers
    (`helper_memory_bytes`) twice over. Returns the process, or None."""
    graphs = engine.graphs
    if not spec.compile_helper or spec.warm_up_prompt_ids is None or graphs is None:
        return None
    if all(graphs.has(kind) for kind in ASIDE_KINDS):
        return None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    needed, available = helper_memory_bytes(), available_memory_bytes()
    if cpus < 2 or needed is None or available is None or available < 2 * needed:
        log.info("compiling every graph in the engine process (%d CPUs; %s MiB available for a helper that "
                 "needs about %s MiB, twice over)", cpus, "?" if available is None else available >> 20,
                 "?" if needed is None else needed >> 20)
        return None
    helper = multiprocessing.get_context("spawn").Process(
        target=compile_aside, args=(spec, ASIDE_KINDS, graphs.root), name="introllm-compile-aside", daemon=True
    )
    helper.start()
    log.info("a second process (pid %d) compiles the %s graph meanwhile", helper.pid, ", ".join(ASIDE_KINDS))
    graphs.compiled_aside(ASIDE_KINDS, lambda: _wait_for(helper))
    return helper


# Inductor builds its C++ in two worker processes at once here; each g++ (cc1plus) of the sampler's kernels
# peaked at about 250 MiB (bundled model, 2 CPUs).
COMPILER_MEMORY_BYTES = 512 << 20


def helper_memory_bytes() -> int | None:
    """What a compile helper holds at its peak, about: this process's resident memory now (the same imports,
    weights and KV slots: 638 MiB against the helper's 640 on the bundled model) and its compilers'."""
    resident = _proc_bytes("/proc/self/status", "VmRSS")
    return None if resident is None else resident + COMPILER_MEMORY_BYTES


def _proc_bytes(path: str, key: str) -> int | None:
    """The "<key>: <n> kB" line of a /proc file, in bytes; None where there is none."""
    try:
        with open(path) as file:
            line = next((line for line in file if line.startswith(f"{key}:")), None)
        return None if line is None else int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None


def _wait_for(helper: BaseProcess) -> None:
    helper.join(ASIDE_TIMEOUT_S)
    if helper.is_alive():
        helper.terminate()
        log.warning("the compile helper took over %.0f s: compiling its graphs here", ASIDE_TIMEOUT_S)
    elif helper.exitcode != 0:
        log.warning("the compile helper failed (exit code %s): compiling its graphs here", helper.exitcode)


def compile_aside(spec: EngineSpec, kinds: tuple[str, ...], graph_folder: Path) -> None:
    """The compile helper's body: the spec's engine, built as the engine process builds it (so its graphs have
    the same key and names), warmed up compiling only `kinds`; the other functions run eager. Its graphs are
    saved in graph_folder (`graphs.GraphCache` writes aside and renames), where the engine loads them. A
    failure exits with status 1 and a debug line: the engine, which compiles the same code, reports its own."""
    configure_process(spec)
    try:
        device = resolve_device(spec.device)
        checkpoint = load_spec_checkpoint(spec, device, announce=False)
        engine = engine_from_spec(spec, checkpoint, True, graph_folder, compiled=kinds)
        engine.warm_up(list(spec.warm_up_prompt_ids or ()))
    except Exception:
        log.debug("the compile helper failed", exc_info=True)
        raise SystemExit(1) from None


def available_memory_bytes() -> int | None:
    """What a second process may take: the machine's MemAvailable (/proc/meminfo), and within a container
    with a memory limit (cgroup v2 or v1, as Kubernetes and Docker set it) no more than the limit less what
    the container uses. None where neither can be read."""
    available = _proc_bytes("/proc/meminfo", "MemAvailable")
    # cgroup v2, then v1 (an unlimited v1 group reads as a huge number, which min() leaves out).
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit = Path("/sys/fs/cgroup", limit_file).read_text().strip()
            if limit == "max":
                continue
            left = int(limit) - int(Path("/sys/fs/cgroup", usage_file).read_text())
        except (OSError, ValueError):
            continue
        available = left if available is None else min(available, left)
    return available


def _probe_vector_isa_meanwhile() -> None:
    """Start inductor's choice of vector instruction set in a thread of its own: it builds and runs a probe
    per instruction set (C++ compiles and child processes: ~20 s on a first start, ~3 s later), which the
    first compile or graph load needs; meanwhile this thread loads the checkpoint and traces. Its result is
    cached in the process (functools.cache), so the compile finds it made."""
    import torch._inductor.codecache  # noqa: F401 - imported here, not concurrently with this thread's imports
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    def probe() -> None:
        try:
            pick_vec_isa()
        except Exception:  # noqa: BLE001 - the compile asks again and reports its own failure
            log.debug("probing the vector instruction set failed", exc_info=True)

    threading.Thread(target=probe, name="introllm-isa-probe", daemon=True).start()


def eos_token_ids(checkpoint) -> set[int]:
    """The tokenizer's EOS and the generation config's (which may list several)."""
    ids: set[int] = set()
    if checkpoint.tokenizer.eos_token_id is not None:
        ids.add(checkpoint.tokenizer.eos_token_id)
    configured = getattr(checkpoint.model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    return ids


def _read_inputs(engine, outbox: _Outbox, inputs: Connection) -> None:
    """The engine process's input thread: messages from the API process, applied as they come."""
    decoder = msgspec.msgpack.Decoder(ToEngine)
    try:
        while True:
            message = decoder.decode(inputs.recv_bytes())
            if isinstance(message, Add):
                _add(engine, outbox, message)
            elif isinstance(message, Cancel):
                ticket = outbox.tickets.get(message.id)
                if ticket is not None:
                    ticket.cancel(message.reason, message.choice)  # type: ignore[arg-type]  # written by _cancel
            elif message.action == "cap_deadlines":
                engine.cap_deadlines(message.value)
            elif message.action == "pause":
                engine.pause()
            elif message.action == "resume":
                engine.resume()
            elif message.action == "stop":
                break
    except (EOFError, OSError):
        log.warning("the API process is gone: stopping the engine")
    except Exception:
        log.exception("the engine's input thread failed: stopping the engine")
    engine.stop()


def _add(engine, outbox: _Outbox, message: Add) -> None:
    spec = ControllerSpec(message.mode, message.temperature, message.tau_range, message.deterministic)  # type: ignore[arg-type]
    request = EngineRequest(
        prompt_ids=message.prompt_ids,
        controller=spec,
        params=DecodeParams(message.max_new_tokens, message.top_k, message.top_p, message.greedy, message.ignore_eos),
        seed=message.seed,
        deadline=message.deadline,
        sink=_OutboxSink(outbox, message.id),
        n=message.n,
    )
    try:
        outbox.tickets[message.id] = engine.submit(request)
    except (EngineFull, EngineUnavailable, ValueError) as exc:  # admission makes this rare: say so, never drop
        outbox.add(message.id, [Failed("unavailable", f"the engine refused the request: {exc}")])
        outbox.flush()
