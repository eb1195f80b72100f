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

For a head that reads a greedy draft (`model/draft.py`), `draft_completions`
decodes each problem's draft as its sample 0 and returns the summaries; the
other samples are drawn with `drafts=` so the head reads its row's summary.
`LadderTemperature` is the head phase's exploration: each row keeps one rung
of a temperature ladder for its whole completion, recorded as an action of
the head's own form (an update to the rung at every token), so the head can
be trained on temperatures it would not pick itself.

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
    TemperatureAction,
    TemperatureController,
    TemperatureHead,
    decode_draft,
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
    the problem index, sample index, completion text, reward and the verdict's reason; `draft`
    (R, F) is each row's draft summary when the head read one, `initial_tau` the tau before the
    first token (R, 1), and `behaviour` who chose the temperatures ("policy": the controller's own
    draws; "ladder": `LadderTemperature`; "draft": a greedy draft, no temperature policy)."""

    prompt_ids: torch.Tensor
    generation: Generation
    problem_index: list[int]
    sample_index: list[int]
    texts: list[str]
    rewards: torch.Tensor
    reasons: list[str]
    draft: torch.Tensor | None = None
    initial_tau: torch.Tensor | None = None
    behaviour: str = "policy"


class LadderTemperature:
    """Exploration for the head phase: sample s of a group keeps tau = ladder[s - first_sample] (cycled)
    for its whole completion.

    Recorded in the head's action form so the head's log-prob of it is defined:
    at every token gate = 1 and z = the rung mapped into [0, 1], so an update
    on these rows teaches the head's tau distribution at every token, where the
    head itself updates. (Recorded as "update once, then keep", the rung would
    only reach the first token's action: in a first trial the keep actions of
    hot and cold rows cancelled, and the head's own per-token draws cooled on
    the problems only hot rungs solved.) It has no density of its own
    (log_prob 0): the trainer weighs these rows by their advantage alone (see
    training/grpo.py).
    `for_rows` gives the controller of one batch of (problem, sample) rows.
    """

    name = "ladder"

    def __init__(self, ladder: Sequence[float], head: TemperatureHead, first_sample: int,
                 rows: Sequence[tuple[int, int]] = ()) -> None:
        cfg = head.config
        for tau in ladder:
            if not cfg.tau_min <= tau <= cfg.tau_max:
                raise ValueError(f"ladder temperature {tau} outside the head's range [{cfg.tau_min}, {cfg.tau_max}]")
        if not ladder:
            raise ValueError("empty temperature ladder")
        self.ladder, self.head, self.first_sample, self.rows = list(ladder), head, first_sample, list(rows)

    def for_rows(self, rows: Sequence[tuple[int, int]]) -> LadderTemperature:
        return LadderTemperature(self.ladder, self.head, self.first_sample, rows)

    def rung(self, sample: int) -> float:
        return self.ladder[(sample - self.first_sample) % len(self.ladder)]

    def initial_tau(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.full((batch, 1), self.head.config.tau_init, device=device)

    def choose(self, hidden, logits, tau_prev, generators):
        cfg = self.head.config
        rungs = torch.tensor([[self.rung(s)] for _, s in self.rows], dtype=torch.float32, device=hidden.device)
        z = cfg.tau_to_z(rungs).clamp(cfg.z_margin, 1 - cfg.z_margin)
        gate = torch.ones_like(rungs)
        return TemperatureAction(tau=cfg.z_to_tau(z), gate=gate, z=z, log_prob=torch.zeros_like(z))


def _bind(controller: TemperatureController, chunk: list[tuple[int, int]],
          drafts: torch.Tensor | None) -> tuple[TemperatureController, torch.Tensor | None]:
    """The controller for one batch of (problem, sample) rows, and the rows' draft summaries (R, F)."""
    rows_draft = drafts[[i for i, _ in chunk]] if drafts is not None else None
    if isinstance(controller, LadderTemperature):
        return controller.for_rows(chunk), rows_draft
    if isinstance(controller, LearnedTemperature) and controller.head.reads_draft:
        if rows_draft is None:
            raise ValueError("this temperature head reads a greedy draft: sample the drafts first "
                             "(draft_completions) and pass drafts=")
        return controller.with_draft(rows_draft), rows_draft
    return controller, rows_draft


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
    first_sample: int = 0,
    drafts: torch.Tensor | None = None,
) -> list[RolloutBatch]:
    """`samples` completions of each problem, with sample indices first_sample, first_sample + 1, ...
    (the index seeds the row's generator, so index s draws the same noise under every controller).
    `drafts` (P, F): each problem's draft summary, for a head that reads one."""
    task = as_task(task)
    score = score or task.score
    device = next(model.parameters()).device
    by_length: dict[int, list[tuple[int, int]]] = defaultdict(list)
    prompts = [encode_prompt(tokenizer, task, p, prompt_format) for p in problems]
    for i, prompt in enumerate(prompts):
        for s in range(first_sample, first_sample + samples):
            by_length[len(prompt)].append((i, s))
    params = SamplingParams(max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id, greedy=greedy)
    behaviour = "ladder" if isinstance(controller, LadderTemperature) else "policy"
    batches = []
    for _, rows in sorted(by_length.items()):
        for start in range(0, len(rows), batch_rows):
            chunk = rows[start : start + batch_rows]
            prompt_ids = torch.tensor([prompts[i] for i, _ in chunk], device=device)
            generators = [seeded_generator(device, seed, step, i, s) for i, s in chunk]
            bound, rows_draft = _bind(controller, chunk, drafts)
            generation = generate(model, bound, prompt_ids, params, generators,
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
                    draft=rows_draft,
                    initial_tau=bound.initial_tau(len(chunk), device),
                    behaviour=behaviour,
                )
            )
    return batches


