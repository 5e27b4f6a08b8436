"""`make demo` (`make demo-full`): the chain of `configs/demo_chain.yaml` (`_full.yaml`) through the
Dagster job, in process, on the instance in $DAGSTER_HOME — so `make dev` shows the same runs,
checks and promotions after.

Each update: add its partition, materialize demo_dataset → sdft_checkpoint → eval_results (with
the blocking checks) with that step's config, then gate it exactly as the gating sensor does.
Prints the chain summary and writes the chain's `results` (benchmarks/results/demo.json).
"""

import sys
import time

import dagster as dg
import yaml

from assets.partitions import domain_updates
from assets.resources import SdftOpsResource
from assets.sensors import gate_partition, partition_key_for
from assets.updates import demo_dataset, eval_results, sdft_checkpoint


# The demo prints its own progress lines and each update's gate verdict; Dagster's events stay in
# the run's log (the UI). A blocking check that fails (the rushed update's safety check) is an
# expected verdict, not a crash, so its step-failure trace stays there too; a run that fails for
# any other reason raises with the step's error below.
QUIET_RUN = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def dagster_runner(instance: dg.DagsterInstance, base: SdftOpsResource):
    """runner(dataset, cfg) -> UpdateOutcome, through the Dagster assets and the gate; the step's
    config reaches the assets as the resource's launchpad overrides."""
    from sdft_ops.pipeline import outcome_of

    def run(dataset, cfg):
        sdft_ops = SdftOpsResource(config_path=base.config_path, home=base.home, inbox=base.inbox,
                                   overrides_yaml=yaml.safe_dump(cfg.model_dump(mode="json")))
        existing = set(instance.get_dynamic_partitions(domain_updates.name))
        key = partition_key_for(sdft_ops.submission(dataset.domains[0]), existing)
        dataset.write_jsonl(sdft_ops.submission(key))
        instance.add_dynamic_partitions(domain_updates.name, [key])
        result = dg.materialize([demo_dataset, sdft_checkpoint, eval_results], partition_key=key,
                                instance=instance, resources={"sdft_ops": sdft_ops},
                                run_config=QUIET_RUN, raise_on_error=False)
        if not result.success and not result.get_asset_check_evaluations():
            errors = [e.step_failure_data.error for e in result.get_step_failure_events()]
            error = errors[0] if errors else None
            while error is not None and error.cause is not None:  # Dagster wraps the op's error
                error = error.cause
            cause = f": {error.message.strip().splitlines()[-1]}" if error is not None else ""
            raise RuntimeError(f"update {key} failed{cause}; the run {result.run_id} in the Dagster UI "
                               "(make dev) has the full trace")
        event = gate_partition(instance, key, result.run_id, sdft_ops)
        if event is not None:
            instance.report_runless_asset_event(event)
        return outcome_of(key, sdft_ops.data_home())

    return run


def main(chain_path: str = "configs/demo_chain.yaml") -> int:
    from sdft_ops.demo import DemoChain, finish, run_chain

    chain = DemoChain.from_yaml(chain_path)
    sdft_ops = SdftOpsResource(config_path=str(chain.folder / chain.config))
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        result = run_chain(dagster_runner(instance, sdft_ops), chain, sdft_ops.data_home())
    code = finish(*result, sdft_ops.registry(), started, chain.results_path())
    print("then: make dev → http://127.0.0.1:3000 shows these runs")
    return code


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
