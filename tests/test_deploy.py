"""The instance configs in deploy/ (and the root dagster.yaml) against the installed Dagster,
dagster-postgres and dagster-k8s (the same release family, pinned in pyproject.toml).

No Postgres server, Kubernetes cluster or Docker daemon here, and dagster-docker is not
installed. What is checked:

- the whole file against Dagster's instance schema (`dagster_instance_config`, what every Dagster
  process runs on load);
- the `InstanceRef` built from the file: the QueuedRunCoordinator rehydrated (its config checked
  against the class) and the queue/pool config the daemon would use;
- the storage section against `dagster_postgres.DagsterPostgresStorage.config_type()` and the k8s
  launcher against `dagster_k8s.K8sRunLauncher.config_type()`, the libraries' own schemas (no
  connection is made); the docker launcher against a transcription of dagster-docker's schema,
  plus docker-py's own argument builder for `container_kwargs`.
"""

import importlib.util
from pathlib import Path

import pytest
import yaml
from dagster import Array, Field, Permissive, Shape, StringSource
from dagster._check import CheckError
from dagster._config import validate_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import (ConcurrencyConfig, PoolGranularity,
                                          dagster_instance_config)
from dagster._core.instance.ref import InstanceRef
from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
VARIANTS = ["dagster.postgres.yaml", "dagster.k8s.yaml", "dagster.docker.yaml"]
LAUNCHERS = {"dagster.k8s.yaml": ("dagster_k8s", "K8sRunLauncher"),
             "dagster.docker.yaml": ("dagster_docker", "DockerRunLauncher")}
GPU_TAG = {"key": "sdft_ops/gpu", "value": "true", "limit": 1}
PG_ENV = {"username": "DAGSTER_PG_USERNAME", "password": "DAGSTER_PG_PASSWORD",
          "hostname": "DAGSTER_PG_HOST", "db_name": "DAGSTER_PG_DB"}

# Transcribed from dagster-docker's dagster_docker/utils.py DOCKER_CONFIG_SCHEMA (+ the container
# context schema it merges in).
DOCKER_RUN_LAUNCHER_SCHEMA = Shape({
    "image": Field(StringSource, is_required=False),
    "network": Field(StringSource, is_required=False),
    "registry": Field(Shape({"url": StringSource, "username": StringSource,
                             "password": StringSource}), is_required=False),
    "env_vars": Field([str], is_required=False),
    "container_kwargs": Field(Permissive(), is_required=False),
    "networks": Field(Array(StringSource), is_required=False),
})


