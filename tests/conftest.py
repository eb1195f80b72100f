"""Shared fixtures: one tiny random model, tokenizer and head for the whole session."""

from __future__ import annotations

import pytest
import torch

from model import HeadConfig, TemperatureHead, TinyLMConfig, build_char_tokenizer, build_tiny_lm

# Small enough that a decode of a few dozen tokens takes milliseconds.
TEST_LM = TinyLMConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the node ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under `make test` (pytest-xdist, `--dist loadgroup`) a worker takes a whole group: each test file is
    the group of its tests (module-scoped servers stay in one worker), unless a test names a group of its own
    (`xdist_group`, e.g. tests.service.support.COMPILED_ENGINE): tests that compile the same graph then share
    one worker, where the first compiles it and the others reuse it, instead of each paying a cold compile."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


def pytest_configure(config: pytest.Config) -> None:
    """Refuses `--dist loadgroup` where pytest-xdist cannot pass the groups on: it names a test's group by
    rewriting the item's `_nodeid`, which pytest 9.2 no longer reads. The groups are then lost silently and
    a file's tests, which share a module-scoped server in file order, are spread over the workers."""
    if getattr(config.option, "dist", None) != "loadgroup":  # xdist's workers run with dist "no"
        return
    if not any("_nodeid" in getattr(cls, "__slots__", ()) for cls in pytest.Item.__mro__):
        raise pytest.UsageError(
            f"pytest {pytest.__version__} drops pytest-xdist's --dist loadgroup groups: "
            "install the dev extra again (it caps pytest below 9.2) or run with --dist loadfile")


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    # Tiny models gain nothing from a second thread, and one thread keeps the
    # suite steady when the machine is shared.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_lm(tokenizer):
    return build_tiny_lm(tokenizer, TEST_LM, seed=0)


@pytest.fixture()
def head():
    torch.manual_seed(0)
    head = TemperatureHead(HeadConfig(hidden_size=TEST_LM.hidden_size))
    # A head that actually depends on the hidden state (the prior's last layer
    # is zero, which would hide bugs in how hidden states reach it).
    with torch.no_grad():
        head.fc2.weight.normal_(0, 0.5)
    return head.eval()
