"""`make demo`: the three shipped domain updates through the Dagster job, in process, on the
instance in $DAGSTER_HOME — so `make dev` shows the same runs, checks and promotions afterwards.

Each update: add its partition, materialize demo_dataset → sdft_checkpoint → eval_results (with
the blocking checks), then gate it exactly as the gating sensor does. Prints the chain summary.
"""

import sys
import time

import dagster as dg

from assets.partitions import domain_updates
from assets.resources import SdftOpsResource
from assets.sensors import gate_partition, partition_key_for
from assets.updates import demo_dataset, eval_results, sdft_checkpoint


def dagster_runner(instance: dg.DagsterInstance, sdft_ops: SdftOpsResource):
    """runner(dataset) -> UpdateOutcome, through the Dagster assets and the gate."""
    from sdft_ops.pipeline import outcome_of

    def run(dataset):
        existing = set(instance.get_dynamic_partitions(domain_updates.name))
        key = partition_key_for(sdft_ops.submission(dataset.domains[0]), existing)
        dataset.write_jsonl(sdft_ops.submission(key))
        instance.add_dynamic_partitions(domain_updates.name, [key])
        result = dg.materialize([demo_dataset, sdft_checkpoint, eval_results], partition_key=key,
                                instance=instance, resources={"sdft_ops": sdft_ops},
                                raise_on_error=False)
        if not result.success and not result.get_asset_check_evaluations():
            raise RuntimeError(f"update {key} failed; see the run in the Dagster UI")
        event = gate_partition(instance, key, result.run_id, sdft_ops)
        if event is not None:
            instance.report_runless_asset_event(event)
        return outcome_of(key, sdft_ops.data_home())

    return run


def main(config_path: str = "configs/demo.yaml") -> int:
    from sdft_ops.demo import run_chain, summary_lines

    sdft_ops = SdftOpsResource(config_path=config_path)
    cfg = sdft_ops.settings()
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        outcomes, matrix, plot = run_chain(dagster_runner(instance, sdft_ops), cfg,
                                           sdft_ops.data_home())
    for line in summary_lines(outcomes, matrix, plot, sdft_ops.registry().tracking_uri):
        print(line)
    print(f"pipeline time: {time.perf_counter() - started:.0f} s   (then: make dev → "
          "http://127.0.0.1:3000 shows these runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