def _raw(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def _validate_dict(config: dict, tmp_path: Path):
    """Dagster's own load-time validation of an instance config, from a file like any process."""
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    return dagster_instance_config(str(tmp_path))[0]


def _launcher_schema(module: str, cls: str):
    """The library's own config_type(); dagster-docker (not installed): its transcription."""
    if module == "dagster_docker" and importlib.util.find_spec(module) is None:
        return DOCKER_RUN_LAUNCHER_SCHEMA
    return getattr(importlib.import_module(module), cls).config_type()


def _queue_config(ref: InstanceRef) -> ConcurrencyConfig:
    """What the run-queue daemon uses: the rehydrated coordinator merged with `concurrency:`."""
    coordinator = ref.run_coordinator  # imports the class and checks its config against it
    assert isinstance(coordinator, QueuedRunCoordinator)
    return ConcurrencyConfig.from_concurrency_settings(ref.settings.get("concurrency", {}),
                                                       coordinator.get_run_queue_config())


# --- every file in deploy/ ---------------------------------------------------------------------

def test_the_three_variants_and_the_guide_exist():
    assert sorted(p.name for p in DEPLOY.glob("*.yaml")) == sorted(VARIANTS)
    guide = (DEPLOY / "README.md").read_text()
    for needle in [*VARIANTS, "DAGSTER_HOME", "DAGSTER_PG_PASSWORD", "tracking_uri",
                   "SDFT_OPS_HOME", 'pool="gpu"', "sdft_ops/gpu", "dagster_k8s", "dagster_docker"]:
        assert needle in guide, needle


@pytest.mark.parametrize("name", sorted(p.name for p in DEPLOY.glob("*.yaml")))
def test_validates_against_the_instance_schema(name):
    config, custom_class = dagster_instance_config(str(DEPLOY), config_filename=name)
    assert custom_class is None
    assert config["telemetry"] == {"enabled": False}
    pg = config["storage"]["postgres"]["postgres_db"]
    assert {key: pg[key] for key in PG_ENV} == {key: {"env": var} for key, var in PG_ENV.items()}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"


@pytest.mark.parametrize("name", VARIANTS)
def test_queue_and_gpu_pool_as_the_daemon_sees_them(name, tmp_path):
    ref = InstanceRef.from_dir(str(tmp_path), config_dir=str(DEPLOY), config_filename=name)
    assert (ref.storage_data.module_name, ref.storage_data.class_name) == (
        "dagster_postgres", "DagsterPostgresStorage")
    concurrency = _queue_config(ref)
    queue = concurrency.run_queue_config
    assert queue.tag_concurrency_limits == [GPU_TAG]
    assert queue.max_concurrent_runs >= 1
    pools = concurrency.pool_config
    assert pools.default_pool_limit == 1
    assert pools.pool_granularity == PoolGranularity.RUN
    assert ref.settings["run_monitoring"]["enabled"] is True


@pytest.mark.parametrize("name", VARIANTS)
def test_postgres_storage_against_dagster_postgres(name, tmp_path):
    from dagster_postgres import DagsterPostgresStorage

    ref = InstanceRef.from_dir(str(tmp_path), config_dir=str(DEPLOY), config_filename=name)
    data = ref.storage_data
    assert importlib.import_module(data.module_name).DagsterPostgresStorage is DagsterPostgresStorage
    result = validate_config(DagsterPostgresStorage.config_type(), yaml.safe_load(data.config_yaml))
    assert result.success, [e.message for e in result.errors]
    broken = yaml.safe_load(data.config_yaml)
    broken["postgres_db"]["hostnme"] = broken["postgres_db"].pop("hostname")
    assert not validate_config(DagsterPostgresStorage.config_type(), broken).success


@pytest.mark.parametrize("name", sorted(LAUNCHERS))
def test_launcher_section_names_its_library(name, tmp_path):
    module, cls = LAUNCHERS[name]
    ref = InstanceRef.from_dir(str(tmp_path), config_dir=str(DEPLOY), config_filename=name)
    assert (ref.run_launcher_data.module_name, ref.run_launcher_data.class_name) == (module, cls)
    if module == "dagster_k8s":  # installed: the class is the library's
        assert getattr(importlib.import_module(module), cls).__name__ == cls
    elif importlib.util.find_spec(module) is None:  # what the README says about dagster-docker
        with pytest.raises(CheckError, match=f"Couldn't import module {module}"):
            ref.run_launcher  # noqa: B018


def test_k8s_launcher_config():
    section = _raw("dagster.k8s.yaml")["run_launcher"]
    assert (section["module"], section["class"]) == ("dagster_k8s", "K8sRunLauncher")
    config = section["config"]
    result = validate_config(_launcher_schema("dagster_k8s", "K8sRunLauncher"), config)
    assert result.success, [e.message for e in result.errors]
    for key in ("job_namespace", "service_account_name", "instance_config_map", "dagster_home",
                "postgres_password_secret", "env_config_maps", "env_secrets"):
        assert config[key], key
    run_k8s = config["run_k8s_config"]
    assert run_k8s["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert run_k8s["pod_spec_config"]["node_selector"]
    # the shared data home is mounted in every run pod
    mounts = {m["name"]: m["mount_path"] for m in config["volume_mounts"]}
    assert {v["name"] for v in config["volumes"]} <= set(mounts)


def test_docker_launcher_config():
    section = _raw("dagster.docker.yaml")["run_launcher"]
    assert (section["module"], section["class"]) == ("dagster_docker", "DockerRunLauncher")
    config = section["config"]
    result = validate_config(_launcher_schema("dagster_docker", "DockerRunLauncher"), config)
    assert result.success, [e.message for e in result.errors]
    kwargs = config["container_kwargs"]
    # DockerRunLauncher's own rules (dagster_docker.utils.validate_docker_config)
    assert not {"image", "environment", "network"} & set(kwargs)
    assert not (config.get("network") and config.get("networks"))
    assert "DAGSTER_PG_PASSWORD" in config["env_vars"]
    assert kwargs["device_requests"][0]["capabilities"] == [["gpu"]]


def test_docker_container_kwargs_through_docker_py():
    """The launcher calls client.containers.create(image, command, ..., **container_kwargs)."""
    create_args = pytest.importorskip("docker.models.containers")._create_container_args
    kwargs = _raw("dagster.docker.yaml")["run_launcher"]["config"]["container_kwargs"]
    args = create_args(dict(image="sdft-ops:test", command=["dagster", "api", "execute_run"],
                            detach=True, environment={}, network="sdft_ops", version="1.44",
                            **kwargs))
    host = args["host_config"]
    assert host["DeviceRequests"] == [{"Driver": "nvidia", "Count": 1, "DeviceIDs": [],
                                       "Capabilities": [["gpu"]], "Options": {}}]
    assert host["Binds"] == ["sdft_ops_home:/data/sdft_ops:rw"]
    with pytest.raises(TypeError, match="device_request"):
        create_args(dict(image="x", version="1.44", device_request=kwargs["device_requests"]))


# --- the root dagster.yaml (the single-machine default) ------------------------------------------

def test_root_dagster_yaml_is_one_run_at_a_time(tmp_path):
    config, _ = dagster_instance_config(str(ROOT))
    assert config["telemetry"] == {"enabled": False}
    assert config["run_coordinator"]["config"]["max_concurrent_runs"] == 1
    ref = InstanceRef.from_dir(str(tmp_path), config_dir=str(ROOT))
    assert _queue_config(ref).run_queue_config.max_concurrent_runs == 1


# --- the checks can fail ----------------------------------------------------------------------

def _breaks(mutate, tmp_path, name="dagster.postgres.yaml"):
    config = _raw(name)
    mutate(config)
    with pytest.raises(DagsterInvalidConfigError):
        _validate_dict(config, tmp_path)


def test_a_valid_copy_passes(tmp_path):  # so the failures below are caused by the mutation
    assert _validate_dict(_raw("dagster.postgres.yaml"), tmp_path)["concurrency"]


def test_misspelled_top_level_key_fails(tmp_path):
    _breaks(lambda c: c.update(telemtry=c.pop("telemetry")), tmp_path)


def test_misspelled_postgres_key_fails(tmp_path):
    def typo(config):
        db = config["storage"]["postgres"]["postgres_db"]
        db["hostnme"] = db.pop("hostname")
    _breaks(typo, tmp_path)


def test_bad_pool_granularity_fails(tmp_path):
    _breaks(lambda c: c["concurrency"]["pools"].update(granularity="gpu"), tmp_path)


def test_tag_limits_under_run_coordinator_conflict_with_pools(tmp_path):
    """Why the limits live in concurrency.runs: Dagster refuses them in both places."""
    def move(config):
        config["run_coordinator"]["config"]["tag_concurrency_limits"] = [GPU_TAG]
    _breaks(move, tmp_path)


def test_misspelled_coordinator_key_fails_on_rehydration(tmp_path):
    config = _raw("dagster.postgres.yaml")
    config["run_coordinator"]["config"]["dequeue_interval_secs"] = 5
    _validate_dict(config, tmp_path)  # the instance schema lets a class's config through...
    ref = InstanceRef.from_dir(str(tmp_path))
    with pytest.raises(DagsterInvalidConfigError):
        ref.run_coordinator  # noqa: B018  ...the class's own schema does not


@pytest.mark.parametrize("name,key,renamed", [
    ("dagster.k8s.yaml", "run_k8s_config", "run_k8s_confg"),       # misspelled
    ("dagster.k8s.yaml", "instance_config_map", None),              # required, removed
    ("dagster.docker.yaml", "container_kwargs", "container_kwarg"),  # misspelled
])
def test_launcher_schema_catches_typos(name, key, renamed):
    module, cls = LAUNCHERS[name]
    config = dict(_raw(name)["run_launcher"]["config"])
    value = config.pop(key)
    if renamed:
        config[renamed] = value
    assert not validate_config(_launcher_schema(module, cls), config).success
