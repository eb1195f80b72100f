"""Request schemas: every bound that needs no model, and the mapping to GenerationInput."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.api.schemas import CompletionRequest, GenerateRequest


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "a", "max_new_tokens": -1}, "max_new_tokens"),
        ({"prompt": "a", "max_new_tokens": 0}, "max_new_tokens"),
        ({"prompt": "a", "tau_min": 1.5, "tau_max": 0.5}, "tau_min"),
        ({"prompt": "a", "unknown": 1}, "unknown"),
        ({"prompt": "a", "temperature_mode": "fixed"}, "needs a temperature"),
        ({"prompt": "a", "temperature_mode": "learned", "temperature": 0.5}, "fixed' only"),
        ({"prompt": "a", "temperature": 0.5, "tau_min": 0.2}, "not used with 'fixed'"),
        ({"prompt": "a", "temperature_mode": "entropy", "deterministic_temperature": True}, "learned' only"),
        ({"prompt": "a", "temperature": 0}, "temperature"),
        ({"prompt": "a", "temperature": "inf"}, "temperature"),
        ({"prompt": "a", "top_p": 0}, "top_p"),
        ({"prompt": "a", "stop": ["x"] * 9}, "stop"),
        ({"prompt": "a", "stop": [""]}, "stop"),
        ({"prompt": "a", "temperature_mode": "hot"}, "temperature_mode"),
        ({"prompt": "a", "seed": -1}, "seed"),
    ],
)
def test_bad_generate_requests_are_rejected_naming_the_problem(body, complaint):
    with pytest.raises(ValidationError) as error:
        GenerateRequest.model_validate(body)
    assert complaint in str(error.value)


def test_generate_request_defaults_to_the_learned_temperature_and_temperature_alone_means_fixed():
    assert GenerateRequest(prompt="a").to_input().mode == "learned"
    fixed = GenerateRequest(prompt="a", temperature=0.6).to_input()
    assert fixed.mode == "fixed" and fixed.temperature == 0.6
    narrowed = GenerateRequest(prompt="a", temperature_mode="entropy", tau_min=0.3, stop=["\n"]).to_input()
    assert (narrowed.mode, narrowed.tau_min, narrowed.tau_max, narrowed.stop) == ("entropy", 0.3, None, ("\n",))


def test_completions_temperature_zero_is_greedy_and_positive_is_fixed():
    base = {"model": "m", "prompt": "a"}
    absent = CompletionRequest(**base).to_input()
    assert (absent.mode, absent.greedy, absent.max_new_tokens) == ("learned", False, 16)
    zero = CompletionRequest(**base, temperature=0).to_input()
    assert zero.greedy and zero.mode == "learned"
    warm = CompletionRequest(**base, temperature=0.8, stop="\n").to_input()
    assert (warm.mode, warm.temperature, warm.greedy, warm.stop) == ("fixed", 0.8, False, ("\n",))
    listed = CompletionRequest(model="m", prompt=["only one"]).to_input()
    assert listed.prompt == "only one"


@pytest.mark.parametrize(
    "extra",
    [{"n": 0}, {"n": 1025}, {"echo": True}, {"prompt": ["a", "b"]}, {"prompt": ""}, {"frequency_penalty": 0.5},
     {"logprobs": 9}, {"temperature": 0.5, "temperature_mode": "learned"}],
)
def test_unsupported_completion_options_are_rejected(extra):
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": "a", **extra})
