"""IntroLLM Serve's HTTP service: a FastAPI app over a continuous-batching engine.

Layers, each in one file: settings (environment), schemas (the wire format),
routes (thin handlers), scheduler (admission, limits, text and stop strings,
deadlines, engine-to-asyncio delivery), engine (the decode thread), kv (the
batched KV cache), sampling (per-row temperature and token draws), metrics
(Prometheus), app (create_app + lifespan), playground (the page in static/ that
shows the tau of each token), __main__ (the console command).
Uses `model/` only; knows nothing of training.
"""

__version__ = "0.1.0"
