"""The zoo cards and decoding parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from knowlm_local.errors import KnowLMError
from knowlm_local.params import GenerationParams
from knowlm_local.zoo import find_card, get_card, load_cards

REQUIRED_MODELS = {"knowlm-13b-base", "knowlm-13b-zhixi", "knowlm-13b-ie", "knowlm-13b-ie-lora", "oceangpt-7b",
                   "oneke", "smollm2-135m-instruct"}


def test_every_card_loads_and_the_zoo_is_complete():
    cards = {c.name: c for c in load_cards()}
    assert REQUIRED_MODELS <= cards.keys()
    for card in cards.values():
        assert card.hf_repo.count("/") == 1
        assert card.context_length >= 2048
        # Where it comes from: a public page, or (for the model this project trained) the recipe that makes it.
        root = Path(__file__).resolve().parents[1]
        assert card.source.startswith("https://") or (card.source.startswith("recipes/")
                                                      and (root / card.source).is_file()), card.source
    assert cards["knowlm-13b-ie-lora"].is_lora and cards["knowlm-13b-ie-lora"].base in cards
    assert cards["oneke"].template == "oneke" and cards["knowlm-13b-zhixi"].template == "alpaca"
    assert sorted(c.name for c in cards.values() if c.embedded) == ["smollm2-135m-instruct", "smollm2-ie"]
    assert cards["smollm2-ie"].adapter_file and "extract" in cards["smollm2-ie"].default_for


def test_lookup_by_alias_and_repo_id():
    assert get_card("ZhiXi").name == "knowlm-13b-zhixi"
    assert get_card("zjunlp/OneKE").name == "oneke"
    assert find_card("nope") is None


def test_unknown_name_suggests_close_names():
    with pytest.raises(KnowLMError) as info:
        get_card("onek")
    assert "oneke" in info.value.hint


def test_card_with_unknown_key_is_rejected(tmp_path):
    good = ('name="x"\ndisplay_name="x"\nfamily="x"\ndescription="x"\nhf_repo="a/b"\nrevision="main"\n'
            'architecture="LlamaForCausalLM"\nparameters="1B"\nlicense="MIT"\ntemplate="alpaca"\ncontext_length=2048\n')
    (tmp_path / "x.toml").write_text(good + 'colour="red"\n')
    with pytest.raises(KnowLMError, match="unknown keys: colour"):
        load_cards(str(tmp_path))
    (tmp_path / "x.toml").write_text(good.replace('template="alpaca"', 'template="vicuna"'))
    with pytest.raises(KnowLMError, match="template must be one of"):
        load_cards(str(tmp_path))


def test_params_from_card_and_set():
    card = get_card("oneke")
    params = GenerationParams.from_card(card, max_tokens=64)
    assert params.temperature == card.decoding.temperature and params.max_tokens == 64
    params = params.with_value("temperature", "0.2").with_value("top-k", "5").with_value("stop", r"END,\n\n")
    assert (params.temperature, params.top_k, params.stop) == (0.2, 5, ("END", "\n\n"))
    assert params.with_value("stop", "none").stop == ()
    with pytest.raises(KnowLMError, match="unknown parameter"):
        params.with_value("temprature", "1")
    with pytest.raises(KnowLMError, match="needs a float"):
        params.with_value("top_p", "high")
    with pytest.raises(KnowLMError, match="top_p must be in"):
        params.with_value("top_p", "1.5")
    # Every field can be set at run time.
    for name in GenerationParams.field_names():
        assert params.with_value(name, "1" if name != "stop" else "x")
