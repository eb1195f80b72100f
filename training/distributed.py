"""Data parallelism for the trainers: the same command under `torchrun --nproc_per_node N`.

What it does: joins the process group torchrun describes (gloo on CPU, NCCL on
CUDA), makes every rank start from rank 0's weights, and averages gradients
across ranks after each backward. Each rank samples its own share of prompts.

Why gradients are averaged by hand rather than by wrapping in
DistributedDataParallel: coordinate ascent flips `requires_grad` between the LM
and the head from one step to the next, and DDP fixes the set of parameters it
reduces when it is built. An all-reduce over the parameters that have a
gradient is the same arithmetic and works in both phases.

What it does not do: model or tensor parallelism.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

import torch
import torch.distributed as dist


def init() -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def shutdown() -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast_parameters(modules: Iterable[torch.nn.Module]) -> None:
    """Every rank takes rank 0's weights."""
    if not is_distributed():
        return
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace each gradient with its mean over ranks (a rank without a gradient contributes zeros)."""
    if not is_distributed():
        return
    world = dist.get_world_size()
    for param in parameters:
        if not param.requires_grad:
            continue
        if param.grad is None:
            param.grad = torch.zeros_like(param)
        dist.all_reduce(param.grad, op=dist.ReduceOp.SUM)
        param.grad.div_(world)


def all_reduce_sum(value: float, device: torch.device) -> float:
    """Sum a Python number over ranks (token counts, metric totals)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item())


def weights_digest(modules: Iterable[torch.nn.Module]) -> str:
    """sha256 of every parameter's bytes, in order."""
    digest = hashlib.sha256()
    for module in modules:
        for tensor in module.parameters():
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def ranks_in_sync(modules: Iterable[torch.nn.Module]) -> bool:
    """True when every rank holds bit-identical parameters (always True for one process)."""
    mine = weights_digest(modules)
    if not is_distributed():
        return True
    everyone: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return all(d == mine for d in everyone)
