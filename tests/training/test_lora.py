"""LoRA (peft): a micro run trains only the adapters, and the merged checkpoint computes what the adapted model did."""

from __future__ import annotations

import torch

from model import forward, load_checkpoint
from training.config import GRPOConfig, LoraConfig
from training.grpo import train_grpo
from training.start import lm_to_save, prepare_lm, trainable_lm_parameters
from training.tasks.countdown import Verdict

LORA = LoraConfig(rank=4, alpha=8.0)


def digit_fraction(problem, text: str) -> Verdict:
    """A dense reward any random model gets partly right, so advantages are not all zero."""
    return Verdict(sum(c.isdigit() for c in text) / max(len(text), 1), "ok")


def base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every non-adapter weight, under its name in a plain (merged or never adapted) model."""
    return {name.replace("base_layer.", ""): p.detach().clone() for name, p in model.named_parameters()
            if "lora_" not in name}


def test_prepare_lm_leaves_only_the_adapters_trainable(micro_checkpoint):
    model = prepare_lm(load_checkpoint(micro_checkpoint).model, LORA, gradient_checkpointing=False)
    trainable = trainable_lm_parameters(model)
    assert trainable and all(p.requires_grad for p in trainable)
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in name for name in names)


def test_a_lora_grpo_run_changes_only_adapters_and_the_merged_checkpoint_matches(micro_checkpoint, tmp_path):
    start = load_checkpoint(micro_checkpoint).model
    before = base_weights(start)
    out = tmp_path / "lora"
    cfg = GRPOConfig(init=str(micro_checkpoint), out=str(out), steps=2, schedule="lm:1", prompts_per_step=2,
                     group_size=4, n_train=20, n_heldout=2, eval_every=0, save_every=0, threads=1,
                     max_new_tokens=6, lm_lr=5e-2, lora=LORA)
    result = train_grpo(cfg, score=digit_fraction)
    adapted = result.model
    after = base_weights(adapted)
    assert after.keys() == before.keys()
    for name, weight in before.items():
        assert torch.equal(weight, after[name]), f"{name} moved: only adapters may train"
    adapters = {name: p for name, p in adapted.named_parameters() if "lora_B" in name}
    assert adapters and any(p.abs().sum() > 0 for p in adapters.values())  # B starts at 0: it was trained

    saved = load_checkpoint(out)
    assert not any("lora" in name for name, _ in saved.model.named_parameters())  # a plain checkpoint
    ids = torch.tensor([[1, 20, 30, 40, 50, 60, 70]])
    with torch.no_grad():
        expected = forward(adapted.eval(), ids)
        merged = forward(saved.model, ids)
    torch.testing.assert_close(merged.logits, expected.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(merged.hidden, expected.hidden, rtol=1e-4, atol=1e-4)
    # Merging worked on a copy: the training model still has its adapters.
    assert any("lora_" in name for name, _ in adapted.named_parameters())
    assert lm_to_save(adapted) is not adapted


def test_gradient_checkpointing_gives_the_same_gradients(micro_checkpoint):
    ids = torch.tensor([[1, 20, 30, 40, 50, 60, 70, 80]])
    grads = []
    for checkpointing in (False, True):
        model = prepare_lm(load_checkpoint(micro_checkpoint).model, LoraConfig(), checkpointing).train()
        assert model.is_activation_checkpointing == checkpointing
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append(model.get_input_embeddings().weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
