"""Several API keys on real servers: api_key, api_keys and api_key_file are all
accepted, anything else is refused, and a key file's changes take effect
without a restart. That no key reaches a log line is checked on a real
process in test_logs.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.api.keys import KeyRing
from tests.service.support import settings_for, start_server, stop_server

BODY = {"prompt": "a", "max_new_tokens": 2}


def _status(client, key: str | None) -> int:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return client.post("/v1/generate", json=BODY, headers=headers).status_code


def _write(path: Path, text: str) -> None:
    # As an operator's tooling would: write aside, then rename over (atomic).
    aside = path.with_suffix(".new")
    aside.write_text(text)
    os.replace(aside, path)


def test_a_server_with_several_keys_accepts_each_and_refuses_others(checkpoint_dir, tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("# rotation 2025-01\nfile-key-1\n\n   file-key-2  \n")
    settings = settings_for(checkpoint_dir, api_key="single-key", api_keys=["list-key-1", "list-key-2"],
                            api_key_file=key_file)
    live = start_server(settings)
    try:
        with live.client() as client:
            for key in ("single-key", "list-key-1", "list-key-2", "file-key-1", "file-key-2"):
                assert _status(client, key) == 200, key
            for key in (None, "wrong", "list-key", "list-key-10", "file-key-1 file-key-2", "# rotation 2025-01"):
                assert _status(client, key) == 401, key
            info = client.get("/info")
        assert info.json()["auth"] is True
        assert "key-" not in info.text
    finally:
        stop_server(live)


def test_a_key_file_change_takes_effect_without_restart(checkpoint_dir, tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("old-key\n")
    live = start_server(settings_for(checkpoint_dir, api_key_file=key_file))
    try:
        with live.client() as client:
            assert (_status(client, "old-key"), _status(client, "new-key")) == (200, 401)
            _write(key_file, "old-key\nnew-key\n")  # rotation, step 1: both valid
            assert (_status(client, "old-key"), _status(client, "new-key")) == (200, 200)
            _write(key_file, "# old-key retired\nnew-key\n")  # step 2: the old one removed
            assert (_status(client, "old-key"), _status(client, "new-key")) == (401, 200)
            key_file.write_text("newest-key\n")  # rewritten in place (same inode)
            assert (_status(client, "new-key"), _status(client, "newest-key")) == (401, 200)
            key_file.unlink()  # gone: the last keys read still hold
            assert _status(client, "newest-key") == 200
            key_file.write_text("")  # emptied: nobody gets in (auth stays on)
            assert _status(client, "newest-key") == 401
    finally:
        stop_server(live)


def test_a_key_ring_compares_with_every_key(tmp_path):
    ring = KeyRing(["a-key", "b-key"])
    assert ring.enabled and ring.matches(b"a-key") and ring.matches(b"b-key")
    assert not ring.matches(b"") and not ring.matches(b"a-keyb-key")
    assert not KeyRing([]).enabled and not KeyRing([]).matches(b"")


def test_a_missing_key_file_is_an_error_that_names_the_file(tmp_path):
    missing = tmp_path / "missing-keys"
    with pytest.raises(ValueError, match="missing-keys.*cannot be read"):
        KeyRing([], missing)
