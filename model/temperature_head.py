"""The learned temperature policy: an MLP head on the LM's last hidden state.

What it does: maps a hidden state h_t (B, d) to a hybrid action, following
IntroLLM (arXiv 2602.13035):

    u_t = W2 . ReLU(W1 . x_t + b1) + b2,     u_t = [u_gate, u_alpha, u_beta]
    c_t ~ Bernoulli(sigmoid(u_gate))                  "update the temperature?"
    z_t ~ Beta(softplus(u_alpha) + eps, softplus(u_beta) + eps)
    tau_t = tau_min + z_t (tau_max - tau_min)  if c_t = 1,  else tau_{t-1}

The head's input x_t is the config's `inputs`, concatenated: "hidden" (h_t,
the paper's head and every checkpoint written before draft heads), optionally
"tau_prev" (tau_{t-1} mapped to [0, 1]) and "draft" (the summary of the
prompt's greedy draft, `model/draft.py`, the same for every token of a
sample). A manifest without `inputs` is the paper's head, reading h_t only.

It gives the log-probability GRPO differentiates,
log P(c_t) + c_t log Beta(z_t; alpha_t, beta_t). It also offers a
deterministic choice for serving without noise (gate by probability > 0.5,
Beta mean).

What it does not do: touch logits or tokens (see `sampling.py`), or know about
batching, requests or training loops. Its arithmetic runs in float32 whatever
the LM's dtype, so bf16 serving gets the same temperatures as fp32 training.

Guards: head outputs are made finite and clamped before use, z is kept inside
(z_margin, 1 - z_margin) so log_prob is finite, and tau is always clamped into
[tau_min, tau_max].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.head_config import HeadConfig
from model.noise import ACTION_STREAM, UNIFORMS_PER_GAMMA, CounterNoise, gamma_from_uniforms

# Raw head outputs are clamped into [-LOGIT_CLAMP, LOGIT_CLAMP]: sigmoid and
# softplus are saturated far before, and this keeps alpha/beta finite when the
# hidden state is huge or the head has diverged.
LOGIT_CLAMP = 30.0
@dataclass
class ActionDistribution:
    """The head's action distribution for a batch; all tensors (B, 1), float32."""

    gate_logit: torch.Tensor
    alpha: torch.Tensor
    beta: torch.Tensor

    @property
    def gate_prob(self) -> torch.Tensor:
        return torch.sigmoid(self.gate_logit)

    @property
    def beta_mean(self) -> torch.Tensor:
        return self.alpha / (self.alpha + self.beta)


@dataclass
class TemperatureAction:
    """One temperature decision per row; all tensors (B, 1), float32.

    tau: the temperature applied to this step's logits.
    gate: 1.0 where the temperature was updated, 0.0 where tau_{t-1} was kept.
    z: the Beta draw in (0, 1) (drawn for every row so that a request's random
        stream never depends on its gate outcomes; only used where gate = 1).
    log_prob: log P(gate) + gate * log Beta(z), the temperature policy's
        log-probability of this action (0 for controllers without a policy).
    """

    tau: torch.Tensor
    gate: torch.Tensor
    z: torch.Tensor
    log_prob: torch.Tensor


