"""Prometheus metrics of one server, in a registry of its own.

What it does: defines the metric families (prefix `introllm_`, names after
vLLM's where one exists, labels `model` and `temperature_mode`) and small
typed methods the engine and the routes call. Each `ServiceMetrics` owns a
`CollectorRegistry`, so several apps can live in one process (tests).

Families, with the PromQL a dashboard uses:
  time_to_first_token_seconds, inter_token_latency_seconds,
  e2e_request_latency_seconds, request_queue_time_seconds     histograms
  request_prompt_tokens, request_generation_tokens             histograms
  prompt_tokens_total, generation_tokens_total                 counters
  request_success_total{finished_reason}                       responses by finish reason
                                                               (length, eos, stop, timeout)
  request_failure_total{reason}                                validation, overloaded,
                                                               unauthorized, unavailable,
                                                               cancelled, timeout, internal
  num_requests_running, num_requests_waiting                   gauges
  batch_size                                                   histogram, one sample per decode step
  request_mean_temperature                                     histogram of each request's mean tau:
      average tau per request = rate(..._sum[5m]) / rate(..._count[5m])
  token_temperature                                            histogram of every token's tau
  temperature_updates_total                                    tokens whose gate fired:
      gate rate = rate(temperature_updates_total) / rate(generation_tokens_total)
A request that times out returns its partial output (finished_reason
"timeout") and is also counted as a failure with reason "timeout".

What the server runs with, set once when the checkpoint is loaded (the facts
of /info), so that alert rules and dashboards compare with the replica's own
numbers rather than numbers written into them:
  model_info{model, base_model, checkpoint_format_version, tau_min, tau_max,
             version, device, dtype}                           always 1 (vLLM's *_info convention);
      join it for labels: ... * on (model, replica) group_left (version) introllm_model_info
  max_running_requests, max_waiting_requests                   gauges, the scheduling bounds:
      saturation = num_requests_waiting / max_waiting_requests
  temperature_range_min, temperature_range_max                 gauges, the loaded head's [tau_min, tau_max]
      (labels cannot be compared numerically in PromQL, hence gauges beside the info labels)

What it does not do: serve /metrics (routes.py) or time anything itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "introllm_"
# Geometric from 0.1 ms: a tiny model on CPU decodes a token in about 1 ms.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
TOKEN_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TAU_BUCKETS = tuple(round(0.1 * i, 2) for i in range(1, 21)) + (2.5, 3.0, 5.0, 10.0)
FAILURE_REASONS = ("validation", "overloaded", "unauthorized", "unavailable", "cancelled", "timeout", "internal")


class ServiceMetrics:
    """All families of one server; `for_request` binds the per-request labels once."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ("model", "temperature_mode")

        def histogram(name: str, doc: str, buckets, label_names=labels) -> Histogram:
            return Histogram(PREFIX + name, doc, label_names, buckets=buckets, registry=self.registry)

        def counter(name: str, doc: str, label_names=labels) -> Counter:
            return Counter(PREFIX + name, doc, label_names, registry=self.registry)

        self.ttft = histogram("time_to_first_token_seconds", "Arrival to first token.", LATENCY_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between two tokens of a request.", LATENCY_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Arrival to last token.", LATENCY_BUCKETS)
        self.queue = histogram("request_queue_time_seconds", "Arrival to start of prefill.", LATENCY_BUCKETS)
        self.prompt_hist = histogram("request_prompt_tokens", "Prompt tokens per request.", TOKEN_COUNT_BUCKETS)
        self.generation_hist = histogram(
            "request_generation_tokens", "Generated tokens per request.", TOKEN_COUNT_BUCKETS
        )
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens prefilled.")
        self.generation_tokens = counter("generation_tokens", "Tokens generated.")
        self.success = counter(
            "request_success", "Requests answered, by finish reason.", (*labels, "finished_reason")
        )
        self.failure = counter("request_failure", "Requests failed, by reason.", ("model", "reason"))
        self.running = Gauge(PREFIX + "num_requests_running", "Sequences in the running batch.", ("model",),
                             registry=self.registry)
        self.waiting = Gauge(PREFIX + "num_requests_waiting", "Admitted requests waiting for a slot.", ("model",),
                             registry=self.registry)
        self.batch_size = histogram("batch_size", "Rows per decode step.", BATCH_BUCKETS, ("model",))
        self.mean_tau = histogram("request_mean_temperature", "Mean per-token temperature of a request.",
                                  TAU_BUCKETS)
        self.token_tau = histogram("token_temperature", "Temperature applied to each generated token.",
                                   TAU_BUCKETS)
        self.tau_updates = counter("temperature_updates", "Tokens at which the temperature gate fired.")

        def gauge(name: str, doc: str, label_names=("model",)) -> Gauge:
            return Gauge(PREFIX + name, doc, label_names, registry=self.registry)

        self.model_info = gauge("model_info", "What the server runs with (always 1; the facts are labels).",
                                ("model", *INFO_LABELS))
        self.max_running = gauge("max_running_requests", "Bound on the running batch (max_running_requests).")
        self.max_waiting = gauge("max_waiting_requests", "Bound on waiting requests (max_waiting_requests).")
        self.tau_min = gauge("temperature_range_min", "tau_min of the loaded temperature head.")
        self.tau_max = gauge("temperature_range_max", "tau_max of the loaded temperature head.")
        # Create the label sets that exist from the start, so dashboards and
        # tests see zeros rather than missing series.
        for reason in FAILURE_REASONS:
            self.failure.labels(model, reason)
        self.running.labels(model).set(0)
        self.waiting.labels(model).set(0)

    def for_request(self, mode: str) -> RequestMetrics:
        labels = (self.model, mode)
        return RequestMetrics(
            owner=self,
            mode=mode,
            ttft=self.ttft.labels(*labels),
            itl=self.itl.labels(*labels),
            e2e=self.e2e.labels(*labels),
            queue=self.queue.labels(*labels),
            prompt_hist=self.prompt_hist.labels(*labels),
            generation_hist=self.generation_hist.labels(*labels),
            prompt_tokens=self.prompt_tokens.labels(*labels),
            generation_tokens=self.generation_tokens.labels(*labels),
            mean_tau=self.mean_tau.labels(*labels),
            token_tau=self.token_tau.labels(*labels),
            tau_updates=self.tau_updates.labels(*labels),
        )

    def set_server(self, info: ServerInfo) -> None:
        """Export what the server runs with; called once the checkpoint is loaded."""
        self.model_info.clear()  # one label set: a second call replaces, never adds
        self.model_info.labels(self.model, *(str(getattr(info, name)) for name in INFO_LABELS)).set(1)
        self.max_running.labels(self.model).set(info.max_running_requests)
        self.max_waiting.labels(self.model).set(info.max_waiting_requests)
        self.tau_min.labels(self.model).set(info.tau_min)
        self.tau_max.labels(self.model).set(info.tau_max)

    def failed(self, reason: str) -> None:
        self.failure.labels(self.model, reason).inc()

    def set_load(self, running: int, waiting: int) -> None:
        self.running.labels(self.model).set(running)
        self.waiting.labels(self.model).set(waiting)

    def observe_batch(self, size: int) -> None:
        self.batch_size.labels(self.model).observe(size)


