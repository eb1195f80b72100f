"""Sampling groups of completions and recomputing their log-probabilities.

What it does: for a list of problems, samples `samples` completions each
through the model core's reference decode (`model.generate`) with any
temperature controller (prompts rendered by the checkpoint's prompt format),
recording per token the tau, gate, Beta draw and both log-probs, and scores
each completion with the task's reward (`Task.score`, or `score`). Rows are
batched by prompt length (no padding, so no position bookkeeping) and each
row draws from its own generator seeded by (seed, step, problem, sample), so a
rollout is reproducible and independent of how rows were batched.
`recompute_log_probs` runs the trainer's forward over prompt + completion and
returns the same log-probs from the same per-token tau, gate and z.

What it does not do: top-k/top-p (training rollouts never filter, or the
trainer's log-probs would not match the sampler's), or compute losses.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from model import (
    PLAIN,
    EntropyTemperature,
    FixedTemperature,
    Generation,
    LearnedTemperature,
    PromptFormat,
    SamplingParams,
    TemperatureController,
    TemperatureHead,
    forward,
    generate,
    token_log_probs,
)
from training.common import seeded_generator
from training.data import decode_completion, encode_prompt, pad_id
from training.tasks import CountdownTask, Task, Verdict
from training.tasks.countdown import CountdownConfig

# Scores one completion of one problem; the default is the task's own `score`.
ScoreFn = Callable[[Any, str], Verdict]


def as_task(task: Task | CountdownConfig) -> Task:
    """A task; a bare CountdownConfig (the older calling convention) is the Countdown task."""
    return CountdownTask(task, 0, 0, 0) if isinstance(task, CountdownConfig) else task


def controller_from_spec(spec: str, head: TemperatureHead) -> tuple[str, TemperatureController]:
    """"fixed:<tau>", "entropy" (EDT clamped to the head's tau range), "learned" or "learned-deterministic"
    (the service's deterministic_temperature: gate where P > 0.5, tau at the Beta mean) -> (name, controller)."""
    kind, _, value = spec.strip().partition(":")
    if kind == "fixed" and value:
        return f"fixed {value}", FixedTemperature(float(value))
    if not value:
        if kind == "entropy":
            return "entropy (EDT)", EntropyTemperature(tau_min=head.config.tau_min, tau_max=head.config.tau_max)
        if kind == "learned":
            return "learned", LearnedTemperature(head)
        if kind == "learned-deterministic":
            return "learned (deterministic)", LearnedTemperature(head, deterministic=True)
    raise ValueError(f"unknown temperature controller {spec!r}: use fixed:<tau>, entropy, learned or "
                     "learned-deterministic")


@dataclass
class RolloutBatch:
    """Rows sharing one prompt length: prompt_ids (R, T), the generation (R, N), and per row
    the problem index, sample index, completion text, reward and the verdict's reason."""

    prompt_ids: torch.Tensor
    generation: Generation
    problem_index: list[int]
    sample_index: list[int]
    texts: list[str]
    rewards: torch.Tensor
    reasons: list[str]


@torch.no_grad()
def sample_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    controller: TemperatureController,
    problems: Sequence[Any],
    *,
    samples: int,
    task: Task | CountdownConfig,
    max_new_tokens: int,
    seed: int,
    step: int = 0,
    batch_rows: int = 512,
    greedy: bool = False,
    score: ScoreFn | None = None,
    prompt_format: PromptFormat = PLAIN,
) -> list[RolloutBatch]:
    task = as_task(task)
    score = score or task.score
    device = next(model.parameters()).device
    by_length: dict[int, list[tuple[int, int]]] = defaultdict(list)
    prompts = [encode_prompt(tokenizer, task, p, prompt_format) for p in problems]
    for i, prompt in enumerate(prompts):
        for s in range(samples):
            by_length[len(prompt)].append((i, s))
    params = SamplingParams(max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id, greedy=greedy)
    batches = []
    for _, rows in sorted(by_length.items()):
        for start in range(0, len(rows), batch_rows):
            chunk = rows[start : start + batch_rows]
            prompt_ids = torch.tensor([prompts[i] for i, _ in chunk], device=device)
            generators = [seeded_generator(device, seed, step, i, s) for i, s in chunk]
            generation = generate(model, controller, prompt_ids, params, generators,
                                  pad_token_id=pad_id(tokenizer))
            texts = [
                decode_completion(tokenizer, generation.tokens[r, : generation.lengths[r]].tolist())
                for r in range(len(chunk))
            ]
            verdicts = [score(problems[i], text) for (i, _), text in zip(chunk, texts, strict=True)]
            batches.append(
                RolloutBatch(
                    prompt_ids=prompt_ids,
                    generation=generation,
                    problem_index=[i for i, _ in chunk],
                    sample_index=[s for _, s in chunk],
                    texts=texts,
                    rewards=torch.tensor([v.reward for v in verdicts], device=device),
                    reasons=[v.reason for v in verdicts],
                )
            )
    return batches


@dataclass
class Recomputed:
    """Per completion token, (R, N): token log-prob, temperature-action log-prob, entropy at tau (no
    gradient), and the temperature policy's entropy (with gradient, for an exploration bonus)."""

    token_logprobs: torch.Tensor
    temperature_logprobs: torch.Tensor
    entropy: torch.Tensor
    temperature_entropy: torch.Tensor


def recompute_log_probs(model: PreTrainedModel, head: TemperatureHead, batch: RolloutBatch) -> Recomputed:
    """The trainer's view of a rollout, from one forward over prompt + completion.

    Position T - 1 + t of the sequence predicts completion token t, from the
    hidden state the sampler's head read at that step; the token log-prob uses
    the tau the sampler applied there.
    """
    gen = batch.generation
    prompt_len = batch.prompt_ids.shape[1]
    sequence = torch.cat([batch.prompt_ids, gen.tokens], dim=1)[:, :-1]  # (R, T + N - 1)
    out = forward(model, sequence)
    logits = out.logits[:, prompt_len - 1 :]  # (R, N, V)
    hidden = out.hidden[:, prompt_len - 1 :]  # (R, N, d)
    # Padding positions carry tau = 0 (zeroed by generate); any positive value
    # keeps their (masked) log-probs finite.
    taus = torch.where(gen.mask, gen.taus, torch.ones_like(gen.taus))
    token_logprobs = token_log_probs(logits, gen.tokens, taus)
    temperature_logprobs = head.log_prob(hidden, gen.gates.unsqueeze(-1), gen.z.unsqueeze(-1)).squeeze(-1)
    temperature_entropy = head.action_entropy(hidden).squeeze(-1)
    with torch.no_grad():
        scaled = torch.log_softmax(logits.float() / taus.unsqueeze(-1), dim=-1)
        entropy = -(scaled.exp() * scaled).sum(-1)
    return Recomputed(token_logprobs, temperature_logprobs, entropy, temperature_entropy)
