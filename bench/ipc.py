"""The engine process's channel, measured: an OS pipe against ZMQ, msgspec against pickle.

What it does: sends `--messages` engine-step messages (`service.messages.Step`,
one sampled-token event per row, `--rows` rows) from a child process to this
one, and for each transport and encoding reports the one-way cost per message
(encode + send + receive + decode, wall time / messages, the child sending as
fast as the reader takes them) and the median round trip of a small message
(a ping answered by the child), which is what a step's events wait for.

    python bench/ipc.py                 # 16 rows, 20000 messages
    python bench/ipc.py --rows 64

Transports: `multiprocessing.Pipe(duplex=False)` (what the service uses) and
pyzmq PUSH/PULL over an ipc:// socket (vLLM's choice), if pyzmq is installed.
Encodings: msgspec msgpack structs (what the service uses) and pickle.

What it does not do: run the engine or the server (bench/serve.py does).
"""

from __future__ import annotations

import argparse
import multiprocessing
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.messages import SampledOut, Step  # noqa: E402

PING = b"p"


def step_message(rows: int, index: int) -> Step:
    events = [SampledOut(row, index, 1000 + row, 0.8125, row % 7 == 0, -1.25, time.monotonic(), 0)
              for row in range(rows)]
    return Step(events, [rows], rows, 0)


def _encoders(encoding: str):
    if encoding == "msgspec":
        decoder = msgspec.msgpack.Decoder(Step)
        return msgspec.msgpack.Encoder().encode, decoder.decode
    return (lambda message: pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)), pickle.loads


# ---------------------------------------------------------------- children (the "engine" side)


def pipe_child(connection, rows: int, messages: int, encoding: str, pings: int) -> None:
    encode, _ = _encoders(encoding)
    for _ in range(pings):
        connection.recv_bytes()
        connection.send_bytes(PING)
    for index in range(messages):
        connection.send_bytes(encode(step_message(rows, index)))


def zmq_child(address: str, back: str, rows: int, messages: int, encoding: str, pings: int) -> None:
    import zmq

    context = zmq.Context()
    push, pull = context.socket(zmq.PUSH), context.socket(zmq.PULL)
    push.connect(address)
    pull.connect(back)
    encode, _ = _encoders(encoding)
    for _ in range(pings):
        pull.recv()
        push.send(PING)
    for index in range(messages):
        push.send(encode(step_message(rows, index)), copy=False)
    push.close(linger=-1)
    pull.close()
    context.term()


# ---------------------------------------------------------------- the reader (the API side)


def run_pipe(rows: int, messages: int, encoding: str, pings: int) -> tuple[float, float]:
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe(duplex=True)
    child = context.Process(target=pipe_child, args=(there, rows, messages, encoding, pings))
    child.start()
    there.close()
    _, decode = _encoders(encoding)
    trips = []
    for _ in range(pings):
        started = time.perf_counter()
        here.send_bytes(PING)
        here.recv_bytes()
        trips.append(time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(messages):
        decode(here.recv_bytes())
    elapsed = time.perf_counter() - started
    child.join()
    return elapsed / messages, statistics.median(trips)


def run_zmq(rows: int, messages: int, encoding: str, pings: int) -> tuple[float, float]:
    import zmq

    folder = tempfile.mkdtemp()
    address, back = f"ipc://{folder}/out", f"ipc://{folder}/in"
    context = zmq.Context()
    pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    pull.bind(address)
    push.bind(back)
    spawn = multiprocessing.get_context("spawn")
    child = spawn.Process(target=zmq_child, args=(address, back, rows, messages, encoding, pings))
    child.start()
    _, decode = _encoders(encoding)
    trips = []
    for _ in range(pings):
        started = time.perf_counter()
        push.send(PING)
        pull.recv()
        trips.append(time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(messages):
        decode(pull.recv(copy=False).buffer)
    elapsed = time.perf_counter() - started
    child.join()
    pull.close()
    push.close(linger=0)
    context.term()
    return elapsed / messages, statistics.median(trips)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--pings", type=int, default=2_000)
    args = parser.parse_args()
    size = len(msgspec.msgpack.encode(step_message(args.rows, 0)))
    pickled = len(pickle.dumps(step_message(args.rows, 0), protocol=pickle.HIGHEST_PROTOCOL))
    print(f"step message of {args.rows} rows: {size} bytes as msgspec msgpack, {pickled} as pickle")
    transports = {"pipe": run_pipe}
    try:
        import zmq  # noqa: F401

        transports["zmq ipc"] = run_zmq
    except ImportError:
        print("pyzmq not installed: ZMQ not measured")
    print("| transport | encoding | per step message (us) | round trip, median (us) |")
    print("|---|---|---|---|")
    for name, run in transports.items():
        for encoding in ("msgspec", "pickle"):
            per_message, trip = run(args.rows, args.messages, encoding, args.pings)
            print(f"| {name} | {encoding} | {per_message * 1e6:.1f} | {trip * 1e6:.1f} |")


if __name__ == "__main__":
    main()