INFO_LABELS = ("base_model", "checkpoint_format_version", "tau_min", "tau_max", "version", "device", "dtype")


@dataclass(frozen=True)
class ServerInfo:
    """The facts `set_server` exports: the labels of model_info and the values of the bound gauges."""

    base_model: str
    checkpoint_format_version: int
    tau_min: float
    tau_max: float
    version: str
    device: str
    dtype: str
    max_running_requests: int
    max_waiting_requests: int


@dataclass
class RequestMetrics:
    """The children of one request's label set; called from the engine thread."""

    owner: ServiceMetrics
    mode: str
    ttft: Histogram
    itl: Histogram
    e2e: Histogram
    queue: Histogram
    prompt_hist: Histogram
    generation_hist: Histogram
    prompt_tokens: Counter
    generation_tokens: Counter
    mean_tau: Histogram
    token_tau: Histogram
    tau_updates: Counter

    def started(self, queue_s: float, prompt_tokens: int) -> None:
        self.queue.observe(queue_s)
        self.prompt_tokens.inc(prompt_tokens)
        self.prompt_hist.observe(prompt_tokens)

    def token(self, tau: float, updated: bool, ttft_s: float | None, itl_s: float | None) -> None:
        self.generation_tokens.inc()
        self.token_tau.observe(tau)
        if updated:
            self.tau_updates.inc()
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        if itl_s is not None:
            self.itl.observe(itl_s)

    def finished(self, reason: str, e2e_s: float, generated: int, mean_tau: float | None) -> None:
        self.e2e.observe(e2e_s)
        self.generation_hist.observe(generated)
        if mean_tau is not None:
            self.mean_tau.observe(mean_tau)
        self.owner.success.labels(self.owner.model, self.mode, reason).inc()
        if reason == "timeout":
            self.owner.failed("timeout")
