"""The engine process: the model, the KV cache, sampling and the continuous-batching loop."""
