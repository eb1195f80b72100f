"""Per-row sampling in a mixed batch (service/engine/sampling.py): grouping by controller
and per-row filters give each row exactly what it would get alone."""

from __future__ import annotations

import torch

from model import CounterNoise, StepOutput
from service.engine.sampling import (
    RowSampler,
    build_controller,
    sample_in_step,
    sample_rows,
    sampled_result,
    step_inputs,
)
from service.messages import ControllerSpec


def _row(head, spec: ControllerSpec, **filters) -> RowSampler:
    return RowSampler(spec, build_controller(spec, head), **filters)


@torch.no_grad()
def test_each_row_of_a_mixed_batch_samples_what_it_would_alone(checkpoint):
    head = checkpoint.head
    torch.manual_seed(0)
    batch = 7
    step = StepOutput(logits=torch.randn(batch, 100) * 3, hidden=torch.randn(batch, head.config.hidden_size))
    tau_prev = torch.full((batch, 1), 1.0)
    specs = [
        (ControllerSpec("learned"), {}),
        (ControllerSpec("fixed", temperature=0.5), {"top_k": 1}),
        (ControllerSpec("entropy"), {"top_p": 0.5}),
        (ControllerSpec("learned", deterministic=True), {"greedy": True}),
        (ControllerSpec("learned"), {"top_k": 3}),
        (ControllerSpec("fixed", temperature=2.0), {}),
        (ControllerSpec("learned", tau_range=(0.4, 0.6)), {}),
    ]

    noise = CounterNoise.for_rows(list(range(batch)), [3 * i for i in range(batch)])
    together = sample_rows([_row(head, s, **f) for s, f in specs], step, tau_prev, noise)
    for i, (spec, filters) in enumerate(specs):
        one = StepOutput(logits=step.logits[i : i + 1], hidden=step.hidden[i : i + 1])
        alone = sample_rows([_row(head, spec, **filters)], one, tau_prev[i : i + 1], CounterNoise.for_rows([i], 3 * i))
        assert together.tokens[i] == alone.tokens[0], spec
        torch.testing.assert_close(together.action.tau[i], alone.action.tau[0])
        torch.testing.assert_close(together.action.gate[i], alone.action.gate[0])
        torch.testing.assert_close(together.token_logprobs[i], alone.token_logprobs[0])

    argmax = step.logits.argmax(dim=-1)
    assert together.tokens[1] == argmax[1]  # top_k = 1
    assert together.tokens[3] == argmax[3]  # greedy
    assert together.tokens[4] in step.logits[4].topk(3).indices
    assert torch.all(together.action.tau[1] == 0.5) and torch.all(together.action.tau[5] == 2.0)
    assert 0.4 - 1e-6 <= float(together.action.tau[6]) <= 0.6 + 1e-6


def test_entropy_controller_stays_inside_a_narrowed_range(checkpoint):
    controller = build_controller(ControllerSpec("entropy", tau_range=(0.3, 0.6)), checkpoint.head)
    assert (controller.tau_min, controller.tau_max) == (0.3, 0.6)
    assert 0.3 <= controller.tau_0 <= 0.6


@torch.no_grad()
def test_fast_paths_give_the_grouped_paths_results(checkpoint):
    head = checkpoint.head
    torch.manual_seed(1)
    batch = 5
    step = StepOutput(logits=torch.randn(batch, 100) * 3, hidden=torch.randn(batch, head.config.hidden_size))
    tau_prev = torch.rand(batch, 1) + 0.5
    noise = CounterNoise.for_rows([11, 12, 13, 14, 15], [0, 4, 9, 2, 7])
    batches = [
        [ControllerSpec("learned")] * batch,
        [ControllerSpec("learned"), ControllerSpec("learned", tau_range=(0.4, 0.6))] * 2 + [ControllerSpec("learned")],
        [ControllerSpec("learned", deterministic=True)] * batch,
        [ControllerSpec("fixed", temperature=t) for t in (0.3, 0.7, 1.0, 1.3, 2.0)],
    ]
    for specs in batches:
        rows = [_row(head, spec) for spec in specs]
        expected = sample_rows(rows, step, tau_prev, noise)
        args = step_inputs(rows, head, tau_prev, noise, None)[0]
        got = sampled_result(sample_in_step(step.logits, step.hidden, *args))
        assert torch.equal(got.tokens, expected.tokens), specs
        for name in ("tau", "gate", "z", "log_prob"):
            torch.testing.assert_close(getattr(got.action, name), getattr(expected.action, name), equal_nan=True)
        torch.testing.assert_close(got.token_logprobs, expected.token_logprobs)


@torch.no_grad()
def test_the_in_step_sampler_gives_every_row_of_a_mixed_batch_what_its_own_kind_gives_it(checkpoint):
    """Eager here; compiled inside the engine's step in tests/service/test_engine.py (the mixed batch)."""
    head = checkpoint.head
    torch.manual_seed(2)
    specs = [
        ControllerSpec("learned"),
        ControllerSpec("fixed", temperature=0.7),
        ControllerSpec("learned", deterministic=True),
        ControllerSpec("learned", tau_range=(0.4, 0.6)),
        ControllerSpec("fixed", temperature=1.6),
        ControllerSpec("learned"),
    ]
    batch = len(specs)
    step = StepOutput(logits=torch.randn(batch, 100) * 3, hidden=torch.randn(batch, head.config.hidden_size))
    tau_prev = torch.rand(batch, 1) + 0.5
    noise = CounterNoise.for_rows([21, 22, 23, 24, 25, 26], [0, 5, 1, 8, 3, 2])
    rows = [_row(head, spec) for spec in specs]
    args, fits = step_inputs(rows, head, tau_prev, noise, None)
    assert fits
    got = sampled_result(sample_in_step(step.logits, step.hidden, *args))
    for i, row in enumerate(rows):  # each row alone through the grouped path of its own controller
        alone = sample_rows([row], StepOutput(step.logits[i : i + 1], step.hidden[i : i + 1]), tau_prev[i : i + 1],
                            noise.rows(torch.tensor([i])))
        assert got.tokens[i] == alone.tokens[0], specs[i]
        for name in ("tau", "gate", "z", "log_prob"):
            torch.testing.assert_close(getattr(got.action, name)[i], getattr(alone.action, name)[0], equal_nan=True)
        torch.testing.assert_close(got.token_logprobs[i], alone.token_logprobs[0])


def test_rows_with_filters_greedy_or_entropy_are_left_to_the_grouped_path(checkpoint):
    head = checkpoint.head
    tau_prev, noise = torch.ones(2, 1), CounterNoise.for_rows([1, 2], 0)
    plain = _row(head, ControllerSpec("learned"))
    for other in (_row(head, ControllerSpec("fixed", temperature=1.0), top_k=5),
                  _row(head, ControllerSpec("learned"), top_p=0.9),
                  _row(head, ControllerSpec("learned"), greedy=True),
                  _row(head, ControllerSpec("entropy"))):
        args, fits = step_inputs([plain, other], head, tau_prev, noise, None)
        assert not fits
        assert not args[5].any()  # placeholders: every row fixed (the graph stays the same, its draw unused)
