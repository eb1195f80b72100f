"""The temperature head's configuration, as a checkpoint manifest records it; plain Python, no torch.

What it does: `HeadConfig` (tau range, prior, the head's inputs) with its
checks, its manifest dict form, and the tau <-> z maps (arithmetic that works
on floats and tensors alike). The API process reads it from the manifest
without importing torch (model/checkpoint_files.py).

What it does not do: build or run the head (model/temperature_head.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# What a head may read beside h_t (HeadConfig.inputs).
OPTIONAL_INPUTS = ("tau_prev", "draft")


@dataclass(frozen=True)
class HeadConfig:
    """Everything needed to rebuild a head; stored in the checkpoint manifest.

    eps: added to both Beta concentrations. 1.0 keeps the Beta unimodal (no mass
        piled at z = 0 or 1), so "confidently hot/cold" is alpha >> beta or the
        reverse and the log-density stays bounded; smaller values allow U shapes.
    tau_init: tau_0, the temperature before the first gate fires, and the mean
        of the initial Beta prior.
    init_gate_prob / init_concentration: the prior at initialisation. The last
        layer starts at zero weight, so every state gets P(update) =
        init_gate_prob and Beta(alpha, beta) with mean at tau_init and
        alpha + beta = init_concentration.
    z_margin: z is clamped into [z_margin, 1 - z_margin].
    inputs: what the head reads, in order: "hidden" first, then optionally
        "tau_prev" and "draft" (see the module docstring).
    draft_size: width of the draft summary when "draft" is an input, else 0.
    draft_linear: how many leading entries of the draft summary (its confidence
        statistics, model/draft.py) also reach u_t through a linear map of
        their own, zero at initialisation: a per-problem shift of the gate and
        Beta logits that needs no hidden unit to discover eight numbers among
        hundreds of inputs.
    """

    hidden_size: int
    tau_min: float = 0.1
    tau_max: float = 2.0
    tau_init: float = 1.0
    eps: float = 1.0
    init_gate_prob: float = 0.5
    init_concentration: float = 8.0
    z_margin: float = 1e-4
    inputs: tuple[str, ...] = ("hidden",)
    draft_size: int = 0
    draft_linear: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))  # a manifest gives a list
        if self.inputs[:1] != ("hidden",) or not set(self.inputs[1:]) <= set(OPTIONAL_INPUTS) \
                or len(set(self.inputs)) != len(self.inputs):
            raise ValueError(f"head inputs must be 'hidden' then any of {OPTIONAL_INPUTS}, got {list(self.inputs)}")
        if ("draft" in self.inputs) != (self.draft_size > 0):
            raise ValueError("draft_size must be > 0 exactly when 'draft' is an input of the head")
        if not 0 <= self.draft_linear <= self.draft_size:
            raise ValueError(f"draft_linear must be in [0, draft_size], got {self.draft_linear}")
        if self.hidden_size <= 1:
            raise ValueError(f"hidden_size must be > 1, got {self.hidden_size}")
        if not 0.0 < self.tau_min < self.tau_max:
            raise ValueError(f"need 0 < tau_min < tau_max, got {self.tau_min}, {self.tau_max}")
        if not self.tau_min <= self.tau_init <= self.tau_max:
            raise ValueError(f"tau_init {self.tau_init} outside [{self.tau_min}, {self.tau_max}]")
        if self.eps <= 0 or not 0.0 < self.init_gate_prob < 1.0 or not 0.0 < self.z_margin < 0.5:
            raise ValueError("need eps > 0, 0 < init_gate_prob < 1, 0 < z_margin < 0.5")
        if self.init_concentration <= 2 * self.eps:
            raise ValueError("init_concentration must exceed 2 * eps")

    @property
    def reads_draft(self) -> bool:
        return "draft" in self.inputs

    @property
    def input_size(self) -> int:
        return self.hidden_size + ("tau_prev" in self.inputs) + self.draft_size

    def to_dict(self) -> dict:
        data = asdict(self)
        data["inputs"] = list(self.inputs)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> HeadConfig:
        return cls(**data)

    def tau_to_z(self, tau: torch.Tensor) -> torch.Tensor:
        return (tau - self.tau_min) / (self.tau_max - self.tau_min)

    def z_to_tau(self, z: torch.Tensor) -> torch.Tensor:
        return self.tau_min + z * (self.tau_max - self.tau_min)
