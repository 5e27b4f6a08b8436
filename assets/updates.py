"""One domain update as assets (a partition per update): demo_dataset → sdft_checkpoint →
eval_results (+ blocking checks). Promotion is the gating sensor's job (sensors.py).

Each body calls one step of `sdft_ops.pipeline`; state between assets lives in the data home
(`updates/<partition>/`), so nothing is pickled by an IO manager.
"""

import base64
import os
from pathlib import Path

import dagster as dg

from assets.partitions import domain_updates
from assets.resources import SdftOpsResource
from sdft_ops.gate import CHECK_GROUPS, WARNING_GROUPS  # light: pydantic + numpy

BLOCKING_CHECKS = tuple(g for g in CHECK_GROUPS if g not in WARNING_GROUPS)

def mlflow_run_url(sdft_ops: SdftOpsResource, run_id: str) -> str:
    """Link to the run in an MLflow UI (SDFT_OPS_MLFLOW_UI, default a local `mlflow ui`)."""
    registry = sdft_ops.registry()
    experiment_id = registry.client.get_run(run_id).info.experiment_id
    base = os.environ.get("SDFT_OPS_MLFLOW_UI", "http://127.0.0.1:5000")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


@dg.asset(partitions_def=domain_updates, group_name="domain_update", kinds={"jsonl"})
def demo_dataset(context: dg.AssetExecutionContext, sdft_ops: SdftOpsResource) -> dg.MaterializeResult:
    """The update's demonstrations: validated, hashed, split into train and held-out."""
    from sdft_ops.data import load_demonstrations
    from sdft_ops.pipeline import stage_dataset

    dataset = load_demonstrations(sdft_ops.submission(context.partition_key))
    domain = stage_dataset(context.partition_key, dataset, sdft_ops.settings(), sdft_ops.data_home())
    preview = "| id | prompt | demonstration |\n|---|---|---|\n" + "".join(
        f"| {d.id} | {d.prompt_messages()[-1]['content'][:80]} | {d.demonstration[:80]} |\n"
        for d in domain.train.records[:5])
    return dg.MaterializeResult(metadata={
        "domain": domain.name, "train_demos": len(domain.train),
        "heldout_items": len(domain.suite.items), "content_hash": domain.train.content_hash,
        "duplicates_dropped": dataset.dropped_duplicates, "preview": dg.MetadataValue.md(preview)})


@dg.asset(partitions_def=domain_updates, group_name="domain_update", deps=[demo_dataset],
          kinds={"pytorch", "mlflow"}, pool="gpu")
def sdft_checkpoint(context: dg.AssetExecutionContext, sdft_ops: SdftOpsResource) -> dg.MaterializeResult:
    """The candidate: SDFT (or SFT) from the current champion, or the base model if none."""
    from sdft_ops.pipeline import train_step
    from sdft_ops.update_state import load_state

    trained = train_step(context.partition_key, sdft_ops.settings(), sdft_ops.data_home(),
                         sdft_ops.registry())
    state = load_state(sdft_ops.data_home(), context.partition_key)
    final = trained.final
    metadata = {"mlflow_run": dg.MetadataValue.url(mlflow_run_url(sdft_ops, state.run_id)),
                "mlflow_run_id": state.run_id, "parent": state.need("parent").ref,
                "model_dir": dg.MetadataValue.path(str(trained.model_dir)), "method": trained.method,
                "final_loss": final.get("train/loss"), "step_seconds": final.get("train/step_seconds"),
                "tokens_per_s": final.get("train/tokens_per_s"), "train_seconds": trained.seconds}
    if trained.ceiling:
        metadata |= {"teacher_ceiling": trained.ceiling["teacher_score"],
                     "student_start": trained.ceiling["student_score"]}
    return dg.MaterializeResult(metadata=metadata)


def png_markdown(path, title: str) -> str:
    """A PNG as a markdown image with a data URI: the Dagster UI shows it inline, where a file
    path would only be text."""
    return f"![{title}](data:image/png;base64,{base64.b64encode(Path(path).read_bytes()).decode()})"


@dg.asset(partitions_def=domain_updates, group_name="domain_update", deps=[sdft_checkpoint],
          kinds={"mlflow"}, pool="gpu",
          check_specs=[dg.AssetCheckSpec(name, asset="eval_results", blocking=True)
                       for name in BLOCKING_CHECKS]
          + [dg.AssetCheckSpec(name, asset="eval_results") for name in WARNING_GROUPS])
def eval_results(context: dg.AssetExecutionContext, sdft_ops: SdftOpsResource):
    """Every configured suite on candidate and champion; retention per suite; the gate's checks."""
    from sdft_ops.evaluation.report import plot_retention
    from sdft_ops.pipeline import eval_step, gate_decision
    from sdft_ops.update_state import load_state, update_dir

    key, cfg, home, registry = (context.partition_key, sdft_ops.settings(), sdft_ops.data_home(),
                                sdft_ops.registry())
    report, version = eval_step(key, cfg, home, registry)
    decision = gate_decision(key, cfg, home, registry)
    plot = plot_retention(report, update_dir(home, key) / "retention.png") if report.retention else None
    run_id = load_state(home, key).run_id
    yield dg.MaterializeResult(metadata={
        "candidate_version": version, "retention": dg.MetadataValue.md(report.to_markdown()),
        "gate_preview": dg.MetadataValue.md(decision.to_markdown()),
        "mlflow_run": dg.MetadataValue.url(mlflow_run_url(sdft_ops, run_id)),
        **({"retention_plot": dg.MetadataValue.md(png_markdown(plot, "retention vs champion")),
            "retention_plot_file": dg.MetadataValue.path(str(plot))} if plot else {})})
    for name in CHECK_GROUPS:
        checks = decision.group(name)
        failed = [c for c in checks if not c.passed]
        yield dg.AssetCheckResult(
            check_name=name, passed=not failed and (bool(checks) or name == "warn_only_rules"),
            severity=dg.AssetCheckSeverity.WARN if name in WARNING_GROUPS else dg.AssetCheckSeverity.ERROR,
            metadata={"checks": len(checks), "failed": len(failed),
                      "details": dg.MetadataValue.md("\n".join(
                          f"- {'✅' if c.passed else '❌'} {c.suite} {c.rule}: {c.measured} vs "
                          f"{c.threshold} {c.note}" for c in checks) or "no checks of this kind")})


# Promotion decisions land here, reported by the gating sensor (visible per partition in the UI).
champion_promotion = dg.AssetSpec("champion_promotion", deps=[eval_results],
                                  partitions_def=domain_updates, group_name="domain_update",
                                  kinds={"mlflow"},
                                  description="Gate decision per update: promote or reject, why.")

domain_update_job = dg.define_asset_job(
    "domain_update", selection=[demo_dataset, sdft_checkpoint, eval_results],
    partitions_def=domain_updates, description="train, evaluate and check one domain update",
    tags={"sdft_ops/gpu": "true"})  # deploy/: the run queue limits runs with this tag per GPU
