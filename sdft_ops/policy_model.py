"""The MLflow pyfunc wrapper of a trained policy, logged as *code* (MLflow "models from code").

`sdft_ops.registry` logs this file itself as the model's code (`python_model=<this file>`), with
the model folder written by `sdft_ops.engine.checkpoint.save_trained_model` as the artifact
`model_dir`. Nothing is pickled: loading executes this file, which imports no `sdft_ops` code, so
a serving environment needs only mlflow, torch, transformers and safetensors.

    model = mlflow.pyfunc.load_model("models:/sdft-ops-policy@champion")
    model.predict(pd.DataFrame({"prompt": ["What is the capital of France?"]}))  # -> list[str]
    model.predict(["Hi"], params={"max_new_tokens": 16})

`load_context` loads the folder with transformers (safetensors only, `trust_remote_code=False`,
fp32 on CPU). `predict` treats every prompt as one user turn, renders it with the tokenizer's
chat template (or 'role: content' lines without one) and decodes greedily — the same rendering
and decoding (greedy, the same stop ids) as `sdft_ops.chat.generate_text`, restated here so the artifact is self-contained.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

MODEL_DIR_ARTIFACT = "model_dir"
PROMPT_COLUMN = "prompt"
DEFAULT_MAX_NEW_TOKENS = 64


def _prompts(model_input: Any) -> list[str]:
    """A DataFrame (column `prompt`, else its first column), a Series, a list or one string."""
    if isinstance(model_input, str):
        return [model_input]
    columns = getattr(model_input, "columns", None)
    if columns is not None:  # pandas DataFrame
        column = PROMPT_COLUMN if PROMPT_COLUMN in columns else columns[0]
        return [str(p) for p in model_input[column].tolist()]
    if hasattr(model_input, "tolist"):  # Series / ndarray
        return [str(p) for p in model_input.tolist()]
    if isinstance(model_input, dict) and PROMPT_COLUMN in model_input:
        return _prompts(model_input[PROMPT_COLUMN])
    if isinstance(model_input, (list, tuple)):
        return [p[PROMPT_COLUMN] if isinstance(p, dict) else str(p) for p in model_input]
    raise TypeError(f"cannot read prompts from {type(model_input).__name__}; pass a DataFrame with "
                    f"a '{PROMPT_COLUMN}' column or a list of strings")


class PolicyModel(PythonModel):
    """Greedy chat generation from a plain safetensors transformers folder."""

    def load_context(self, context) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = context.artifacts[MODEL_DIR_ARTIFACT]
        self.model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, trust_remote_code=False, use_safetensors=True).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def _render(self, prompt: str) -> str:
        messages = [{"role": "user", "content": prompt}]
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return f"user: {prompt}\nassistant:"

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> list[str]:
        # (the DataFrame hint only tells MLflow not to infer a schema: lists and strings work too)
        import torch

        max_new_tokens = int((params or {}).get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        outputs = []
        for prompt in _prompts(model_input):
            ids = self.tokenizer(self._render(prompt), add_special_tokens=False)["input_ids"]
            ids = torch.tensor([ids], device=self.model.device)  # (1, T)
            with torch.no_grad():
                out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                          max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id,
                                          eos_token_id=self._stop_ids())
            outputs.append(self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
        return outputs

    def _stop_ids(self) -> list[int]:
        """The stop rule of `sdft_ops.engine.sampling.stop_ids`: the tokenizer's EOS and the
        generation config's EOS ids (greedy decoding with them is the same tokens, tested)."""
        config = self.model.generation_config.eos_token_id
        ids = {self.tokenizer.eos_token_id, *(config if isinstance(config, list | tuple) else [config])}
        return sorted(i for i in ids if i is not None)


mlflow.models.set_model(PolicyModel())
