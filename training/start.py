"""The LM a training run starts from and trains: dtype, gradient checkpointing, LoRA, the task.

What it does:
  - `training_dtype`: "auto" is bfloat16 on a GPU that supports it, else float32;
  - `refuse_unservable_config`: a model folder whose config the server could
    not serve is refused before anything else runs;
  - `prepare_lm`: gradient checkpointing when asked, and LoRA adapters (peft)
    when `lora.rank > 0`, after which only the adapters' weights are trainable;
  - `trainable_lm_parameters`: what the LM's optimiser updates (the adapters
    with LoRA, every weight without);
  - `lm_to_save`: the plain model to write into a checkpoint, with LoRA
    adapters merged into a copy of the weights (the training model keeps its
    adapters), so the server loads an ordinary checkpoint.
The run's task is training/task_record.py's.

What it does not do: read checkpoints (model/checkpoint.py) or train.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import AutoConfig, PreTrainedModel

from model import attention_layout
from training.config import LoraConfig

DTYPES = ("auto", "float32", "bfloat16", "float16")


def training_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r} (use one of {', '.join(DTYPES)})")
    if name == "auto":
        on_gpu = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if on_gpu else torch.float32
    return getattr(torch, name)


def refuse_unservable_config(init: str | Path | None) -> None:
    """Raise UnsupportedModelError when the config of the model folder `init` (a Hugging Face folder or a
    checkpoint) names layers the server could not serve, before the task is built or weights load: building
    the bundled task alone takes a minute. Recurrent-state models that declare no layer types are refused
    by `prepare_lm`, once the model is loaded. Nothing to check without `init` (the tiny model)."""
    if not init:
        return
    try:
        config = AutoConfig.from_pretrained(Path(init), local_files_only=True, trust_remote_code=False)
    except Exception:  # unreadable here: the model's own loading reports it, with its context
        return
    attention_layout(config)


def prepare_lm(model: PreTrainedModel, lora: LoraConfig, gradient_checkpointing: bool) -> PreTrainedModel:
    """The model to train: with gradient checkpointing and LoRA adapters when asked.

    With LoRA the returned model is the same transformers model with the
    adapters injected into its layers (peft does that in place), so every
    forward (model.lm.forward, generate) runs through the adapters. A model the server could
    not serve is refused first (UnsupportedModelError, naming the layer type)."""
    attention_layout(model.config, model)
    if gradient_checkpointing:
        # transformers >= 5.x names it activation checkpointing (the old name warns).
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora.rank <= 0:
        return model
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    targets: str | list[str] = lora.target_modules
    if "," in targets or targets != "all-linear":
        targets = [name.strip() for name in lora.target_modules.split(",") if name.strip()]
    peft_model = get_peft_model(model, PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                      target_modules=targets, task_type="CAUSAL_LM"))
    if gradient_checkpointing:
        peft_model.enable_input_require_grads()
    inner = peft_model.get_base_model()
    # Kept to merge on save; set past nn.Module's __setattr__, or it would become a submodule (a cycle).
    object.__setattr__(inner, "_introllm_peft", peft_model)
    return inner


def uses_lora(model: torch.nn.Module) -> bool:
    return getattr(model, "_introllm_peft", None) is not None


def trainable_lm_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The LoRA adapters' weights when the model has them, else every weight."""
    if uses_lora(model):
        return [p for name, p in model.named_parameters() if "lora_" in name]
    return list(model.parameters())


def set_lm_trainable(model: torch.nn.Module, trainable: bool) -> None:
    """(Un)freeze what the LM's optimiser updates; base weights under LoRA stay frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable_lm_parameters(model):
        p.requires_grad_(trainable)


def lm_to_save(model: PreTrainedModel, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """A plain transformers model for the checkpoint: LoRA merged into a copy; `dtype` casts a copy."""
    if uses_lora(model):
        peft_model = copy.deepcopy(model._introllm_peft)
        merged = peft_model.merge_and_unload()
        merged.__dict__.pop("_introllm_peft", None)
        return merged.to(dtype) if dtype is not None else merged
    if dtype is not None and dtype != next(model.parameters()).dtype:
        return copy.deepcopy(model).to(dtype)
    return model
