from transformers import AutoTokenizer

from model import TinyLMConfig, build_char_tokenizer, build_tiny_lm


def test_char_tokenizer_round_trips_through_auto_tokenizer_offline(tmp_path):
    build_char_tokenizer().save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "3 5 7 2>24\n24*2=84\nA84\n"
    ids = loaded(text)["input_ids"]
    assert len(ids) == len(text), "one token per character, no BOS added"
    assert loaded.decode(ids) == text
    assert loaded.eos_token == "<eos>" and loaded.pad_token_id == 0


def test_unknown_characters_map_to_unk():
    tokenizer = build_char_tokenizer()
    ids = tokenizer("a\u00e9b")["input_ids"]
    assert ids[1] == tokenizer.unk_token_id and len(ids) == 3


def test_default_tiny_lm_has_a_few_million_parameters():
    tokenizer = build_char_tokenizer()
    model = build_tiny_lm(tokenizer, TinyLMConfig())
    n_params = sum(p.numel() for p in model.parameters())
    assert 1_000_000 < n_params < 10_000_000
    assert model.config.vocab_size == len(tokenizer)


def test_same_seed_same_initial_weights():
    tokenizer = build_char_tokenizer()
    small = TinyLMConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=64)
    a, b = build_tiny_lm(tokenizer, small, seed=1), build_tiny_lm(tokenizer, small, seed=1)
    c = build_tiny_lm(tokenizer, small, seed=2)
    wa, wb, wc = (m.model.embed_tokens.weight for m in (a, b, c))
    assert (wa == wb).all() and not (wa == wc).all()
