"""IntroLLM Serve's HTTP service: a FastAPI app over a continuous-batching engine, in two processes.

Which process a file runs in is its folder:
  - api/ (the API process, never imports torch): app (create_app + lifespan),
    routes (thin handlers), schemas (the wire format), scheduler (admission,
    limits, tokenization, text and stop strings, deadlines), events (what a
    request's reader receives), engine_client and engine_boot (start and talk
    to the engine process), metrics (Prometheus), keys, openapi, playground
    and docs_page (the pages in static/ and docs_static/);
  - engine/ (the engine process): process (its side of the pipes), engine
    (the decode loop), kv (the batched KV cache), sampling (per-row
    temperature and token draws);
  - messages.py: every message between the two, and the data both share.
Beside them: settings (environment and flags), logs, errors (the error bodies), cli and __main__
(the console command). Uses `model/` only; knows nothing of training.
"""

__version__ = "0.1.0"
