"""Settings: environment prefix, the bundled default checkpoint, consistency checks."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
from pydantic import ValidationError

import service.settings as settings_module
from service.settings import DEFAULT_CHECKPOINT, REPO_ROOT, Settings, usable_cpus


def test_default_checkpoint_is_the_bundled_model_wherever_the_server_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.checkpoint == DEFAULT_CHECKPOINT == REPO_ROOT / "checkpoints" / "introllm-countdown-tiny"
    assert settings.checkpoint.is_absolute() and (REPO_ROOT / "service" / "settings.py").is_file()
    assert settings.served_model_name == "introllm-countdown-tiny"


def test_environment_variables_with_the_prefix_set_fields(monkeypatch):
    monkeypatch.setenv("INTROLLM_MAX_NEW_TOKENS", "77")
    monkeypatch.setenv("INTROLLM_API_KEY", "s3cret")
    monkeypatch.setenv("INTROLLM_DEVICE", "cpu")
    settings = Settings()
    assert settings.max_new_tokens == 77
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
    assert settings.torch_device().type == "cpu"


@pytest.mark.parametrize(("instructions", "expected"), [("AVX512-BF16", "bfloat16"), ("AMX", "bfloat16"),
                                                         (None, "float32")])
def test_auto_dtype_on_a_cpu_is_bfloat16_only_where_it_has_bfloat16_instructions(monkeypatch, instructions, expected):
    import torch

    monkeypatch.setattr(settings_module, "cpu_bfloat16_instructions", lambda: instructions)
    dtype, why = settings_module.dtype_decision("auto", torch.device("cpu"))
    assert dtype == getattr(torch, expected)
    assert why.startswith(f"dtype=auto: {expected}") and (instructions or "emulated") in why
    assert settings_module.dtype_decision("auto", torch.device("cuda"))[0] == torch.bfloat16
    # An explicit dtype is served as set, whatever the CPU has.
    assert settings_module.dtype_decision("float32", torch.device("cpu")) == (torch.float32, "dtype=float32")
    monkeypatch.setenv("INTROLLM_DEVICE", "cpu")
    assert Settings().torch_dtype() == getattr(torch, expected)


def test_the_bfloat16_instructions_found_are_the_ones_the_kernel_lists():
    # torch's probe (cpuinfo, CPUID) against the flags Linux reports for the same CPU.
    flags = {flag for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
             for flag in line.split(":", 1)[1].split()}
    found = settings_module.cpu_bfloat16_instructions()
    assert found in (None, "AMX", "AVX512-BF16")
    assert (found is not None) == bool(flags & {"amx_bf16", "avx512_bf16"})


@pytest.mark.parametrize(
    "values",
    [
        {"default_max_new_tokens": 100, "max_new_tokens": 10},
        {"default_timeout_s": 100, "max_timeout_s": 10},
        {"max_running_requests": 0},
        {"unknown_knob": 1},
    ],
)
def test_inconsistent_or_unknown_settings_are_refused(values):
    with pytest.raises(ValidationError):
        Settings(**values)


@pytest.mark.parametrize("value", ["k-one,k-two", " k-one , k-two ,", '["k-one", "k-two"]'])
def test_api_keys_come_from_the_environment_comma_separated_or_as_json(monkeypatch, value):
    monkeypatch.setenv("INTROLLM_API_KEYS", value)
    monkeypatch.setenv("INTROLLM_API_KEY", "k-zero")
    settings = Settings()
    assert settings.accepted_keys() == ["k-zero", "k-one", "k-two"]
    assert "k-" not in repr(settings) and "k-" not in str(settings)


def test_a_key_file_is_read_at_start_up_and_errors_never_quote_keys(monkeypatch, tmp_path):
    monkeypatch.setenv("INTROLLM_API_KEYS", "k-secret-one")
    monkeypatch.setenv("INTROLLM_API_KEY_FILE", str(tmp_path / "absent"))
    with pytest.raises(ValidationError) as missing:
        Settings()
    assert "absent" in str(missing.value) and "cannot be read" in str(missing.value)
    (tmp_path / "empty").write_text("# no keys yet\n\n")
    monkeypatch.delenv("INTROLLM_API_KEYS")
    monkeypatch.setenv("INTROLLM_API_KEY_FILE", str(tmp_path / "empty"))
    with pytest.raises(ValidationError, match="holds no key"):
        Settings()
    monkeypatch.setenv("INTROLLM_API_KEYS", '["k-secret-one", ')  # broken JSON
    with pytest.raises(ValidationError) as broken:
        Settings()
    for error in (missing.value, broken.value):
        assert "k-secret" not in str(error) and "k-secret" not in repr(error)


def test_log_format_is_text_or_json(monkeypatch):
    assert Settings().log_format == "text"
    monkeypatch.setenv("INTROLLM_LOG_FORMAT", "json")
    assert Settings().log_format == "json"
    monkeypatch.setenv("INTROLLM_LOG_FORMAT", "xml")
    with pytest.raises(ValidationError):
        Settings()


# ---------------------------------------------------------------- fast defaults


@pytest.mark.parametrize(("cpu_max", "expected"), [("max 100000\n", None), ("200000 100000\n", 2),
                                                   ("150000 100000\n", 2), ("50000 100000\n", 1)])
def test_usable_cpus_is_capped_by_a_cgroup_quota(tmp_path, cpu_max, expected):
    # A container limited to 2 CPUs on a larger host must not start a thread per host core.
    quota = tmp_path / "cpu.max"
    quota.write_text(cpu_max)
    affinity = usable_cpus(tmp_path / "absent")
    assert usable_cpus(quota) == (affinity if expected is None else min(affinity, expected))


def test_the_engine_gets_every_usable_cpu_but_one_unless_told(monkeypatch):
    assert Settings().engine_threads() == max(1, usable_cpus() - 1)
    monkeypatch.setenv("INTROLLM_TORCH_THREADS", "3")
    assert Settings().engine_threads() == 3
    monkeypatch.setenv("INTROLLM_TORCH_THREADS", "")  # compose's ${X:-}: unset, not an error
    assert Settings().engine_threads() == max(1, usable_cpus() - 1)


def test_compile_auto_turns_on_only_with_a_cpp_compiler(monkeypatch, tmp_path):
    assert Settings(compile=False).compile_decision()[0] is False
    assert Settings(compile=True).compile_decision()[0] is True
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler on it
    enabled, why = Settings(device="cpu").compile_decision()
    assert enabled is False and "no C++ compiler" in why
    compiler = tmp_path / "g++"
    compiler.write_text("#!/bin/sh\n")
    compiler.chmod(0o755)
    enabled, why = Settings(device="cpu").compile_decision()
    assert enabled is True and str(compiler) in why


def test_compile_auto_stays_off_without_the_python_headers(monkeypatch, tmp_path):
    compiler = tmp_path / "g++"
    compiler.write_text("#!/bin/sh\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    headers = tmp_path / "include"  # no Python.h in it, as on a system without python3.X-dev
    headers.mkdir()
    real_paths = sysconfig.get_paths()
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {**real_paths, "include": str(headers)})
    enabled, why = Settings(device="cpu").compile_decision()
    assert enabled is False and str(headers / "Python.h") in why and "-dev" in why
    assert Settings(device="cpu", compile=True).compile_decision()[0] is True  # true is the operator's word
