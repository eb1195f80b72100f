"""Warm start: next-token training on solved problems of the run's task.

What it does: trains the tiny LM from scratch (or any local Hugging Face
causal LM given by path: its own tokenizer and BOS/EOS/pad conventions, in
bfloat16 on a GPU, with gradient checkpointing or LoRA adapters when asked) on
`prompt solution <eos>`, the loss on the solution only, each example with a
solution drawn at random among the problem's worked ones (Countdown: all valid
ones, so the model learns the choice points as choices). The prompt is
rendered by the prompt format chosen here (the tokenizer's chat template, or
`<bos>` + plain text ending with the separator), which the checkpoint records
for grpo, eval and the server, as it records the task and its split
(training/task_record.py). The temperature head is created as its prior
around tau_init and saved with the LM (LoRA merged) as a checkpoint.

What it does not do: touch the head's weights (RL does that), or evaluate
beyond a quick held-out accuracy at tau = 1 (see `evaluate.py`).
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch
from tqdm import trange
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from model import (
    PLAIN,
    FixedTemperature,
    PromptFormat,
    TemperatureHead,
    build_char_tokenizer,
    build_tiny_lm,
    choose_prompt_format,
    lm_hidden_size,
    save_checkpoint,
)
from model.checkpoint import MANIFEST_FILE, CheckpointError
from training import distributed
from training.common import JsonlLog, code_version, set_threads
from training.config import SFTConfig, config_to_dict
from training.data import SolvedExamples, pad_id
from training.rollout import sample_completions
from training.start import (
    lm_to_save,
    prepare_lm,
    refuse_unservable_config,
    trainable_lm_parameters,
    training_dtype,
)
from training.task_record import choice_from_config
from training.tasks import Task


def _unloadable(path: Path, what: str, exc: Exception) -> CheckpointError:
    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
    return CheckpointError(f"--init {path}: cannot load {what}: {reason}")


def _load_tokenizer(cfg: SFTConfig) -> PreTrainedTokenizerBase:
    """The run's tokenizer, read before the model: what it cannot do (a chat format) fails before any weight loads."""
    if not cfg.init:
        return build_char_tokenizer()
    path = Path(cfg.init)
    if not path.is_dir():
        raise FileNotFoundError(f"--init {path}: not a directory (a local Hugging Face model folder is needed)")
    try:  # transformers raises many types for a folder it cannot load; each becomes one line naming the folder
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise _unloadable(path, "its tokenizer", exc) from exc
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer in {path} has no EOS token: set eos_token in its tokenizer_config.json")
    return tokenizer


def _load_model(cfg: SFTConfig, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype):
    """(model, base model name): the tiny model from scratch, or the --init folder's (its own conventions)."""
    if not cfg.init:
        return build_tiny_lm(tokenizer, cfg.model, seed=cfg.seed).to(dtype), "tiny-llama-char"
    path = Path(cfg.init)
    try:  # a local folder only, safetensors only, no remote code
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=False,
                                                     local_files_only=True, dtype=dtype)
    except Exception as exc:
        raise _unloadable(path, "a Hugging Face causal LM (safetensors)", exc) from exc
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = pad_id(tokenizer)
    return model, str(path.name) if not (path / MANIFEST_FILE).exists() else f"{path.name} (continued)"


def quick_accuracy(model, tokenizer, problems, task: Task, seed: int, tau: float = 1.0,
                   prompt_format: PromptFormat = PLAIN) -> float:
    """Fraction of held-out problems solved by one sample at a fixed tau."""
    batches = sample_completions(model, tokenizer, FixedTemperature(tau), problems, samples=1, task=task,
                                 max_new_tokens=task.max_new_tokens, seed=seed, prompt_format=prompt_format)
    rewards = torch.cat([b.rewards for b in batches])
    return float(rewards.mean())


def lr_at(step: int, cfg: SFTConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_sft(cfg: SFTConfig) -> Path:
    rank, world, device = distributed.init()
    set_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    refuse_unservable_config(cfg.init)
    choice = choice_from_config(cfg)
    task = choice.build(n_train=cfg.n_train)
    train_problems, heldout = task.split()  # before the model loads: a bad task file fails fast
    tokenizer = _load_tokenizer(cfg)
    prompt_format = choose_prompt_format(tokenizer, cfg.prompt_format, cfg.system_prompt, cfg.prompt_separator)
    model, base_model = _load_model(cfg, tokenizer, training_dtype(cfg.dtype, device))
    model = prepare_lm(model, cfg.lora, cfg.gradient_checkpointing)
    model.to(device).train()
    distributed.broadcast_parameters([model])
    examples = SolvedExamples(train_problems, task, tokenizer, prompt_format)
    params = trainable_lm_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    rng = random.Random(cfg.seed * 7919 + rank)
    out = Path(cfg.out)
    log = JsonlLog(out / "sft_log.jsonl", enabled=rank == 0)
    per_rank = max(1, cfg.batch_size // world)
    metrics: dict = {}
    started = time.time()
    version = code_version()  # of the code that runs, not of whatever is checked out when it saves
    progress = trange(cfg.steps, desc="sft", disable=rank != 0)
    for step in progress:
        inputs, labels = examples.batch(rng, per_rank)
        inputs, labels = inputs.to(device), labels.to(device)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = model(input_ids=inputs, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        distributed.average_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            metrics = {"stage": "sft", "step": step, "loss": round(loss.item(), 5), "lr": lr_at(step, cfg)}
            if rank == 0 and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps - 1):
                model.eval()
                metrics["heldout_accuracy_tau1"] = quick_accuracy(
                    model, tokenizer, heldout[: cfg.eval_problems], task, seed=cfg.seed, prompt_format=prompt_format)
                model.train()
            log.write(metrics)
            progress.set_postfix(loss=f"{loss.item():.4f}")

    model.eval()
    hidden = lm_hidden_size(model)
    head = TemperatureHead(cfg.head.head_config(hidden)).to(device)
    if rank == 0:
        summary = {
            "stages": [{
                "stage": "sft",
                "config": config_to_dict(cfg),
                "seed": cfg.seed,
                "code_version": version,
                "steps": cfg.steps,
                "seconds": round(time.time() - started, 1),
                "world_size": world,
                "final": metrics,
            }],
            **choice.fields(train_problems, heldout, task),
        }
        save_checkpoint(out, lm_to_save(model).cpu(), tokenizer, head.cpu(), base_model=base_model, training=summary,
                        prompt_format=prompt_format)
    distributed.shutdown()
    return out