@torch.no_grad()
def draft_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    problems: Sequence[Any],
    *,
    task: Task | CountdownConfig,
    max_new_tokens: int,
    batch_rows: int = 512,
    score: ScoreFn | None = None,
    prompt_format: PromptFormat = PLAIN,
) -> tuple[list[RolloutBatch], torch.Tensor]:
    """Each problem's greedy draft as its sample 0 (behaviour "draft"), and the summaries (P, F) in
    problem order (`model.decode_draft`)."""
    task = as_task(task)
    score = score or task.score
    device = next(model.parameters()).device
    prompts = [encode_prompt(tokenizer, task, p, prompt_format) for p in problems]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        by_length[len(prompt)].append(i)
    summaries: list[torch.Tensor | None] = [None] * len(problems)
    batches = []
    for _, rows in sorted(by_length.items()):
        for start in range(0, len(rows), batch_rows):
            chunk = rows[start : start + batch_rows]
            prompt_ids = torch.tensor([prompts[i] for i in chunk], device=device)
            draft = decode_draft(model, prompt_ids, max_new_tokens, tokenizer.eos_token_id, pad_id(tokenizer))
            generation = draft.generation
            texts = [decode_completion(tokenizer, generation.tokens[r, : generation.lengths[r]].tolist())
                     for r in range(len(chunk))]
            verdicts = [score(problems[i], text) for i, text in zip(chunk, texts, strict=True)]
            for r, i in enumerate(chunk):
                summaries[i] = draft.summary[r]
            batches.append(RolloutBatch(
                prompt_ids=prompt_ids, generation=generation, problem_index=list(chunk), sample_index=[0] * len(chunk),
                texts=texts, rewards=torch.tensor([v.reward for v in verdicts], device=device),
                reasons=[v.reason for v in verdicts], draft=draft.summary, behaviour="draft",
            ))
    return batches, torch.stack(summaries) if summaries else torch.zeros(0, 0)


@dataclass
class Recomputed:
    """Per completion token, (R, N): token log-prob, temperature-action log-prob, entropy at tau (no
    gradient), and the temperature policy's entropy (with gradient, for an exploration bonus)."""

    token_logprobs: torch.Tensor
    temperature_logprobs: torch.Tensor
    entropy: torch.Tensor
    temperature_entropy: torch.Tensor


@dataclass
class HeadStates:
    """What the head read at each completion token of a rollout, (R, N, ...): the LM's logits and hidden
    state, the tau applied there (1 on padding) and tau_{t-1}."""

    logits: torch.Tensor
    hidden: torch.Tensor
    taus: torch.Tensor
    tau_prev: torch.Tensor


def head_states(model: PreTrainedModel, head: TemperatureHead, batch: RolloutBatch) -> HeadStates:
    """One forward over prompt + completion: position T - 1 + t of the sequence predicts completion token t,
    from the hidden state the sampler's head read at that step."""
    gen = batch.generation
    prompt_len = batch.prompt_ids.shape[1]
    sequence = torch.cat([batch.prompt_ids, gen.tokens], dim=1)[:, :-1]  # (R, T + N - 1)
    out = forward(model, sequence)
    # Padding positions carry tau = 0 (zeroed by generate); any positive value
    # keeps their (masked) log-probs finite.
    taus = torch.where(gen.mask, gen.taus, torch.ones_like(gen.taus))
    # tau_{t-1}: the tau before the first token, then each step's applied tau.
    initial = batch.initial_tau if batch.initial_tau is not None else torch.full_like(taus[:, :1], head.config.tau_init)
    tau_prev = torch.cat([initial.to(taus.dtype), taus[:, :-1]], dim=1).unsqueeze(-1)  # (R, N, 1)
    return HeadStates(logits=out.logits[:, prompt_len - 1 :], hidden=out.hidden[:, prompt_len - 1 :], taus=taus,
                      tau_prev=tau_prev)


def recompute_log_probs(model: PreTrainedModel, head: TemperatureHead, batch: RolloutBatch) -> Recomputed:
    """The trainer's view of a rollout, from one forward over prompt + completion (`head_states`): the
    token log-prob uses the tau the sampler applied there.
    """
    gen = batch.generation
    states = head_states(model, head, batch)
    logits, hidden, taus, tau_prev = states.logits, states.hidden, states.taus, states.tau_prev
    token_logprobs = token_log_probs(logits, gen.tokens, taus)
    temperature_logprobs = head.log_prob(hidden, gen.gates.unsqueeze(-1), gen.z.unsqueeze(-1), tau_prev,
                                         batch.draft).squeeze(-1)
    temperature_entropy = head.action_entropy(hidden, tau_prev, batch.draft).squeeze(-1)
    with torch.no_grad():
        scaled = torch.log_softmax(logits.float() / taus.unsqueeze(-1), dim=-1)
        entropy = -(scaled.exp() * scaled).sum(-1)
    return Recomputed(token_logprobs, temperature_logprobs, entropy, temperature_entropy)
