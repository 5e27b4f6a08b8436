"""Every shipped update config loads with the schema (unknown keys are refused there)."""

from pathlib import Path

import pytest

from sdft_ops.settings import UpdateConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NOT_UPDATE_CONFIGS = {"gate.yaml", "demo_chain.yaml", "demo_chain_full.yaml"}  # a GatePolicy, DemoChains
DOMAIN_UPDATES = ("tooluse", "knowledge", "triage")  # the chain steps trained with demo.yaml's recipe


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.rglob("*.yaml") if p.name not in NOT_UPDATE_CONFIGS),
                         ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_update_configs_validate(path):
    UpdateConfig.from_yaml(path)


def test_the_7b_recipe_is_what_docs_scaling_computes():
    cfg = UpdateConfig.from_yaml(CONFIGS / "scale" / "7b-lora-1gpu.yaml")
    assert cfg.model.lora is not None and cfg.model.lora.r == 16 and len(cfg.model.lora.target_modules) == 7
    assert cfg.model.dtype == "float32" and cfg.train.teacher == "ema"  # fp32: the EMA must move
    assert cfg.train.gradient_checkpointing and cfg.train.prompts_per_step == 8
    assert cfg.train.grad_accum_steps == 2 and cfg.train.max_new_tokens == 64


def test_the_7b_fsdp_recipe_is_what_docs_scaling_computes():
    cfg = UpdateConfig.from_yaml(CONFIGS / "scale" / "7b-full-fsdp-8gpu.yaml")
    assert cfg.model.lora is None and cfg.train.distributed == "fsdp"  # full fine-tune, sharded
    assert cfg.model.dtype == "float32" and cfg.train.teacher == "ema"
    assert cfg.train.gradient_checkpointing and cfg.train.prompts_per_step == 16
    assert cfg.train.max_new_tokens == 64


@pytest.mark.parametrize("name, domains, results", [
    ("demo_chain.yaml", ["safety", "tooluse", "triage", None], "demo.json"),
    ("demo_chain_full.yaml", ["safety", "tooluse", "knowledge", "triage", None], "demo_full.json")])
def test_every_step_of_the_shipped_demo_chains_builds_its_config(name, domains, results):
    from sdft_ops.demo import DemoChain, recipe_name

    chain = DemoChain.from_yaml(CONFIGS / name)
    assert [step.domain for step in chain.steps] == domains  # make demo: no knowledge (nothing learns it)
    assert chain.results_path() == CONFIGS.parent / "benchmarks" / "results" / results
    configs = [chain.step_config(step) for step in chain.steps]  # raises on an invalid merge
    rushed = [c for c, s in zip(configs, chain.steps, strict=True) if s.expect == "reject"]
    assert [recipe_name(c) for c in rushed] == ["sft"]  # plain SFT, no replay: what erased refusals
    domain_updates = [c for c, s in zip(configs, chain.steps, strict=True) if s.domain in DOMAIN_UPDATES]
    assert [recipe_name(c) for c in domain_updates] == (  # recipes.json's choice
        ["sdft-top10-teacher+filter-nll+replay-demos"] * (len(domains) - 2))
    # the safety and rushed updates train every weight, as measured (safety_champion.md, recipes.md)
    assert [c.model.train_layers for c in configs if c not in domain_updates] == [None, None]
