"""Stand-ins for a user's own model and data: a tiny Qwen2 chat model and a JSONL of arithmetic problems.

    python scripts/example_artifacts.py OUT_DIR

writes OUT_DIR/model (a randomly initialised Qwen2-architecture causal LM,
safetensors, with a byte-level BPE tokenizer trained here with the
`tokenizers` library and a ChatML chat template, as Qwen's instruct models
have) and OUT_DIR/problems.jsonl (a few dozen problems with plain and LaTeX
answers, each with a worked solution). The README's "Train a temperature head
on your own model and data" section and the end-to-end test use them.

What it does not do: download anything, or make a model that can do
arithmetic (it is random; the point is that every command runs on it).
"""

from __future__ import annotations

import json
import random
import sys
from fractions import Fraction
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# ChatML, the format of Qwen's instruct models.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def arithmetic_problems(count: int = 40, seed: int = 0) -> list[dict[str, str]]:
    """Sums (plain answers) and fractions (LaTeX answers), each with a worked solution ending in \\boxed{}."""
    rng = random.Random(seed)
    problems = []
    for i in range(count):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        if i % 3 == 2:
            value = Fraction(a, b)
            top, bottom = value.numerator, value.denominator
            answer = str(top) if bottom == 1 else f"\\frac{{{top}}}{{{bottom}}}"
            problems.append({"prompt": f"Simplify {a}/{b}.", "answer": answer,
                             "solution": f"{a}/{b} = ${answer}$. The answer is $\\boxed{{{answer}}}$."})
        else:
            problems.append({"prompt": f"What is {a} + {b}?", "answer": str(a + b),
                             "solution": f"{a} + {b} = {a + b}. The answer is $\\boxed{{{a + b}}}$."})
    return problems


def write_problems(path: Path, problems: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    return path


def build_tokenizer(corpus: list[str], vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `corpus` (any text encodes), ChatML special tokens, the chat template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, IM_START, IM_END],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=IM_END, pad_token=PAD,
                                        additional_special_tokens=[IM_START])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer: PreTrainedTokenizerFast, hidden_size: int = 64, layers: int = 2,
                seed: int = 0) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def write_example_artifacts(out: Path) -> tuple[Path, Path]:
    """(model folder, problems file) under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    problems = arithmetic_problems()
    corpus = [p["prompt"] + "\n" + p["solution"] for p in problems] + ["system\nuser\nassistant\n"]
    tokenizer = build_tokenizer(corpus)
    model_dir = out / "model"
    build_model(tokenizer).save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    return model_dir, write_problems(out / "problems.jsonl", problems)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    model_dir, problems = write_example_artifacts(Path(sys.argv[1]))
    print(f"model: {model_dir}\nproblems: {problems}")
