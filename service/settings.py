"""Server settings, read from the environment with the `INTROLLM_` prefix.

What it does: one `Settings` object with every knob of the service (model,
device, limits, deadlines, drain grace period, auth, bind address), validated
once at start-up. `INTROLLM_MAX_NEW_TOKENS=256` sets `max_new_tokens`; the
console command also takes each field as a flag (`--max-new-tokens 256`, see
cli.py). Every field has a description: it is the flag's `--help` text.

What it does not do: read the checkpoint or decide per-request values (the
limits here are upper bounds that requests are checked against), or parse the
command line: `Settings()` reads the environment only.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.api.keys import read_key_file

if TYPE_CHECKING:
    import torch

# The repository root, found from this file rather than the working directory,
# so the bundled default model is found wherever the server is started from.
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CHECKPOINT = REPO_ROOT / "checkpoints" / "introllm-countdown-tiny"


def usable_cpus(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a container's `cpus` limit).

    A container limited to 2 CPUs on a 16-core host sees 16 in its affinity;
    16 torch threads there would fight over 2 CPUs' worth of time.
    """
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return affinity
    if quota == "max":
        return affinity
    return max(1, min(affinity, math.ceil(int(quota) / int(period))))


class Settings(BaseSettings):
    """Everything the operator can set; see the field descriptions."""

    # hide_input_in_errors: a validation error would otherwise quote the input, API keys included.
    # env_ignore_empty: an empty variable means "unset" (compose passes ${X:-} through).
    model_config = SettingsConfigDict(
        env_prefix="INTROLLM_", extra="forbid", hide_input_in_errors=True, env_ignore_empty=True
    )

    # Model
    checkpoint: Path = Field(DEFAULT_CHECKPOINT, description="checkpoint directory to serve")
    model_name: str | None = Field(None, description="name served to clients; unset: the checkpoint folder name")
    device: str = Field("auto", description="'auto' (cuda when available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="the LM's weights and KV cache (the temperature head and the sampling stay float32); "
        "'auto': bfloat16 on cuda and on a CPU with bfloat16 matmul instructions (AMX or AVX512-BF16), "
        "float32 on any other CPU, where bfloat16 would be emulated"
    )
    torch_threads: int | None = Field(
        None, ge=1,
        description="torch intra-op threads of the engine; unset: the CPUs this process may use (affinity and "
        "cgroup quota), less one left to HTTP (at least 1)",
    )
    trust_remote_code: bool = Field(False, description="run Python code shipped with the checkpoint (unsafe)")

    # Scheduling bounds
    # 64: at 64 clients of the bundled task, with a load generator that keeps them all in flight, 3952 and 4090
    # tok/s at 64 against 3370 and 3580 at 32, p50 TTFT 42 to 46 ms against 233 to 251 (BENCHMARKS.md).
    max_running_requests: int = Field(64, ge=1, description="sequences decoded together at most")
    max_waiting_requests: int = Field(64, ge=0, description="admitted requests waiting for a slot; beyond: 429")
    max_n: int = Field(
        16, ge=1, le=1024,
        description="samples a request may ask for (`n`); each is a row counted against max_running_requests, "
        "so the effective limit (in /info) is the smaller of the two",
    )
    max_prompt_tokens: int = Field(1024, ge=1, description="longest prompt, in tokens, BOS included")
    max_new_tokens: int = Field(512, ge=1, description="largest max_new_tokens a request may ask for")
    default_max_new_tokens: int = Field(64, ge=1, description="max_new_tokens of a request that sets none")
    compile: bool | Literal["auto"] = Field(
        "auto",
        description="torch.compile the decode step (forward, temperature head and draw) before serving (faster "
        "steady state; the first start compiles for minutes on a small CPU, later starts reuse "
        "compile_cache_dir); 'auto': on when a C++ compiler and the Python headers are found (CPU and CUDA "
        "alike need them), else off with a "
        "log line, and off with a log line if compiling fails at warm-up; true: a failure stops the start",
    )
    native_decode: bool | Literal["auto"] = Field(
        "auto",
        description="run the decode step through the service's own Llama-family decoder (model/native_decoder.py: "
        "fused matmuls, attention over the KV slots; Llama, Qwen2, Mistral with global attention) instead of the "
        "model's transformers forward; 'auto': when the model is one it knows, else the transformers forward with a "
        "log line; true: refuse to start otherwise",
    )
    compile_cache_dir: Path = Field(
        Path.home() / ".cache" / "introllm" / "torch-compile",
        description="where compiled code is kept across restarts: inductor's kernels, and the decode step's and "
        "prefill's graphs (service/engine/graphs.py), which a restart loads instead of tracing again "
        "(TORCHINDUCTOR_CACHE_DIR wins when set)",
    )
    compile_helper: bool = Field(
        True,
        description="on a first start with a CPU engine, a second process compiles the sampler's graph into "
        "compile_cache_dir while the engine compiles the forward's, so the two share the CPUs (a cold start "
        "10 to 30 s shorter on 2 cores); it runs only with 2 or more CPUs and, within the container's memory "
        "limit too, memory for a second engine process and its compilers twice over; it never changes what is "
        "served",
    )
    prefill_token_budget: int = Field(
        2048, ge=1, description="prompt tokens prefilled between two decode steps (at least one request)"
    )
    prefill_in_step: bool = Field(
        True,
        description="prompts of requests that join while others decode go through those rows' decode step: one "
        "forward per step, as vLLM schedules chunked prefill (the native decoder, prompts of one chunk); false: "
        "a prefill forward of their own before the step, whose first tokens leave before the step runs",
    )
    engine_start_method: Literal["spawn", "forkserver"] = Field(
        "spawn",
        description="how the engine process starts: 'spawn' (a fresh interpreter), or 'forkserver' (later "
        "engines of one process start without importing torch again)",
    )
    max_body_bytes: int = Field(256 * 1024, ge=1024, description="request body size limit; beyond: 413")
    default_timeout_s: float = Field(120.0, gt=0, description="deadline of a request that sets none")
    max_timeout_s: float = Field(600.0, gt=0, description="largest timeout_s a request may ask for")
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 429 and 503")

    # Lifecycle
    drain_grace_s: float = Field(30.0, ge=0, description="on SIGTERM: time given to in-flight requests")
    warm_up: bool = Field(True, description="run one short request through the engine before reporting ready")

    # HTTP
    host: str = Field("127.0.0.1", description="address to listen on ('0.0.0.0': every interface)")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on")
    api_key: SecretStr | None = Field(None, description="when set, /v1/* needs 'Authorization: Bearer <key>'")
    # NoDecode: pydantic-settings would read a list from the environment as JSON only;
    # _split_keys also takes the plain comma-separated form.
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        [],  # pydantic copies a mutable default per instance; a literal shows in --help
        description="more accepted API keys (for rotation): a JSON list or comma-separated; "
        "any of api_key, api_keys and api_key_file is accepted",
    )
    api_key_file: Path | None = Field(
        None,
        description="file of accepted API keys, one per line ('#' comments and blank lines ignored); "
        "re-read when it changes, so keys rotate without a restart",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="log level of the service and uvicorn"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="'text', or 'json': one JSON object per log line (time, level, logger, message, "
        "request_id), uvicorn's lines included"
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    # Not echoing the value: it holds keys.
                    raise ValueError("api_keys: not a valid JSON list (or use comma-separated keys)") from None
            else:
                value = text.split(",")
        if isinstance(value, list | tuple):
            value = [item.strip() if isinstance(item, str) else item for item in value]
            return [item for item in value if item != ""]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.default_max_new_tokens > self.max_new_tokens:
            raise ValueError("default_max_new_tokens must not exceed max_new_tokens")
        if self.default_timeout_s > self.max_timeout_s:
            raise ValueError("default_timeout_s must not exceed max_timeout_s")
        if self.api_key_file is not None:
            # A clear start-up error rather than a server that refuses every request.
            if not read_key_file(self.api_key_file) and not self.accepted_keys():
                raise ValueError(f"api_key_file {str(self.api_key_file)!r} holds no key")
        return self

    def accepted_keys(self) -> list[str]:
        """The keys of api_key and api_keys (the key file's are read by service.api.keys.KeyRing)."""
        keys = [self.api_key] if self.api_key is not None else []
        return [key.get_secret_value() for key in [*keys, *self.api_keys] if key.get_secret_value()]

    @property
    def served_model_name(self) -> str:
        return self.model_name or self.checkpoint.name

    # torch is imported in these, not at the top: `introllm-serve --help` and a bad flag are answered
    # at once, and the API process never imports it (the engine process resolves "auto").
    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def use_compile_cache_dir(self) -> None:
        """Point torch.compile's on-disk cache at `compile_cache_dir`, unless TORCHINDUCTOR_CACHE_DIR is set.

        Call before torch is imported: importing torch's compiler sets the
        variable to a default under /tmp, lost with a container.
        """
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.compile_cache_dir))

    def engine_threads(self) -> int:
        """torch threads for the engine: `torch_threads`, or every usable CPU but one (the event loop's)."""
        if self.torch_threads is not None:
            return self.torch_threads
        # On 2 cores one thread measured faster than two next to a busy event
        # loop (BENCHMARKS.md: 1563 against 1071 tok/s at batch 16).
        return max(1, usable_cpus() - 1)

    def compile_decision(self) -> tuple[bool, str]:
        """Whether to torch.compile, and why (logged at start-up)."""
        if self.compile == "auto":
            # Inductor builds C++ for the CPU, and Triton its CUDA launchers with a C compiler.
            compiler = next(
                (found for name in (os.environ.get("CXX"), "g++", "c++", "clang++") if name
                 and (found := shutil.which(name))), None,
            )
            if compiler is None:
                return False, "compile=auto: no C++ compiler found (install g++, or set compile=false)"
            # Inductor's C++ includes Python.h: a compiler without the Python headers cannot build anything.
            headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
            if not headers.is_file():
                return False, (f"compile=auto: no Python headers ({headers} is missing: install the python"
                               f"{sys.version_info.major}.{sys.version_info.minor}-dev package, or set compile=false)")
            return True, (f"compile=auto: device {self.device}, C++ compiler {compiler}; if compiling fails at "
                          "warm-up the engine serves without it")
        return self.compile, f"compile={str(self.compile).lower()}"

    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype, self.torch_device())


