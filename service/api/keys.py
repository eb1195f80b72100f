"""API keys: the set of accepted bearer keys, and its constant-time check.

What it does: `KeyRing` holds the keys of `api_key`, `api_keys` and
`api_key_file` (one key per line; blank lines and lines starting with `#`
ignored). The file is re-read when it changes (its mtime, size or inode), so
keys rotate without a restart: add the new key, move clients over, remove the
old one. A file that cannot be read at start-up is an error (`read_key_file`
raises); one that becomes unreadable later keeps the last keys read, with a
warning. `matches` compares a token against every key with
`hmac.compare_digest`, without stopping at the first match, so the time taken
does not tell which key (or whether an early one) matched.

What it does not do: parse the Authorization header (routes.py), or ever
log or return a key: log lines name the file, never its content.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)


def read_key_file(path: Path) -> list[bytes]:
    """The keys in `path`; raises ValueError (without any key in its message) when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ValueError(f"api_key_file {str(path)!r} cannot be read: {reason}") from None
    return parse_keys(text.splitlines())


def parse_keys(lines: Iterable[str]) -> list[bytes]:
    keys = []
    for line in lines:
        key = line.strip()
        if key and not key.startswith("#"):
            keys.append(key.encode())
    return keys


class KeyRing:
    def __init__(self, fixed: Iterable[str], path: Path | None = None) -> None:
        self._fixed = [key.encode() for key in fixed if key]
        self._path = path
        # require_api_key runs on the event loop (a stat per request, a read only when the file
        # changed); the lock keeps the ring safe for callers on other threads too.
        self._lock = threading.Lock()
        self._file_keys: list[bytes] = []
        self._file_state: tuple[int, int, int] | None = None
        if path is not None:
            self._file_state = self._stat()
            self._file_keys = read_key_file(path)

    @property
    def enabled(self) -> bool:
        """Auth is on when any key source is configured (an emptied key file then refuses everyone)."""
        return bool(self._fixed) or self._path is not None

    def keys(self) -> list[bytes]:
        self._reload_if_changed()
        return self._fixed + self._file_keys

    def matches(self, token: bytes) -> bool:
        """Whether `token` is one of the keys; compares with every key, in constant time per key."""
        found = False
        for key in self.keys():
            found |= hmac.compare_digest(token, key)
        return found

    def _stat(self) -> tuple[int, int, int] | None:
        assert self._path is not None
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        # mtime alone can miss a rewrite within the file system's timestamp granularity.
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _reload_if_changed(self) -> None:
        if self._path is None:
            return
        state = self._stat()
        if state == self._file_state:
            return
        with self._lock:
            if state == self._file_state:
                return
            self._file_state = state
            try:
                keys = read_key_file(self._path)
            except ValueError as exc:
                log.warning("%s; keeping the %d keys read before", exc, len(self._file_keys))
                return
            self._file_keys = keys
            level = logging.WARNING if not keys else logging.INFO
            log.log(level, "api_key_file %s re-read: %d keys", self._path, len(keys))
