"""Where does a sampled draft-reading head lose against its deterministic choice? A diagnostic for issue 20.

Decodes each held-out problem's greedy draft and 7 head samples (samples 1..7, the eval's layout), under
variants of the head's action that differ only in which part is noise-free, and prints avg@8 and pass@8:

  sampled                    the paper's action: gate ~ Bernoulli, z ~ Beta (the eval's `learned`)
  sampled gate, mean z       the gate drawn, z at the Beta mean
  det gate, sampled z        update where P(update) > 0.5, z drawn
  always update, sampled z   update at every token, z drawn
  det, consuming the noise   the deterministic action, after drawing (and discarding) the sampled one, so
                             that the token draws use the random numbers the sampled head's do
  deterministic              the server's deterministic_temperature (draws no noise for the head)

Every variant but `deterministic` consumes the same random numbers per row as `sampled`.

    python scripts/action_noise.py runs/draft-rung-value --problems 500 --seed 0
    python scripts/action_noise.py runs/draft-rung-value --seed 1 --variants "sampled;deterministic"
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from model import LearnedTemperature, load_checkpoint
from model.temperature_head import TemperatureHead
from training.evaluate import summarise
from training.rollout import draft_completions, sample_completions
from training.task_record import TaskChoice, recorded_choice

VARIANTS = ("sampled", "sampled gate, mean z", "det gate, sampled z", "always update, sampled z",
            "det, consuming the noise", "deterministic")


def variant_sample(kind: str, draw=TemperatureHead.sample):
    """TemperatureHead.sample for a variant: the sampled action is always drawn first (the same noise)."""

    def sample(self, hidden, tau_prev, generators=None, draft=None):
        action = draw(self, hidden, tau_prev, generators, draft)
        dist = self.distribution(hidden, tau_prev, draft)
        deterministic_gate = (dist.gate_prob > 0.5).float()
        if kind == "sampled gate, mean z":
            return self._act(dist, tau_prev, action.gate, dist.beta_mean)
        if kind == "det gate, sampled z":
            return self._act(dist, tau_prev, deterministic_gate, action.z)
        if kind == "always update, sampled z":
            return self._act(dist, tau_prev, torch.ones_like(action.gate), action.z)
        if kind == "det, consuming the noise":
            return self._act(dist, tau_prev, deterministic_gate, dist.beta_mean)
        return action

    return sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--problems", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default=";".join(VARIANTS), help="';'-separated, of: " + "; ".join(VARIANTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    ckpt = load_checkpoint(args.checkpoint, "cpu", torch.float32)
    recorded = recorded_choice(ckpt.manifest.training) or TaskChoice()
    task = dataclasses.replace(recorded, n_heldout=500, split_seed=1234).build()
    problems = task.split()[1][: args.problems]
    common = dict(task=task, max_new_tokens=task.max_new_tokens)
    drafts, summaries = draft_completions(ckpt.model, ckpt.tokenizer, problems, **common)
    original = TemperatureHead.sample
    for kind in args.variants.split(";"):
        if kind not in VARIANTS:
            raise SystemExit(f"unknown variant {kind!r}")
        TemperatureHead.sample = variant_sample(kind, original)
        try:
            controller = LearnedTemperature(ckpt.head, deterministic=kind == "deterministic")
            rows = sample_completions(ckpt.model, ckpt.tokenizer, controller, problems, samples=7, first_sample=1,
                                      drafts=summaries, seed=args.seed, **common)
        finally:
            TemperatureHead.sample = original
        r = summarise(kind, drafts + rows, len(problems), 8)
        print(f"seed {args.seed} | {kind:26s} | avg@8 {r.avg_at_k:.3f} | pass@8 {r.pass_at_k:.3f} | "
              f"mean tau {r.mean_tau:.3f} | gate rate {r.gate_rate:.3f}", flush=True)


if __name__ == "__main__":
    main()
