"""Compiled graphs of the engine's hot functions, kept on disk so that a restart loads them instead of tracing.

What it does: `GraphCache(folder, parts)` names a folder for one configuration
(a digest of `parts`, this package's and `model`'s source, torch, Python,
the CPU's instruction sets and the thread count C++ kernels are built for). `graph(name, function, example_args,
tracing)` returns `function` compiled by `torch.compile(fullgraph=True,
dynamic=True)`: loaded from the folder when an earlier start saved it, else
compiled through torch's AOT precompile (`aot_compile`, traced once on
`example_args` under the `tracing()` config patches) and saved there. The
callable it returns runs without dynamo: no tracing, and no guard evaluation
per call. `compiled_aside(kinds, wait)` says that another process is compiling
graphs of those kinds into the folder meanwhile (the engine process's compile
helper, process.py): `graph` waits for it, then loads, before compiling one.

Why: a warm start of the bundled model spent about 15 s of its 24 s tracing the
decode step and the prefill again with dynamo (inductor's cache skips only the
C++ compile); loading both saved graphs takes about two seconds. The saved graph calls
the kernels inductor keeps in its own cache (`TORCHINDUCTOR_CACHE_DIR`); without
them, loading compiles them again.

What it does not do: guards. dynamo would check, per call, what the graph was
traced for (dtypes, devices, static sizes, which function `then` is); here the
key is built from the same things by the caller (`parts`), and a graph's inputs
are shaped by the caller within what one dynamic graph serves (sizes never 0 or
1). Anything that fails while loading is logged in one line and compiled
again; a failure while compiling is the caller's (compile=auto falls back to
eager at warm-up).

Trust: a saved graph is a Python pickle, as entries of inductor's own cache
are: the folder must be as trusted as the compile cache folder it sits in,
which only the operator chooses (`INTROLLM_COMPILE_CACHE_DIR`); no request
names a path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType

import torch

log = logging.getLogger(__name__)

GRAPHS_FOLDER = "introllm-graphs"  # under inductor's cache folder (see `default_folder`)


def default_folder() -> Path:
    """Beside inductor's own cache (TORCHINDUCTOR_CACHE_DIR, which the console command points at the
    service's compile cache folder), whose kernels the saved graphs call."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / GRAPHS_FOLDER


def source_digest(packages: Iterable[ModuleType]) -> str:
    """sha256 of every .py file under these packages (path and text): any change to the code a graph was
    traced from gives a new key."""
    digest = hashlib.sha256()
    for package in packages:
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root.parent)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def cpu_identity() -> str:
    """The CPU's kind as far as generated code is concerned: ATen's vector capability and a digest of the
    instruction-set flags (/proc/cpuinfo), so a cache folder shared by machines of different CPUs keeps
    their graphs apart. Not inductor's `pick_vec_isa`: that needs a compiler and builds and runs a probe
    per instruction set (~20 s cold, ~3 s after)."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = platform.processor()
    digest = hashlib.sha256(" ".join(sorted(flags.split(":")[-1].split())).encode()).hexdigest()[:16]
    return f"{torch.backends.cpu.get_cpu_capability()}-{digest}"


def cpp_threads() -> tuple[int, bool]:
    """The thread count inductor's C++ kernels are generated for (its `cpp.threads`, else torch's threads now)
    and whether they pick it at run time instead: a kernel compiled for one thread runs on one thread (and one
    compiled for two on two) whatever the engine's threads when it is loaded, so the count is part of the key,
    as it is of inductor's own cache key."""
    from torch._inductor import config as inductor_config

    threads = inductor_config.cpp.threads if inductor_config.cpp.threads >= 1 else torch.get_num_threads()
    return threads, bool(inductor_config.cpp.dynamic_threads)


class GraphCache:
    """Saved graphs for one configuration; see the module docstring."""

    def __init__(self, folder: Path, parts: dict, packages: Iterable[ModuleType]) -> None:
        """parts: JSON-able description of everything the graphs specialize on (model config, dtype, device,
        static sizes, ...); packages: whose source the graphs are traced from."""
        identity = {
            "parts": parts,
            "source": source_digest(packages),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu": cpu_identity(),
            "cpp_threads": cpp_threads(),
        }
        key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]
        self.root = Path(folder)
        self.folder = self.root / key
        self._aside: dict[str, Callable[[], None]] = {}  # graph-name prefix -> wait for the process compiling it

    def has(self, kind: str) -> bool:
        """Whether a graph of this kind (the prefix of its saved names, "sample", ...) is saved already."""
        return any(self.folder.glob(f"{_prefix(kind)}*.graph"))

    def compiled_aside(self, kinds: Iterable[str], wait: Callable[[], None]) -> None:
        """Another process is compiling the graphs of these kinds into this folder now: before compiling one
        of them, `graph` calls `wait` (once; it returns when that process has ended, whatever its outcome)
        and loads what it saved. A graph it did not save is compiled here, as without it."""
        self._aside.update({_prefix(kind): wait for kind in kinds})

    def path(self, name: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
            raise ValueError(f"graph name {name!r}: letters, digits, '-' and '_' only")
        return self.folder / f"{name}.graph"

    def graph(self, name: str, function: Callable, example_args: tuple, tracing: Callable) -> Callable:
        """`function` compiled: loaded when saved before, else compiled on `example_args` and saved."""
        loaded = self._load(name, function)
        wait = None if loaded is not None else next(
            (self._aside.pop(p) for p in list(self._aside) if name.startswith(p)), None)
        if wait is not None:
            started = time.perf_counter()
            wait()
            log.info("waited %.1f s for the graphs compiled aside", time.perf_counter() - started)
            loaded = self._load(name, function)
        if loaded is not None:
            return loaded
        started = time.perf_counter()
        with tracing(), torch._dynamo.config.patch(enable_aot_compile=True):
            compiled = torch.compile(function, fullgraph=True, dynamic=True).aot_compile((example_args, {}))
        compiled.disable_guard_check()
        partial = self.path(name).with_suffix(f".{os.getpid()}.partial")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            # Written aside, then renamed into place: engines sharing the folder (replicas on one cache
            # volume) never load a half-written file.
            compiled.save_compiled_function(str(partial))
            os.replace(partial, self.path(name))
        except Exception as exc:  # noqa: BLE001 - a graph that cannot be saved still serves this start
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            log.warning("compiled %s could not be saved (%s: %s); the next start compiles it again",
                        name, type(exc).__name__, _first_line(exc))
        else:
            log.info("compiled %s in %.1f s, saved in %s", name, time.perf_counter() - started, self.folder)
        return compiled

    def _load(self, name: str, function: Callable) -> Callable | None:
        path = self.path(name)
        if not path.is_file():
            return None
        started = time.perf_counter()
        try:
            with open(path, "rb") as file:
                # The function's module globals: what the saved bytecode looks up by name (torch, ...).
                loaded = torch.compiler.load_compiled_function(file, f_globals=function.__globals__)
        except Exception as exc:  # noqa: BLE001 - a stale or broken file: compile again and overwrite it
            log.warning("saved %s could not be loaded (%s: %s); compiling it again", name, type(exc).__name__,
                        _first_line(exc))
            return None
        loaded.disable_guard_check()
        log.info("loaded compiled %s in %.1f s from %s", name, time.perf_counter() - started, self.folder)
        return loaded


def _prefix(kind: str) -> str:
    """The start of the saved names of a kind's graphs (`kv._graph_name`)."""
    return kind.replace(" ", "-") + "-"


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:200]
