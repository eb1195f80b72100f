"""Compiled graphs saved across starts (service/engine/graphs.py): keyed by configuration and code, loaded
instead of traced, and compiled again when a saved one cannot be loaded. The engine's own step and prefill
through saved graphs: tests/service/test_engine.py."""

from __future__ import annotations

import contextlib
import logging

import pytest
import torch

import model as model_package
import service.engine as engine_package
from service.engine.graphs import GraphCache


def scaled_sine(x: torch.Tensor, scale: float) -> torch.Tensor:
    return (x.sin() * scale).sum(-1)


def _no_tracing(*args, **kwargs):
    raise AssertionError("traced instead of loading the saved graph")


def test_the_key_changes_with_the_configuration_and_with_the_code(tmp_path):
    base = GraphCache(tmp_path, {"slots": 8}, packages=[model_package])
    assert GraphCache(tmp_path, {"slots": 8}, packages=[model_package]).folder == base.folder
    assert GraphCache(tmp_path, {"slots": 16}, packages=[model_package]).folder != base.folder
    assert GraphCache(tmp_path, {"slots": 8}, packages=[model_package, engine_package]).folder != base.folder


def test_the_key_changes_with_the_thread_count_the_kernels_are_built_for(tmp_path):
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = GraphCache(tmp_path, {"slots": 8}, packages=[model_package]).folder
        torch.set_num_threads(2)
        two = GraphCache(tmp_path, {"slots": 8}, packages=[model_package]).folder
    finally:
        torch.set_num_threads(threads)
    assert one != two


def test_a_saved_graph_is_loaded_without_tracing_and_serves_other_sizes(tmp_path, monkeypatch):
    x = torch.randn(4, 8)
    first = GraphCache(tmp_path, {}, packages=[model_package]).graph("sine", scaled_sine, (x, 2.0),
                                                                     contextlib.nullcontext)
    torch.testing.assert_close(first(x, 2.0), scaled_sine(x, 2.0))
    # Saved under its name, renamed into place whole: nothing half-written is left beside it.
    assert [p.name for p in GraphCache(tmp_path, {}, packages=[model_package]).folder.iterdir()] == ["sine.graph"]
    monkeypatch.setattr(torch, "compile", _no_tracing)
    loaded = GraphCache(tmp_path, {}, packages=[model_package]).graph("sine", scaled_sine, (x, 2.0),
                                                                      contextlib.nullcontext)
    other = torch.randn(7, 8)
    torch.testing.assert_close(loaded(other, 2.0), scaled_sine(other, 2.0))


def test_a_saved_graph_that_cannot_be_loaded_is_compiled_again_and_saved_over(tmp_path, caplog):
    cache = GraphCache(tmp_path, {}, packages=[model_package])
    cache.folder.mkdir(parents=True)
    cache.path("sine").write_bytes(b"not a graph")
    x = torch.randn(4, 8)
    with caplog.at_level(logging.WARNING, logger="service.engine.graphs"):
        graph = cache.graph("sine", scaled_sine, (x, 2.0), contextlib.nullcontext)
    assert "saved sine could not be loaded" in caplog.text
    torch.testing.assert_close(graph(x, 2.0), scaled_sine(x, 2.0))
    assert cache.path("sine").read_bytes() != b"not a graph"


@pytest.mark.parametrize("name", ["../escape", "a/b"])
def test_a_graph_name_that_is_not_a_plain_file_name_is_refused(tmp_path, name):
    with pytest.raises(ValueError, match="graph name"):
        GraphCache(tmp_path, {}, packages=[model_package]).path(name)


def test_a_graph_compiled_aside_is_awaited_once_and_loaded_instead_of_traced(tmp_path, monkeypatch):
    """While another process compiles a kind of graph into the folder, the cache waits for it before compiling
    one of that kind, and loads what it saved; graphs of other kinds never wait."""
    x = torch.randn(4, 8)
    cache = GraphCache(tmp_path, {}, packages=[model_package])
    waits = []
    compile_here = torch.compile

    def the_other_process_saves_it() -> None:  # another GraphCache on the same folder stands for the helper
        waits.append(True)
        with monkeypatch.context() as other_process:
            other_process.setattr(torch, "compile", compile_here)
            GraphCache(tmp_path, {}, packages=[model_package]).graph("sine-a", scaled_sine, (x, 2.0),
                                                                      contextlib.nullcontext)

    cache.compiled_aside(["sine"], the_other_process_saves_it)
    assert not cache.has("sine")
    monkeypatch.setattr(torch, "compile", _no_tracing)
    graph = cache.graph("sine-a", scaled_sine, (x, 3.0), contextlib.nullcontext)
    assert waits == [True] and cache.has("sine")
    torch.testing.assert_close(graph(x, 3.0), scaled_sine(x, 3.0))
    with pytest.raises(AssertionError, match="traced"):  # a kind nobody compiles aside: traced here, no wait
        cache.graph("cosine-a", scaled_sine, (x, 2.0), contextlib.nullcontext)
    assert waits == [True]


def test_a_graph_the_process_aside_did_not_save_is_compiled_here(tmp_path):
    x = torch.randn(4, 8)
    cache = GraphCache(tmp_path, {}, packages=[model_package])
    waits = []
    cache.compiled_aside(["sine"], lambda: waits.append(True))  # it failed, or was stopped: nothing saved
    graph = cache.graph("sine-a", scaled_sine, (x, 2.0), contextlib.nullcontext)
    assert waits == [True] and cache.has("sine")
    torch.testing.assert_close(graph(x, 2.0), scaled_sine(x, 2.0))