def beta_log_prob(z: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """log Beta(z; alpha, beta), elementwise."""
    log_norm = torch.lgamma(alpha + beta) - torch.lgamma(alpha) - torch.lgamma(beta)
    return (alpha - 1) * torch.log(z) + (beta - 1) * torch.log1p(-z) + log_norm


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class TemperatureHead(nn.Module):
    """MLP (d + extra inputs) -> d/2 -> 3 with ReLU; see the module docstring for the action.

    Every method takes the step's hidden state (..., d) and, for a head that
    reads them, tau_prev (..., 1) and the draft summary (..., F) or (B, F) for
    hidden (B, N, d) (one summary per row, broadcast over its tokens).
    """

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.fc1 = nn.Linear(config.input_size, d // 2)
        self.fc2 = nn.Linear(d // 2, 3)
        self.draft_linear = nn.Linear(config.draft_linear, 3, bias=False) if config.draft_linear else None
        # The draft statistics enter standardised (x - mean) / std, both paths alike: fixed numbers saved with
        # the weights, set once by the trainer from drafts of training prompts (`set_draft_scale`).
        # (None for a head without that path: nothing extra in its state dict, so older heads load unchanged.)
        linear = config.draft_linear
        self.register_buffer("draft_mean", torch.zeros(linear) if linear else None)
        self.register_buffer("draft_std", torch.ones(linear) if linear else None)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Start as the prior in the config: zero last-layer weights, biases set the prior."""
        cfg = self.config
        nn.init.kaiming_uniform_(self.fc1.weight, a=math.sqrt(5))
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.weight)
        if self.draft_linear is not None:
            nn.init.zeros_(self.draft_linear.weight)
        mean = float(cfg.tau_to_z(torch.tensor(cfg.tau_init)))
        mean = min(max(mean, 0.05), 0.95)
        alpha = max(mean * cfg.init_concentration - cfg.eps, 1e-3)
        beta = max((1 - mean) * cfg.init_concentration - cfg.eps, 1e-3)
        gate_logit = math.log(cfg.init_gate_prob / (1 - cfg.init_gate_prob))
        self.fc2.bias.copy_(torch.tensor([gate_logit, _softplus_inverse(alpha), _softplus_inverse(beta)]))

    @property
    def reads_draft(self) -> bool:
        return self.config.reads_draft

    @torch.no_grad()
    def set_draft_scale(self, summaries: torch.Tensor) -> None:
        """Standardise the draft statistics by their mean and std over draft summaries (P, draft_size)."""
        stats = summaries[:, : self.config.draft_linear].float()
        self.draft_mean.copy_(stats.mean(dim=0))
        self.draft_std.copy_(stats.std(dim=0).clamp_min(1e-3) if len(stats) > 1 else torch.ones_like(self.draft_std))

    def head_input(
        self, hidden: torch.Tensor, tau_prev: torch.Tensor | None = None, draft: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x_t (..., input_size): the inputs the config names, concatenated, in the weights' dtype."""
        cfg = self.config
        dtype = self.fc1.weight.dtype
        parts = [hidden.to(dtype)]
        if "tau_prev" in cfg.inputs:
            if tau_prev is None:
                raise ValueError("this temperature head reads tau_prev: pass it")
            tau_prev = torch.nan_to_num(tau_prev.float(), nan=cfg.tau_init).clamp(cfg.tau_min, cfg.tau_max)
            parts.append(cfg.tau_to_z(tau_prev).to(dtype).expand(*hidden.shape[:-1], 1))
        if cfg.reads_draft:
            if draft is None:
                raise ValueError("this temperature head reads a greedy draft of the prompt: pass its summary "
                                 "(model.decode_draft)")
            if draft.shape[-1] != cfg.draft_size:
                raise ValueError(f"draft summary has width {draft.shape[-1]}, the head reads {cfg.draft_size}")
            if cfg.draft_linear:
                stats = (draft[..., : cfg.draft_linear].float() - self.draft_mean) / self.draft_std
                draft = torch.cat([stats.to(draft.dtype), draft[..., cfg.draft_linear :]], dim=-1)
            while draft.dim() < hidden.dim():
                draft = draft.unsqueeze(-2)  # one summary per row, over its tokens
            parts.append(torch.nan_to_num(draft.to(dtype)).expand(*hidden.shape[:-1], cfg.draft_size))
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def raw_outputs(
        self, hidden: torch.Tensor, tau_prev: torch.Tensor | None = None, draft: torch.Tensor | None = None
    ) -> torch.Tensor:
        """u_t for hidden states (..., d): (..., 3), float32, finite and clamped."""
        x = self.head_input(hidden, tau_prev, draft)
        u = self.fc2(F.relu(self.fc1(x)))
        if self.draft_linear is not None:
            start = x.shape[-1] - self.config.draft_size  # the summary is the last part of x
            u = u + self.draft_linear(x[..., start : start + self.config.draft_linear])
        u = u.float()
        return torch.nan_to_num(u, nan=0.0).clamp(-LOGIT_CLAMP, LOGIT_CLAMP)

    def distribution(
        self, hidden: torch.Tensor, tau_prev: torch.Tensor | None = None, draft: torch.Tensor | None = None
    ) -> ActionDistribution:
        """The action distribution for hidden states (..., d); fields shaped (..., 1)."""
        u = self.raw_outputs(hidden, tau_prev, draft)
        eps = self.config.eps
        return ActionDistribution(
            gate_logit=u[..., 0:1],
            alpha=F.softplus(u[..., 1:2]) + eps,
            beta=F.softplus(u[..., 2:3]) + eps,
        )

    def _act(
        self, dist: ActionDistribution, tau_prev: torch.Tensor, gate: torch.Tensor, z: torch.Tensor
    ) -> TemperatureAction:
        cfg = self.config
        z = z.clamp(cfg.z_margin, 1 - cfg.z_margin)
        tau_prev = torch.nan_to_num(tau_prev.float(), nan=cfg.tau_init).clamp(cfg.tau_min, cfg.tau_max)
        tau = torch.where(gate > 0.5, cfg.z_to_tau(z), tau_prev).clamp(cfg.tau_min, cfg.tau_max)
        return TemperatureAction(tau=tau, gate=gate, z=z, log_prob=_action_log_prob(dist, gate, z))

    def sample(
        self,
        hidden: torch.Tensor,
        tau_prev: torch.Tensor,
        generators: torch.Generator | Sequence[torch.Generator] | CounterNoise | None = None,
        draft: torch.Tensor | None = None,
    ) -> TemperatureAction:
        """Draw c_t and z_t for hidden (B, d) given tau_prev (B, 1).

        `generators` is one generator for the whole batch, one per row, or
        counter-based noise; each row draws from its own in a fixed order (gate
        uniform, then the two Gamma variates of the Beta) whatever its gate
        outcome, so a seed fixes the temperatures of a request regardless of
        what else is in the batch.
        """
        dist = self.distribution(hidden, tau_prev, draft)
        uniform, gamma_a, gamma_b = _draw_gate_and_beta(dist.alpha, dist.beta, generators)
        gate = (uniform < dist.gate_prob).float()
        # Beta(a, b) = Ga / (Ga + Gb). Both Gammas can underflow to 0 for small
        # concentrations: fall back to the mean rather than 0/0.
        total = gamma_a + gamma_b
        z = torch.where(total > 0, gamma_a / total.clamp_min(1e-30), dist.beta_mean)
        return self._act(dist, tau_prev, gate, z)

    def choose_deterministic(
        self, hidden: torch.Tensor, tau_prev: torch.Tensor, draft: torch.Tensor | None = None
    ) -> TemperatureAction:
        """Noise-free choice for serving: update where P(update) > 0.5, to the Beta mean."""
        dist = self.distribution(hidden, tau_prev, draft)
        gate = (dist.gate_prob > 0.5).float()
        return self._act(dist, tau_prev, gate, dist.beta_mean)

    def log_prob(
        self, hidden: torch.Tensor, gate: torch.Tensor, z: torch.Tensor,
        tau_prev: torch.Tensor | None = None, draft: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log P(c) + c * log Beta(z; alpha, beta) for hidden (..., d), gate and z (..., 1)."""
        z = z.float().clamp(self.config.z_margin, 1 - self.config.z_margin)
        return _action_log_prob(self.distribution(hidden, tau_prev, draft), gate.float(), z)

    def action_entropy(
        self, hidden: torch.Tensor, tau_prev: torch.Tensor | None = None, draft: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Entropy (nats) of the action for hidden states (..., d): H(gate) + P(update) * H(Beta), (..., 1).

        The Beta part is a differential entropy on [0, 1]: 0 for the uniform
        Beta(1, 1), negative for anything more concentrated. Trainers use it as
        an exploration bonus for the temperature policy.
        """
        dist = self.distribution(hidden, tau_prev, draft)
        p = dist.gate_prob
        gate_entropy = -(p * F.logsigmoid(dist.gate_logit) + (1 - p) * F.logsigmoid(-dist.gate_logit))
        beta_entropy = torch.distributions.Beta(dist.alpha, dist.beta, validate_args=False).entropy()
        return gate_entropy + p * beta_entropy


def _action_log_prob(dist: ActionDistribution, gate: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    log_p_gate = gate * F.logsigmoid(dist.gate_logit) + (1 - gate) * F.logsigmoid(-dist.gate_logit)
    return log_p_gate + gate * beta_log_prob(z, dist.alpha, dist.beta)


def _draw_gate_and_beta(
    alpha: torch.Tensor,
    beta: torch.Tensor,
    generators: torch.Generator | Sequence[torch.Generator] | CounterNoise | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A uniform and Gamma(alpha), Gamma(beta) draws per row, (B, 1) each.

    With one generator (or None) the batch shares it; with a sequence, row i
    draws from generators[i] exactly as a batch of one would from it alone.
    """
    concentrations = torch.cat([alpha, beta], dim=-1)  # (B, 2)
    if isinstance(generators, CounterNoise):
        draws = generators.uniform(ACTION_STREAM, 1 + 2 * UNIFORMS_PER_GAMMA)  # (B, 1 + 2U): gate, Beta
        gammas = gamma_from_uniforms(concentrations, draws[:, 1:].view(-1, 2, UNIFORMS_PER_GAMMA))  # (B, 2)
        return draws[:, 0:1], gammas[:, 0:1], gammas[:, 1:2]
    if generators is None or isinstance(generators, torch.Generator):
        uniform = torch.rand(alpha.shape, generator=generators, device=alpha.device)
        gammas = torch._standard_gamma(concentrations, generator=generators)
    else:
        if len(generators) != alpha.shape[0]:
            raise ValueError(f"got {len(generators)} generators for a batch of {alpha.shape[0]}")
        uniform = torch.cat(
            [torch.rand((1, 1), generator=gen, device=alpha.device) for gen in generators]
        )
        gammas = torch.cat(
            [torch._standard_gamma(concentrations[i : i + 1], generator=gen) for i, gen in enumerate(generators)]
        )
    return uniform, gammas[:, 0:1], gammas[:, 1:2]
