"""Sensors and the schedule: new demo files become partitions; scored updates get gated.

- `inbox_sensor`: each new `*.jsonl` in the inbox is validated; a good file is copied to the
  data home's submissions, becomes a partition and gets a run; a bad one never becomes a
  partition — its errors are written beside it (`<file>.errors.txt`) and logged.
- `gating_sensor`: for each new `eval_results` materialization, promotes the candidate only if
  every blocking check of that run passed (missing = failed) *and* the gate policy passes;
  otherwise rejects. Either way the decision is recorded in the registry ledger, the MLflow run
  and as a `champion_promotion` materialization with the decision markdown.
- `update_schedule`: runs the partitions not yet evaluated (cron from SDFT_OPS_UPDATE_CRON,
  stopped by default).
"""


import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg

from assets.partitions import domain_updates
from assets.resources import SdftOpsResource
from assets.updates import BLOCKING_CHECKS, domain_update_job

EVAL_KEY = dg.AssetKey("eval_results")


def partition_key_for(path: Path, existing: set[str] = frozenset()) -> str:
    """`<UTC date>-<file stem>`, suffixed -2, -3 ... when that update already exists."""
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in path.stem)
    base = key = f"{datetime.now(timezone.utc):%Y%m%d}-{stem}"
    n = 1
    while key in existing:
        n += 1
        key = f"{base}-{n}"
    return key


def admit_file(path: Path, sdft_ops: SdftOpsResource,
               existing: set[str] = frozenset()) -> tuple[str | None, str | None]:
    """(partition key, None) for a valid demo file (copied to submissions), (None, errors) if not."""
    from sdft_ops.data import DemoDataError, load_demonstrations

    try:
        load_demonstrations(path)
    except (DemoDataError, OSError, ValueError) as e:
        return None, str(e)
    key = partition_key_for(path, existing)
    dest = sdft_ops.submission(key)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, dest)
    return key, None


@dg.sensor(job=domain_update_job, minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING)
def inbox_sensor(context: dg.SensorEvaluationContext, sdft_ops: SdftOpsResource):
    inbox = sdft_ops.inbox_dir()
    seen = set(filter(None, (context.cursor or "").split("\n")))
    files = sorted(p for p in inbox.glob("*.jsonl") if p.name not in seen) if inbox.is_dir() else []
    if not files:
        return dg.SkipReason(f"no new demonstration files in {inbox.resolve()}")
    keys, run_requests = [], []
    existing = set(context.instance.get_dynamic_partitions(domain_updates.name))
    for path in files:
        key, errors = admit_file(path, sdft_ops, existing | set(keys))
        if errors:
            (path.parent / f"{path.name}.errors.txt").write_text(errors + "\n")
            context.log.error(f"{path.name} rejected, not a partition:\n{errors}")
            continue
        keys.append(key)
        run_requests.append(dg.RunRequest(run_key=key, partition_key=key))
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[domain_updates.build_add_request(keys)] if keys else [],
        cursor="\n".join(sorted(seen | {p.name for p in files})))


def blocked_reasons(instance: dg.DagsterInstance, partition: str, run_id: str) -> list[str]:
    """Blocking checks of `eval_results` that did not pass in `run_id` (missing counts)."""
    reasons = []
    for name in BLOCKING_CHECKS:
        key = dg.AssetCheckKey(EVAL_KEY, name)
        history = instance.event_log_storage.get_asset_check_execution_history(key, limit=100)
        # one run materializes one partition; check records need not carry the partition
        record = next((r for r in history if r.run_id == run_id
                       and r.partition in (None, partition)), None)
        if record is None or record.status.value != "SUCCEEDED":
            status = "missing" if record is None else record.status.value.lower()
            reasons.append(f"blocking check {name} {status} in run {run_id[:8]}")
    return reasons


def gate_partition(instance: dg.DagsterInstance, partition: str, run_id: str,
                   sdft_ops: SdftOpsResource) -> dg.AssetMaterialization | None:
    """Gate one scored update (idempotent: an update already decided is left alone)."""
    from sdft_ops.pipeline import gate_step
    from sdft_ops.update_state import load_state

    home = sdft_ops.data_home()
    if load_state(home, partition).promoted is not None:
        return None
    decision = gate_step(partition, sdft_ops.settings(), home, sdft_ops.registry(),
                         blocked=blocked_reasons(instance, partition, run_id))
    state = load_state(home, partition)
    return dg.AssetMaterialization(
        asset_key="champion_promotion", partition=partition,
        metadata={"verdict": decision.verdict, "version": state.version,
                  "decision": dg.MetadataValue.md(decision.to_markdown()),
                  "reasons": "; ".join(decision.reasons) or "all checks passed"})


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def gating_sensor(context: dg.SensorEvaluationContext, sdft_ops: SdftOpsResource):
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=EVAL_KEY, after_storage_id=after), limit=20, ascending=True)
    if not records.records:
        return dg.SkipReason("no newly scored updates")
    events = []
    for record in records.records:
        partition = record.partition_key
        event = gate_partition(context.instance, partition, record.run_id, sdft_ops)
        if event is not None:
            events.append(event)
            context.log.info(f"{partition}: {event.metadata['verdict'].value}")
    return dg.SensorResult(asset_events=events, cursor=str(records.records[-1].storage_id))


@dg.schedule(cron_schedule=os.environ.get("SDFT_OPS_UPDATE_CRON", "0 3 * * 1"),
             job=domain_update_job, default_status=dg.DefaultScheduleStatus.STOPPED)
def update_schedule(context: dg.ScheduleEvaluationContext):
    """Run every domain-update partition that has no scored result yet."""
    done = set(context.instance.get_materialized_partitions(EVAL_KEY))
    pending = [k for k in context.instance.get_dynamic_partitions(domain_updates.name)
               if k not in done]
    if not pending:
        return dg.SkipReason("no pending domain updates")
    return [dg.RunRequest(run_key=f"{k}-{context.scheduled_execution_time:%Y%m%d%H%M}",
                          partition_key=k) for k in pending]
