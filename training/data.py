"""Task problems as token ids: prompts for rollouts, solved examples for SFT.

What it does: renders a problem's prompt with the checkpoint's prompt format
(model/prompt_format.py: `<bos> prompt` for plain text, the chat template
otherwise) and appends completions as `completion <eos>`; caches each training
problem's worked completions so SFT can draw one per example; pads batches.

What it does not do: decide rewards (the task does) or sample.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from model import PLAIN, PromptFormat, render_prompt, user_message
from training.tasks import Task

IGNORE_INDEX = -100


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The padding id: the tokenizer's pad token, else its EOS (many base models have no pad token)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token; set eos_token in tokenizer_config.json")
    return int(pad)


def eos_id(tokenizer: PreTrainedTokenizerBase) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: completions could not end; "
                         "set eos_token in its tokenizer_config.json")
    return int(tokenizer.eos_token_id)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, task: Task, problem: Any,
                  prompt_format: PromptFormat = PLAIN) -> list[int]:
    """The problem's prompt as the model sees it, rendered as one user message."""
    return render_prompt(prompt_format, tokenizer, user_message(task.prompt(problem)))


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
    """Training problems with worked completions; each draw picks one completion at random.

    Problems without any (a JSONL line without `solution`) are left out; none at all is an error."""

    def __init__(self, problems: Sequence[Any], task: Task, tokenizer: PreTrainedTokenizerBase,
                 prompt_format: PromptFormat = PLAIN) -> None:
        unique = list(dict.fromkeys(problems))
        targets = [list(task.targets(p)) for p in unique]
        kept = [(p, t) for p, t in zip(unique, targets, strict=True) if t]
        if not kept:
            raise ValueError(f"no training problem of task {task.name!r} has a worked solution for SFT "
                             "(JSONL: add a 'solution' to some lines)")
        self.tokenizer = tokenizer
        self.task = task
        self.prompt_format = prompt_format
        self.problems = [p for p, _ in kept]
        self.solutions = [t for _, t in kept]

    def batch(self, rng: random.Random, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, labels), both (size, L); labels are IGNORE_INDEX on the prompt and padding."""
        inputs, labels = [], []
        for _ in range(size):
            i = rng.randrange(len(self.problems))
            prompt = encode_prompt(self.tokenizer, self.task, self.problems[i], self.prompt_format)
            completion = encode_text(self.tokenizer, rng.choice(self.solutions[i]))
            completion.append(eos_id(self.tokenizer))
            inputs.append(prompt + completion)
            labels.append([IGNORE_INDEX] * len(prompt) + completion)
        return pad_right(inputs, pad_id(self.tokenizer)), pad_right(labels, IGNORE_INDEX)
