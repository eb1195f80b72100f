"""Ports for the servers the tests start as processes of their own (replicas, nginx, Prometheus).

A port from bind(("127.0.0.1", 0)) lies in the kernel's ephemeral range, where every connect()
and every other bind-to-0 on the machine also draws its ports. A server that must come back on the
same address (a replica restarted as its supervisor would) leaves its port free meanwhile, and under
pytest-xdist another worker's server could take it there: the restarted replica then fails to bind
while the health checks are answered by the other worker's server. Ports below the ephemeral
range are never handed out by the kernel, so only another explicit pick can collide, and the probe
below (no SO_REUSEADDR) refuses a port that anything still holds.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

# Random from the OS, not `random`'s global generator: a test that seeds that would give every
# xdist worker the same sequence of ports.
_PICK = random.SystemRandom()
_WIDTH = 8000


def ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nothing holds, below the ephemeral range where there is room, else one the kernel picks."""
    low, _ = ephemeral_range()
    if low - _WIDTH >= 1024:
        for _ in range(200):
            port = _PICK.randrange(low - _WIDTH, low)
            if _bindable(port):
                return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
