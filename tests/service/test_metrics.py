"""Metrics: after a known set of requests, the counters and the temperature
histograms match what the responses reported."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict

import pytest

from service.metrics import ServiceMetrics
from tests.service.support import read_sse, sse_json

REQUESTS = [
    {"prompt": "3 5 7 2>24\n", "max_new_tokens": 12, "seed": 1},
    {"prompt": "1 2>3\n", "max_new_tokens": 7, "seed": 2, "ignore_eos": True},
    {"prompt": "hello", "max_new_tokens": 20, "seed": 3, "stop": ["a", "e"]},
    {"prompt": "x", "temperature": 0.9, "max_new_tokens": 9, "seed": 4, "ignore_eos": True},
    {"prompt": "9 9>81\n", "temperature": 1.4, "max_new_tokens": 15, "seed": 5},
    {"prompt": "12 7 3>2\n", "temperature_mode": "entropy", "max_new_tokens": 11, "seed": 6},
    {"prompt": "1 2>3\n", "max_new_tokens": 6, "seed": 7, "timeout_s": 0.001, "ignore_eos": True},
]
STREAMED = {"prompt": "10 20>30\n", "max_new_tokens": 8, "seed": 8, "ignore_eos": True, "stream": True}


def _lab(**labels: str) -> str:
    return ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))


def test_counters_and_the_mean_tau_histogram_match_the_responses(server):
    async def run() -> list[dict]:
        async with server.async_client() as client:
            plain = await asyncio.gather(*(client.post("/v1/generate", json=body) for body in REQUESTS))
            async with client.stream("POST", "/v1/generate", json=STREAMED) as response:
                lines = [line async for line in response.aiter_lines()]
            bad = await client.post("/v1/generate", json={"prompt": "a", "max_new_tokens": 0})
        assert bad.status_code == 422
        assert all(r.status_code == 200 for r in plain)
        done = sse_json(read_sse(iter(lines)))[-1]
        return [r.json() for r in plain] + [done]

    bodies = asyncio.run(run())
    server.wait_idle()
    metrics = server.metrics()
    by_mode: dict[str, list[dict]] = defaultdict(list)
    for body in bodies:
        by_mode[body["temperature"]["mode"]].append(body)
    assert set(by_mode) == {"learned", "fixed", "entropy"}
    reasons = Counter((b["temperature"]["mode"], b["finish_reason"]) for b in bodies)
    assert ("learned", "timeout") in reasons

    for mode, answered in by_mode.items():
        labels = _lab(model="tiny-test", temperature_mode=mode)
        tokens = sum(b["usage"]["completion_tokens"] for b in answered)
        means = [b["temperature"]["mean"] for b in answered if b["temperature"].get("mean") is not None]
        assert metrics[f"introllm_generation_tokens_total{{{labels}}}"] == tokens
        assert metrics[f"introllm_prompt_tokens_total{{{labels}}}"] == sum(
            b["usage"]["prompt_tokens"] for b in answered if b["usage"]["completion_tokens"] > 0
        )
        assert metrics[f"introllm_token_temperature_count{{{labels}}}"] == tokens
        assert metrics[f"introllm_temperature_updates_total{{{labels}}}"] == sum(
            b["temperature"]["updates"] for b in answered
        )
        assert metrics[f"introllm_request_mean_temperature_count{{{labels}}}"] == len(means)
        assert metrics[f"introllm_request_mean_temperature_sum{{{labels}}}"] == pytest.approx(sum(means), rel=1e-9)
        assert metrics[f"introllm_e2e_request_latency_seconds_count{{{labels}}}"] == len(answered)
        for (reason_mode, reason), count in reasons.items():
            if reason_mode == mode:
                key = _lab(model="tiny-test", temperature_mode=mode, finished_reason=reason)
                assert metrics[f"introllm_request_success_total{{{key}}}"] == count

    failures = {r: metrics[f'introllm_request_failure_total{{{_lab(model="tiny-test", reason=r)}}}']
                for r in ("validation", "timeout", "cancelled", "overloaded")}
    assert failures == {"validation": 1, "timeout": reasons[("learned", "timeout")], "cancelled": 0, "overloaded": 0}
    assert metrics['introllm_num_requests_running{model="tiny-test"}'] == 0
    assert metrics['introllm_num_requests_waiting{model="tiny-test"}'] == 0
    assert metrics['introllm_batch_size_count{model="tiny-test"}'] > 0


def test_each_app_has_its_own_registry():
    first, second = ServiceMetrics("a"), ServiceMetrics("a")
    first.failed("validation")
    sample = ("introllm_request_failure_total", {"model": "a", "reason": "validation"})
    assert first.registry.get_sample_value(*sample) == 1
    assert second.registry.get_sample_value(*sample) == 0