def resolve_device(device: str) -> torch.device:
    """The device a `device` setting names ("auto": CUDA when torch sees a GPU, else the CPU); imports torch."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The weights' dtype a `dtype` setting names (`dtype_decision`); imports torch."""
    return dtype_decision(dtype, device)[0]


def dtype_decision(dtype: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The weights' dtype a `dtype` setting names, and why (logged by the engine process); imports torch.

    "auto": bfloat16 on CUDA, and on a CPU with bfloat16 matmul instructions,
    where the bundled model's compiled decode step at 16 rows ran in 2.0 ms
    against 4.3 in float32 with the same answers (BENCHMARKS.md); float32 on
    any other CPU, where bfloat16 matmuls are emulated."""
    import torch

    if dtype != "auto":
        return getattr(torch, dtype), f"dtype={dtype}"
    if device.type == "cuda":
        return torch.bfloat16, "dtype=auto: bfloat16 on cuda"
    if device.type == "cpu" and (instructions := cpu_bfloat16_instructions()):
        return torch.bfloat16, f"dtype=auto: bfloat16 (this CPU has {instructions}; dtype=float32 to serve in float32)"
    return torch.float32, (f"dtype=auto: float32 (no AMX or AVX512-BF16 on this {device.type}: bfloat16 would be "
                           "emulated)")


def cpu_bfloat16_instructions() -> str | None:
    """The instructions that give this CPU native bfloat16 matmuls ("AMX", "AVX512-BF16"), or None; imports torch."""
    import torch

    probes = (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
    for name, probe in probes:
        supported = getattr(torch.cpu, probe, None)  # private helpers of torch.cpu (cpuinfo underneath)
        if supported is not None and supported():
            return name
    return None
