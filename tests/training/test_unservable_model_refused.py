"""A model the server could not serve (here Mamba: linear-attention layers) is refused when `sft` or `grpo`
starts, in one line naming the layer type, before anything is trained or written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from model import build_char_tokenizer
from tests.model.own_models import mamba, save_model_folder, save_with_head
from training.__main__ import main

REFUSAL = "mamba layer 0 is 'linear_attention': the KV cache serves full_attention and sliding_attention layers only"
REPO_ROOT = Path(__file__).resolve().parents[2]


def test_sft_and_grpo_refuse_a_linear_attention_model_before_training(tmp_path, capsys):
    tokenizer = build_char_tokenizer()
    folder = save_model_folder(tmp_path / "mamba-model", mamba(tokenizer), tokenizer)
    capsys.readouterr()  # what building the model printed
    assert main(["sft", "--init", str(folder), "--out", str(tmp_path / "sft"), "--threads", "1"]) == 3
    assert capsys.readouterr().err == f"python -m training sft: error: {REFUSAL}\n"
    checkpoint = save_with_head(tmp_path / "mamba-checkpoint", mamba(tokenizer), tokenizer)
    capsys.readouterr()
    assert main(["grpo", "--init", str(checkpoint), "--out", str(tmp_path / "grpo"), "--threads", "1"]) == 3
    assert capsys.readouterr().err == f"python -m training grpo: error: {REFUSAL}\n"
    assert not (tmp_path / "sft").exists() and not (tmp_path / "grpo").exists()


def test_the_training_command_exits_3_with_the_refusal_as_its_only_line(tmp_path):
    tokenizer = build_char_tokenizer()
    folder = save_model_folder(tmp_path / "mamba-model", mamba(tokenizer), tokenizer)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "training", "sft", "--init", str(folder), "--out", str(tmp_path / "sft"),
         "--threads", "1"],
        env=env, cwd=tmp_path, text=True, capture_output=True, timeout=120,
    )
    assert result.returncode == 3
    assert result.stderr == f"python -m training sft: error: {REFUSAL}\n"
