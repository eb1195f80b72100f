"""Countdown problems as token ids: prompts for rollouts, solved examples for SFT.

What it does: turns problems and completions into character-token ids with the
layout `<bos> prompt completion <eos>`, caches each training problem's
solutions so SFT can draw a fresh valid solution per example, and pads batches.

What it does not do: decide rewards (see `tasks/countdown.py`) or sample.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from training.tasks.countdown import CountdownConfig, Problem, format_completion, format_prompt, solutions

IGNORE_INDEX = -100


def encode_prompt(tokenizer: PreTrainedTokenizerBase, problem: Problem) -> list[int]:
    return [tokenizer.bos_token_id] + tokenizer(format_prompt(problem), add_special_tokens=False)["input_ids"]


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def decode_completion(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int]) -> str:
    """Text of generated ids, without the EOS and padding."""
    ids = [i for i in token_ids if i not in (tokenizer.eos_token_id, tokenizer.pad_token_id)]
    return tokenizer.decode(ids)


def pad_right(rows: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


class SolvedExamples:
    """Training problems with all their solutions; each draw picks one solution at random."""

    def __init__(self, problems: Sequence[Problem], task: CountdownConfig, tokenizer: PreTrainedTokenizerBase) -> None:
        unique = list(dict.fromkeys(problems))
        self.tokenizer = tokenizer
        self.problems = unique
        self.solutions = [solutions(p, task) for p in unique]

    def batch(self, rng: random.Random, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, labels), both (size, L); labels are IGNORE_INDEX on the prompt and padding."""
        inputs, labels = [], []
        for _ in range(size):
            i = rng.randrange(len(self.problems))
            prompt = encode_prompt(self.tokenizer, self.problems[i])
            completion = encode_text(self.tokenizer, format_completion(rng.choice(self.solutions[i])))
            completion.append(self.tokenizer.eos_token_id)
            inputs.append(prompt + completion)
            labels.append([IGNORE_INDEX] * len(prompt) + completion)
        return pad_right(inputs, self.tokenizer.pad_token_id), pad_right(labels, IGNORE_INDEX)
