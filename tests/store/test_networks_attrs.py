"""``model.loras`` / ``model.embeddings``: typed values that read back what was written and name bad fields."""

from __future__ import annotations

import pytest

from dumpunet.errors import StoreError
from dumpunet.store.schema import NetworkFile, model_networks


def test_lora_and_embedding_entries_round_trip_with_the_short_hash():
    lora = NetworkFile("style", "Lora/style.safetensors", "a" * 64, "b" * 64, te_weight=0.5, unet_weight=1.0,
                       source="<lora:style:0.5:1>")
    emb = NetworkFile("sparkle", "sparkle.pt", "c" * 64, "c" * 64, vectors=3)
    model = {"name": "tiny-sd1", "loras": [lora.to_json()], "embeddings": [emb.to_json()]}
    assert lora.to_json()["short_hash"] == "b" * 12
    assert "te_weight" not in emb.to_json()
    assert model_networks(model) == ((lora,), (emb,))
    assert model_networks({"name": "plain"}) == ((), ())


def test_a_bad_entry_names_where_it_is():
    with pytest.raises(StoreError, match=r"model.loras\[0\]: attribute 'te_weight' must be a finite number, got 'x'"):
        model_networks({"loras": [{"name": "a", "te_weight": "x"}]})
    with pytest.raises(StoreError, match=r"model.embeddings\[0\]: attribute 'name' is missing"):
        model_networks({"embeddings": [{"file": "x.pt"}]})
