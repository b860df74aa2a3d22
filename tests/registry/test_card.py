"""The pushed model card: Hub metadata that parses, a body that says how to rebuild, no secrets."""

from __future__ import annotations

import pytest
from huggingface_hub import ModelCard

from lorareg.errors import HubError, LoraregError
from lorareg.registry.card import render_card

TOKEN = "hf_" + "Q" * 34
BASE_SHA = "0123456789abcdef0123456789abcdef01234567"
RECIPE = {
    "method": "ties", "density": 0.5, "majority_sign_method": "total", "seed": 7, "dtype": "bfloat16",
    "base": {"name": "llama", "version": 1, "digest": "sha256:" + "c" * 64},
    "adapters": [{"name": "chat", "version": 2, "weight": 0.7, "digest": "sha256:" + "a" * 64},
                 {"name": "code", "version": 1, "weight": 0.3, "digest": "sha256:" + "b" * 64}],
    "versions": {"torch": "2.13.0", "peft": "0.21.2", "safetensors": "0.8.0"},
}
INPUTS = [
    {"role": "base", "name": "llama", "version": 1, "digest": "sha256:" + "c" * 64,
     "source": f"hf://acme/llama@{BASE_SHA}"},
    {"role": "adapter", "name": "chat", "version": 2, "weight": 0.7, "digest": "sha256:" + "a" * 64,
     "source": "/data/adapters/chat"},
    {"role": "adapter", "name": "code", "version": 1, "weight": 0.3, "digest": "sha256:" + "b" * 64,
     "source": "/data/adapters/code"},
]
OUT = "sha256:" + "d" * 64


def _card(**kw) -> str:
    args = dict(kind="merge", name="llama-chat", version=3, base_model="acme/llama", recipe=RECIPE, inputs=INPUTS,
                output_digest=OUT, lorareg_version="0.1.0")
    return render_card(**{**args, **kw})


def test_merge_card_metadata_parses_on_the_hub_side():
    data = ModelCard(_card()).data.to_dict()
    assert data["base_model"] == "acme/llama"
    assert data["base_model_relation"] == "merge"
    assert data["library_name"] == "transformers"
    assert {"lora", "merge", "lorareg"} <= set(data["tags"])
    assert data["lorareg"] == {"name": "llama-chat", "version": 3, "digest": OUT}


def test_adapter_card_metadata():
    single = ModelCard(_card(kind="adapter", inputs=INPUTS[:2])).data.to_dict()
    assert (single["library_name"], single["base_model_relation"]) == ("peft", "adapter")
    assert "lora" in single["tags"] and "merge" not in single["tags"]
    combined = ModelCard(_card(kind="adapter")).data.to_dict()
    assert "merge" in combined["tags"]  # built from two adapters


def test_body_has_recipe_digests_and_rebuild():
    text = ModelCard(_card()).text
    for item in INPUTS:
        assert item["digest"] in text and item["source"] in text
    assert "| adapter | chat@2 | 0.7 |" in text and "| adapter | code@1 | 0.3 |" in text
    assert "| base | llama@1 |" in text
    assert "| method | ties |" in text and "| seed | 7 |" in text and "| dtype | bfloat16 |" in text
    assert "density=0.5, majority_sign_method=total" in text
    assert "lorareg 0.1.0, peft 0.21.2, safetensors 0.8.0, torch 2.13.0" in text
    assert f"`{OUT}`" in text
    assert "lorareg rebuild llama-chat@3" in text
    table = [line for line in text.splitlines() if line.startswith("| adapter |")]
    assert all(line.count(" | ") == 4 for line in table)


def test_registry_shaped_recipe():
    """What the registry records (a schema-2 Recipe): refs, engine and lorareg versions, the method's own params."""
    from lorareg.registry.recipe import AdapterRef, InputRef, Recipe

    recipe = Recipe(base=InputRef("llama@1", "sha256:" + "c" * 64),
                    adapters=(AdapterRef("chat@2", "sha256:" + "a" * 64, "sha256:" + "e" * 64, 1.0),),
                    method="ties", params={"density": 0.5, "majority_sign_method": "total"}, dtype="float32",
                    lorareg_version="0.0.9", versions={"torch": "2.13.0"}).to_json()
    inputs = [{"role": "base", **recipe["base"], "source": "lorareg store"},
              {"role": "adapter", **recipe["adapters"][0], "source": "/data/chat"}]
    text = _card(recipe=recipe, inputs=inputs)
    assert "| base | llama@1 |  | `sha256:" in text and "| adapter | chat@2 | 1.0 |" in text
    assert "| parameters | density=0.5, majority_sign_method=total |" in text  # the method's own, not every knob
    assert "| seed | 0 |" in text
    assert "engine lorareg-merge/1, lorareg 0.0.9, torch 2.13.0" in text


def test_card_is_deterministic():
    assert _card() == _card()  # a re-push must find the same README bytes
    assert _card(version=4) != _card()
    changed = [dict(i) for i in INPUTS]
    changed[1]["weight"] = 0.6
    assert _card(inputs=changed) != _card()


def test_unknown_base_has_no_base_model_field():
    data = ModelCard(_card(base_model=None)).data.to_dict()
    assert "base_model" not in data and data["base_model_relation"] == "merge"


def test_cells_are_escaped():
    odd = [{**INPUTS[1], "source": "/data/a|b\nc"}]
    row = next(line for line in _card(inputs=odd).splitlines() if line.startswith("| adapter |"))
    assert "a\\|b c" in row and row.count(" | ") == 4


def test_no_token_leaks(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    leaky = [{**INPUTS[0], "source": f"https://user:{TOKEN}@mirror.example/acme/llama"},
             {**INPUTS[1], "source": f"/tmp/{TOKEN}/chat"}]
    recipe = {**RECIPE, "note": f"Authorization: Bearer {TOKEN}"}
    text = _card(inputs=leaky, recipe=recipe)
    assert TOKEN not in text and "Q" * 16 not in text
    assert "https://***@mirror.example/acme/llama" in text
    assert ModelCard(text).data.base_model == "acme/llama"


def test_bad_arguments():
    with pytest.raises(HubError) as err:
        _card(base_model="/home/me/llama")
    assert err.value.hint
    with pytest.raises(LoraregError) as err:
        _card(kind="lora")
    assert err.value.hint
