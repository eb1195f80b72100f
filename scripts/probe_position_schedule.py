"""Is there headroom in *where* along a completion to sample hot? A probe of position schedules.

Decodes the held-out problems with a schedule that no head chooses: tau = `hot` for the first K completion
tokens and `cold` after, for each K given, through the same decode path and seeds as `eval` (sample s of
problem i draws the same noise under every controller), and prints avg@k and pass@k. Compare the points
with the fixed-tau rows of the same LM's eval report: a schedule above that curve is structure within a
completion that a per-token head could learn and a per-problem choice (the draft rule) could not.

Measured on the bundled model (the rung-value ablations' README, issue 20):

    python scripts/probe_position_schedule.py checkpoints/introllm-countdown-tiny 1:1.0:0.1 2:1.0:0.1 3:1.0:0.1

What it does not do: intervals (use the points as a first look), or schedules that depend on the text.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from model import load_checkpoint
from model.controllers import constant_action
from training.evaluate import summarise
from training.rollout import sample_completions
from training.task_record import TaskChoice, recorded_choice


@dataclasses.dataclass
class PositionSchedule:
    """tau = hot for the first `hot_tokens` steps of a decode, cold after. It counts its own calls: the decode
    loop asks `initial_tau` once per batch, then `choose` once per step for the whole batch."""

    hot_tokens: int
    hot: float
    cold: float
    name: str = "schedule"
    step: int = dataclasses.field(default=0, init=False)  # decode steps taken in the current batch

    def initial_tau(self, batch: int, device: torch.device) -> torch.Tensor:
        self.step = 0
        return torch.full((batch, 1), self.hot, device=device)

    def choose(self, hidden, logits, tau_prev, generators):
        tau = torch.full_like(tau_prev, self.hot if self.step < self.hot_tokens else self.cold, dtype=torch.float32)
        self.step += 1
        return constant_action(tau, torch.zeros_like(tau))


def parse_schedule(text: str) -> PositionSchedule:
    hot_tokens, hot, cold = text.split(":")
    return PositionSchedule(int(hot_tokens), float(hot), float(cold))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("schedules", nargs="+", type=parse_schedule, help="K:hot:cold, e.g. 3:1.0:0.1")
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint = load_checkpoint(args.checkpoint)
    task = (recorded_choice(checkpoint.manifest.training) or TaskChoice()).build(n_train=0)
    problems = task.split()[1][: args.problems]
    print(f"| schedule | avg@{args.samples} | pass@{args.samples} |\n|---|---|---|")
    for schedule in args.schedules:
        batches = sample_completions(checkpoint.model, checkpoint.tokenizer, schedule, problems,
                                     samples=args.samples, task=task, max_new_tokens=task.max_new_tokens, seed=0,
                                     prompt_format=checkpoint.manifest.prompt_format)
        result = summarise("schedule", batches, len(problems), args.samples)
        tokens = f"{schedule.hot_tokens} token{'s' if schedule.hot_tokens != 1 else ''}"
        print(f"| tau {schedule.hot} for the first {tokens}, then {schedule.cold} | "
              f"{result.avg_at_k:.3f} | {result.pass_at_k:.3f} |", flush=True)


if __name__ == "__main__":
    main()
