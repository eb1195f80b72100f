"""Metrics: after a known set of requests, the counters and the temperature
histograms match what the responses reported; a server exports what it runs
with (model info, limits, tau range) for alerts and dashboards to compare with."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import service
from model import FORMAT_VERSION, HeadConfig, TemperatureHead, build_char_tokenizer, build_tiny_lm, save_checkpoint
from service.api.metrics import ServiceMetrics
from tests.service.support import TEST_LM, read_sse, settings_for, sse_json, start_server, stop_server

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


@pytest.fixture(scope="module")
def narrow_checkpoint_dir(tmp_path_factory) -> Path:
    """A tiny checkpoint whose head runs on [0.5, 1.5], not the default [0.1, 2.0]: nothing can be hard-coded."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_lm(tokenizer, TEST_LM, seed=0)
    head = TemperatureHead(HeadConfig(hidden_size=TEST_LM.hidden_size, tau_min=0.5, tau_max=1.5))
    path = tmp_path_factory.mktemp("ckpt") / "tiny-narrow"
    return save_checkpoint(path, model, tokenizer, head, base_model="tiny-narrow-base")


def _samples(url: str, name: str) -> list[dict[str, str]]:
    """The label sets of every sample called `name` on a server's /metrics, with the value under "value"."""
    text = httpx.get(f"{url}/metrics", timeout=60).text
    return [
        {**sample.labels, "value": sample.value}
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def test_the_server_exports_what_it_runs_with_as_an_info_metric_and_limit_gauges(narrow_checkpoint_dir):
    # Non-default limits and tau range, so that a number written in anywhere fails here.
    live = start_server(settings_for(narrow_checkpoint_dir, model_name="narrow",
                                     max_running_requests=3, max_waiting_requests=5))
    try:
        with live.client() as client:
            info = client.get("/info").json()
        [model_info] = _samples(live.url, "introllm_model_info")
        assert model_info == {
            "model": "narrow",
            "base_model": "tiny-narrow-base",
            "checkpoint_format_version": str(FORMAT_VERSION),
            "tau_min": model_info["tau_min"],
            "tau_max": model_info["tau_max"],
            "version": service.__version__,
            "device": "cpu",
            "dtype": "float32",
            "value": 1.0,
        }
        assert (float(model_info["tau_min"]), float(model_info["tau_max"])) == (0.5, 1.5)
        # The same facts as /info.
        assert (model_info["version"], model_info["device"], model_info["dtype"]) == (
            info["version"], info["device"], info["dtype"]
        )
        assert [float(model_info["tau_min"]), float(model_info["tau_max"])] == info["tau_range"]

        gauges = {
            name: _samples(live.url, f"introllm_{name}")
            for name in ("max_running_requests", "max_waiting_requests", "temperature_range_min",
                         "temperature_range_max")
        }
        assert gauges == {
            "max_running_requests": [{"model": "narrow", "value": 3.0}],
            "max_waiting_requests": [{"model": "narrow", "value": 5.0}],
            "temperature_range_min": [{"model": "narrow", "value": 0.5}],
            "temperature_range_max": [{"model": "narrow", "value": 1.5}],
        }
        assert info["limits"]["max_running_requests"] == 3 and info["limits"]["max_waiting_requests"] == 5
    finally:
        stop_server(live)
