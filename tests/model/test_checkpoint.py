import json
import pickle
import re
import shutil

import pytest
import torch

from model import (
    FORMAT_VERSION,
    CheckpointError,
    HeadConfig,
    LearnedTemperature,
    SamplingParams,
    TemperatureHead,
    generate,
    load_checkpoint,
    save_checkpoint,
)
from model.checkpoint import HEAD_FILE, MANIFEST_FILE
from model.checkpoint_files import context_length, read_checkpoint_info
from tests.model.broken_checkpoints import BROKEN_CHECKPOINTS


@pytest.fixture()
def checkpoint_dir(tmp_path, tiny_lm, tokenizer, head):
    return save_checkpoint(tmp_path / "ckpt", tiny_lm, tokenizer, head, base_model="tiny-test",
                           training={"steps": 3})


def _decode(model, head, tokenizer):
    prompt = torch.tensor([tokenizer("12 34>56\n")["input_ids"]])
    return generate(model, LearnedTemperature(head), prompt, SamplingParams(max_new_tokens=20),
                    torch.Generator().manual_seed(11), keep_logits=True)


def test_round_trip_reproduces_outputs_bit_for_bit(checkpoint_dir, tiny_lm, tokenizer, head):
    loaded = load_checkpoint(checkpoint_dir)
    before, after = _decode(tiny_lm, head, tokenizer), _decode(loaded.model, loaded.head, loaded.tokenizer)
    assert torch.equal(before.tokens, after.tokens)
    assert torch.equal(before.taus, after.taus)
    for a, b in zip(before.logits, after.logits, strict=True):
        assert torch.equal(a, b)
    assert loaded.manifest.head == head.config
    assert loaded.manifest.base_model == "tiny-test" and loaded.manifest.training == {"steps": 3}
    assert loaded.tokenizer.decode(loaded.tokenizer("a+b=c\n")["input_ids"]) == "a+b=c\n"


def test_manifest_records_version_and_tau_range(checkpoint_dir, head):
    manifest = json.loads((checkpoint_dir / MANIFEST_FILE).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["tau_range"] == [head.config.tau_min, head.config.tau_max]


@pytest.mark.parametrize("missing", [MANIFEST_FILE, HEAD_FILE, "model.safetensors", "config.json"])
def test_missing_file_is_named(checkpoint_dir, missing):
    (checkpoint_dir / missing).unlink()
    with pytest.raises(CheckpointError, match=f"missing file {missing}"):
        load_checkpoint(checkpoint_dir)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        load_checkpoint(tmp_path / "nope")


def test_wrong_format_version_is_refused(checkpoint_dir):
    manifest = json.loads((checkpoint_dir / MANIFEST_FILE).read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (checkpoint_dir / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="unsupported checkpoint format version 2"):
        load_checkpoint(checkpoint_dir)


def test_head_hidden_size_not_matching_the_lm_is_refused(tmp_path, tiny_lm, tokenizer):
    wrong = TemperatureHead(HeadConfig(hidden_size=tiny_lm.config.hidden_size * 2))
    path = save_checkpoint(tmp_path / "wrong", tiny_lm, tokenizer, wrong, base_model="tiny-test")
    with pytest.raises(CheckpointError, match="hidden_size 128 does not match the LM's hidden size 64"):
        load_checkpoint(path)


def test_head_weights_not_matching_the_manifest_are_refused(checkpoint_dir, tmp_path, tiny_lm, tokenizer):
    other = save_checkpoint(tmp_path / "other", tiny_lm, tokenizer,
                            TemperatureHead(HeadConfig(hidden_size=32)), base_model="x")
    shutil.copy(other / HEAD_FILE, checkpoint_dir / HEAD_FILE)
    with pytest.raises(CheckpointError, match="does not match the manifest's head config"):
        load_checkpoint(checkpoint_dir)


@pytest.mark.parametrize("name", ["pytorch_model.bin", "temperature_head.pt"])
def test_non_safetensors_weights_are_refused_without_unpickling(checkpoint_dir, name, monkeypatch):
    (checkpoint_dir / name).write_bytes(pickle.dumps({"weights": [1, 2, 3]}))

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load must never unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(CheckpointError, match=f"refusing non-safetensors weights .*{name}"):
        load_checkpoint(checkpoint_dir)


def test_load_does_not_unpickle_anything(checkpoint_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load must never unpickle")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert load_checkpoint(checkpoint_dir).head is not None


def test_saved_files_are_readable_by_other_users(checkpoint_dir):
    for item in checkpoint_dir.iterdir():
        assert item.stat().st_mode & 0o044 == 0o044, item.name


@pytest.mark.parametrize(("break_checkpoint", "named_file"), [case[1:] for case in BROKEN_CHECKPOINTS],
                         ids=[case[0] for case in BROKEN_CHECKPOINTS])
def test_broken_checkpoint_raises_checkpoint_error_naming_the_file(checkpoint_dir, break_checkpoint, named_file):
    break_checkpoint(checkpoint_dir)
    with pytest.raises(CheckpointError, match=re.escape(named_file)):
        load_checkpoint(checkpoint_dir)


# What only transformers can judge (the model type) or only the weights show (the head's width): the engine's.
ENGINE_ONLY = {"config-unknown-model-type", "head-width-not-matching-lm"}
API_SIDE = [case for case in BROKEN_CHECKPOINTS if case[0] not in ENGINE_ONLY]


@pytest.mark.parametrize(("break_checkpoint", "named_file"), [case[1:] for case in API_SIDE],
                         ids=[case[0] for case in API_SIDE])
def test_the_api_side_read_refuses_a_broken_checkpoint_naming_the_file_without_torch(
    checkpoint_dir, break_checkpoint, named_file
):
    break_checkpoint(checkpoint_dir)
    with pytest.raises(CheckpointError, match=re.escape(named_file)):
        read_checkpoint_info(checkpoint_dir)


def test_the_context_is_read_from_config_json_as_transformers_reads_it():
    assert context_length({"max_position_embeddings": 512}) == 512
    assert context_length({"model_type": "gpt2", "n_positions": 1024}) == 1024  # GPT-2's name for it
    assert context_length({"text_config": {"max_position_embeddings": 4096}, "vision_config": {}}) == 4096
    assert context_length({"model_type": "mamba"}) is None
