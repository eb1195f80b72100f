"""Settings: environment prefix, the bundled default checkpoint, consistency checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.settings import DEFAULT_CHECKPOINT, REPO_ROOT, Settings


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
    assert settings.torch_device().type == "cpu" and str(settings.torch_dtype()) == "torch.float32"


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
