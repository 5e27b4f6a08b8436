"""The policy registry: candidate versions in the MLflow Model Registry, the `champion` alias, and
a durable promotion ledger (MLflow keeps no history of alias moves).

Registration (`PolicyRegistry.register_candidate`) takes a model folder written by
`sdft_ops.engine.checkpoint.save_trained_model`, saves it as an MLflow **pyfunc** model whose
code is `sdft_ops/policy_model.py` (models-from-code: nothing pickled; the folder is the artifact
`model_dir`, loaded with transformers, safetensors only, `trust_remote_code=False`), with explicit
`pip_requirements` (torch, transformers, safetensors, pinned to the installed versions), logs it as
an MLflow 3 logged model of a run, and registers it as a new version of `name` (default
`sdft-ops-policy`) with the alias `candidate`. Version tags: `sdft_ops.parent_version`,
`sdft_ops.dataset_hash`, `sdft_ops.method`, `sdft_ops.base_model`, `sdft_ops.code_version`
(git commit, absent outside a checkout), `sdft_ops.weights_sha256` (`weights_identity`: a gated
promotion needs the decision's judged hash to be this one) and `sdft_ops.gate_verdict`
(`pending` until `promote`/`reject` set it; a reject with a decision adds `sdft_ops.gate_reasons`).

Every action is recorded in the promotion ledger (`sdft_ops.ledger`,
`<home>/registry/<name>.ledger.jsonl`); replaying it gives the champion stack, so `rollback`
returns to the champion before the current one.

Concurrency: every action runs read-check-move-append under an exclusive `fcntl.flock` on
`<ledger>.lock`, so racing promotions (threads or processes sharing the data home) leave exactly
one champion and a consistent ledger. A promotion whose expected champion (by default the
candidate's parent version) is no longer the champion is refused as stale
(`StalePromotionError`). If the `champion` alias and the ledger disagree (the alias was moved
outside sdft-ops, or a crash hit between the two writes) every gated action refuses until a
`manual_promote` re-establishes the champion. With a remote tracking server the lock and ledger
still live in the local data home: processes that promote must share it.

    registry = PolicyRegistry(home=home)                 # or PolicyRegistry("http://mlflow:5000")
    v = registry.register_candidate(folder, parent_version="3", dataset_hash=h, method="sdft",
                                    base_model="smollm2-135m-instruct")
    decision = decide(report, policy, parent_version="3", champion_version=registry.champion_version())
    registry.promote(v, "gate passed", decision=decision)   # StalePromotionError if the champion moved
    load_champion(tracking_uri=registry.tracking_uri).predict(["Hello"])
"""

from __future__ import annotations

import getpass
import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sdft_ops.home import data_home
from sdft_ops.ledger import (  # noqa: F401  (RegistryError, StalePromotionError: part of this API)
    Action,
    LedgerEntry,
    PromotionLedger,
    RegistryError,
    StalePromotionError,
    champion_stack,
)
from sdft_ops.settings import TrackingConfig
from sdft_ops.mlflow_store import ensure_experiment, ready_tracking_uri
from sdft_ops.policy_package import (  # noqa: F401  (check_model_folder, load_champion: this module's API too)
    CANDIDATE,
    CHAMPION,
    POLICY_CODE,
    check_model_folder,
    load_champion,
    not_found,
    pip_requirements,
    policy_signature,
)
from sdft_ops.tracking import DEFAULT_EXPERIMENT, TAG_CODE_VERSION, TAG_PARENT_VERSION, code_version
from sdft_ops.tracking_recovery import download_version
from sdft_ops.weights_identity import TAG_WEIGHTS_SHA256, check_judged, model_ref
from sdft_ops.weights_identity import weights_sha256 as hash_weights

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.pyfunc import PyFuncModel

    from sdft_ops.gate import GateDecision
    from sdft_ops.models import ModelSpec
    from sdft_ops.settings import UpdateConfig
    from sdft_ops.update_state import Parent

DEFAULT_MODEL_NAME = TrackingConfig.model_fields["model_name"].default  # the schema owns defaults
NO_PARENT = "none"  # parent_version tag of a version with no parent (the first one)

TAG_DATASET_HASH = "sdft_ops.dataset_hash"
TAG_METHOD = "sdft_ops.method"
TAG_BASE_MODEL = "sdft_ops.base_model"
TAG_GATE_VERDICT = "sdft_ops.gate_verdict"
TAG_GATE_REASONS = "sdft_ops.gate_reasons"
TAG_ROLLED_BACK = "sdft_ops.rolled_back_at"
TAG_MODEL_DIR = "sdft_ops.model_dir"  # the trained folder in the data home (loaded without a download)
TAG_UPDATE_ID = "sdft_ops.update_id"
TAG_DOMAIN = "sdft_ops.domain"
MAX_TAG_VALUE_LENGTH = 5000  # MLflow's limit for model version tag values

Method = Literal["sdft", "sft"]


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return os.environ.get("USER") or "unknown"


class _Parent:  # sentinel type: "the candidate's parent_version tag"
    def __repr__(self) -> str:
        return "PARENT"


PARENT = _Parent()


class PolicyRegistry:
    """Register, promote, reject and roll back versions of one registered model (see module docstring)."""

    def __init__(self, tracking_uri: str | None = None, *, name: str = DEFAULT_MODEL_NAME,
                 home: str | os.PathLike | None = None, experiment: str = DEFAULT_EXPERIMENT,
                 ledger_path: str | os.PathLike | None = None, user: str | None = None,
                 lock_timeout_s: float = 60.0) -> None:
        from mlflow import MlflowClient

        if not name:
            raise ValueError("registered model name must be non-empty, e.g. 'sdft-ops-policy'")
        self.name = name
        self.home = home
        self.experiment = experiment
        self.tracking_uri = ready_tracking_uri(tracking_uri, home)
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        path = ledger_path or data_home(home) / "registry" / f"{_slug(name)}.ledger.jsonl"
        self.ledger = PromotionLedger(path, lock_timeout_s=lock_timeout_s)
        self.user = user or _user()

    @classmethod
    def from_config(cls, cfg: "UpdateConfig", home: str | os.PathLike | None = None) -> "PolicyRegistry":
        """The registry an update config's `tracking` section names (the one place it is built)."""
        return cls(cfg.tracking.tracking_uri, name=cfg.tracking.model_name, home=home,
                   experiment=cfg.tracking.experiment)

    # ------------------------------------------------------------------ reading

    def _alias(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException as e:
            if not_found(e):
                return None
            raise

    def champion_version(self) -> str | None:
        """The version the `champion` alias points at, or None before the first promotion."""
        return self._alias(CHAMPION)

    def candidate_version(self) -> str | None:
        return self._alias(CANDIDATE)

    def get_version(self, version: str) -> "ModelVersion":
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException as e:
            if not_found(e):
                raise ValueError(f"{self.name} has no version {version!r} in {self.tracking_uri}; "
                                 "list versions with `mlflow models` or the UI") from e
            raise

    def parent_for_update(self, spec: "ModelSpec") -> "Parent":
        """What the next update trains from: the champion's model folder, else the base model."""
        from sdft_ops.models import resolve_model_path
        from sdft_ops.update_state import Parent

        version = self.champion_version()
        if version is None:
            return Parent(version=None, model_dir=resolve_model_path(spec), ref=f"base:{spec.name_or_path}")
        mv = self.get_version(version)
        model_dir = mv.tags.get(TAG_MODEL_DIR)
        if not model_dir or not Path(model_dir).is_dir():  # fetched from this store, into the home
            model_dir = str(download_version(self.client, self.name, version, self.tracking_uri,
                                             self.home))
        # the identity it was scored under as a candidate, so its cached results are reused
        update_id, sha256 = mv.tags.get(TAG_UPDATE_ID), mv.tags.get(TAG_WEIGHTS_SHA256)
        ref = model_ref(update_id, sha256) if update_id else f"{self.name}/v{version}"
        return Parent(version=version, model_dir=model_dir, ref=ref, run_id=mv.run_id,
                      weights_sha256=sha256)

    def parent_of(self, version: str) -> str | None:
        parent = self.get_version(version).tags.get(TAG_PARENT_VERSION, NO_PARENT)
        return None if parent == NO_PARENT else parent

    def lineage(self, version: str) -> list[str]:
        """[version, its parent, grandparent, ...] from the parent_version tags."""
        chain = [str(version)]
        while (parent := self.parent_of(chain[-1])) is not None and parent not in chain:
            chain.append(parent)
        return chain

    def run_id_of(self, version: str) -> str | None:
        """The run that registered `version` (pass it as `parent_run_id` to the next update)."""
        return self.get_version(version).run_id

    def history(self) -> list[LedgerEntry]:
        """Every ledger entry, oldest first."""
        return self.ledger.read()

    # ------------------------------------------------------------------ registering

    def _ensure_registered_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException as e:
            if not not_found(e):
                raise
            try:
                self.client.create_registered_model(
                    self.name, description="sdft-ops policy; aliases: candidate, champion")
            except MlflowException as e2:  # created concurrently
                if getattr(e2, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                    raise

    def register_candidate(self, model_dir: str | os.PathLike, *, parent_version: str | None,
                           dataset_hash: str, method: Method, base_model: str, run_id: str | None = None,
                           commit: str | None = "auto", tags: Mapping[str, str] | None = None,
                           description: str | None = None,
                           weights_sha256: str | None = None) -> str:
        """Log `model_dir` as a pyfunc model and register it as a new version aliased `candidate`.

        `run_id`: the update's MLflow run (the model is logged there); None creates a short
        `register` run. `commit`: the code version tag; "auto" = `git rev-parse HEAD`, None = none.
        `weights_sha256`: the folder's recorded hash (tag `sdft_ops.weights_sha256`), else hashed.
        Returns the new version number as a string.
        """
        import mlflow
        from mlflow.entities import LoggedModelStatus

        folder = check_model_folder(model_dir).resolve()
        if method not in ("sdft", "sft"):
            raise ValueError(f"method must be 'sdft' or 'sft', got {method!r}")
        if not dataset_hash or not base_model:
            raise ValueError("dataset_hash and base_model must be non-empty: they are the version's provenance "
                             "(DemoDataset.content_hash() gives the dataset hash; base_model is the "
                             "ModelSpec name_or_path)")
        if parent_version is not None:
            self.get_version(str(parent_version))  # raises with the fix if it does not exist
        self._ensure_registered_model()
        own_run = run_id is None
        if own_run:
            experiment_id = ensure_experiment(self.client, self.experiment, self.tracking_uri, self.home)
            run_id = self.client.create_run(experiment_id, run_name=f"register-{self.name}").info.run_id
        else:
            experiment_id = self.client.get_run(run_id).info.experiment_id
        commit = code_version() if commit == "auto" else commit
        version_tags = {TAG_PARENT_VERSION: NO_PARENT if parent_version is None else str(parent_version),
                        TAG_DATASET_HASH: dataset_hash, TAG_METHOD: method, TAG_BASE_MODEL: base_model,
                        TAG_GATE_VERDICT: "pending", **({TAG_CODE_VERSION: commit} if commit else {}),
                        TAG_WEIGHTS_SHA256: weights_sha256 or hash_weights(folder),
                        **dict(tags or {})}
        logged = self.client.create_logged_model(experiment_id, name="policy", source_run_id=run_id,
                                                 tags={k: v for k, v in version_tags.items()
                                                       if k != TAG_GATE_VERDICT})
        try:
            with tempfile.TemporaryDirectory(prefix="sdft-ops-pyfunc-") as tmp, warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # type-hint / input-example nags
                mlflow.pyfunc.save_model(Path(tmp) / "policy", python_model=str(POLICY_CODE),
                                         artifacts={"model_dir": str(folder)},
                                         pip_requirements=pip_requirements(), signature=policy_signature(),
                                         metadata={"sdft_ops_model_name": self.name})
                self.client.log_model_artifacts(logged.model_id, str(Path(tmp) / "policy"))
        except BaseException:
            self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
            raise
        self.client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
        version = self.client.create_model_version(
            self.name, source=logged.artifact_location, run_id=run_id, model_id=logged.model_id,
            tags=version_tags, description=description).version
        self.client.set_registered_model_alias(self.name, CANDIDATE, str(version))
        if own_run:
            self.client.set_terminated(run_id, "FINISHED")
        return str(version)

    # ------------------------------------------------------------------ moving the champion

    def _check_consistent(self, stack: list[str], current: str | None) -> None:
        recorded = stack[-1] if stack else None
        if recorded != current:
            raise RegistryError(
                f"the {CHAMPION!r} alias of {self.name} points at version {current} but the ledger "
                f"{self.ledger.path} says {recorded}; the alias was moved outside sdft-ops or a crash "
                "interrupted a promotion — re-establish the champion with "
                "promote(version, reason, manual=True)")

    def _set_champion(self, version: str | None) -> None:
        if version is None:
            self.client.delete_registered_model_alias(self.name, CHAMPION)
        else:
            self.client.set_registered_model_alias(self.name, CHAMPION, version)

    def promote(self, version: str, reason: str, *, manual: bool = False,
                expected_champion: str | None | _Parent = PARENT,
                decision: "GateDecision | None" = None) -> LedgerEntry:
        """Move `champion` to `version` and record it.

        Gated (manual=False): refused if `decision` rejected, if the ledger and the alias disagree,
        or if the current champion is not `expected_champion` (default: the version's parent
        tag) → `StalePromotionError`. Manual: recorded as `manual_promote`; checks the expected
        champion only when one is passed explicitly.
        """
        version = str(version)
        if not reason.strip():
            raise ValueError("give a reason for the promotion (it goes into the ledger)")
        if decision is not None and not decision.promote and not manual:
            raise RegistryError(f"the gate rejected version {version}: {'; '.join(decision.reasons)}; "
                                "promote(..., manual=True) overrides it and is recorded as manual_promote")
        held = self.get_version(version).tags
        if decision is not None and not manual:
            check_judged(decision, version, held)
        if isinstance(expected_champion, _Parent):
            check, expected = not manual, (None if manual else self.parent_of(version))
        else:
            check, expected = True, expected_champion
        action: Action = "manual_promote" if manual else "promote"
        with self.ledger.locked() as ledger:
            current = self._alias(CHAMPION)
            if not manual:
                self._check_consistent(champion_stack(ledger.entries), current)
            if current == version:
                raise RegistryError(f"version {version} is already the champion of {self.name}")
            if check and expected != current:
                raise StalePromotionError(
                    f"stale promotion of version {version}: it expects champion {expected} but the "
                    f"champion is now {current}; retrain from the current champion, or "
                    "promote(..., manual=True) to override")
            self._set_champion(version)
            try:
                entry = ledger.append(model_name=self.name, action=action, who=self.user, why=reason,
                                      version=version, from_version=current, to_version=version)
            except BaseException:
                self._set_champion(current)  # keep alias and ledger in step
                raise
        self.client.set_model_version_tag(self.name, version, TAG_GATE_VERDICT, action)
        return entry

    def reject(self, version: str, reason: str, *, decision: "GateDecision | None" = None) -> LedgerEntry:
        """Record a rejection; the champion stays; the `candidate` alias leaves `version`; with a
        `decision`, its failed checks are kept in the version tag `sdft_ops.gate_reasons`."""
        version = str(version)
        if not reason.strip():
            raise ValueError("give a reason for the rejection (it goes into the ledger)")
        self.get_version(version)
        with self.ledger.locked() as ledger:
            current = self._alias(CHAMPION)
            if current == version:
                raise RegistryError(f"version {version} is the champion; use rollback(reason) to retire it")
            entry = ledger.append(model_name=self.name, action="reject", who=self.user, why=reason,
                                  version=version, from_version=current, to_version=current)
        if self._alias(CANDIDATE) == version:
            self.client.delete_registered_model_alias(self.name, CANDIDATE)
        self.client.set_model_version_tag(self.name, version, TAG_GATE_VERDICT, "reject")
        if decision is not None and decision.reasons:
            reasons = "; ".join(decision.reasons)
            self.client.set_model_version_tag(self.name, version, TAG_GATE_REASONS,
                                              reasons[:MAX_TAG_VALUE_LENGTH])
        return entry

    def rollback(self, reason: str) -> LedgerEntry:
        """Move `champion` back to the champion before the current one (per the ledger) and record it."""
        if not reason.strip():
            raise ValueError("give a reason for the rollback (it goes into the ledger)")
        with self.ledger.locked() as ledger:
            stack = champion_stack(ledger.entries)
            current = self._alias(CHAMPION)
            self._check_consistent(stack, current)
            if len(stack) < 2:
                raise RegistryError(f"{self.name} has no earlier champion to roll back to "
                                    f"(ledger champions: {stack}); promote a version instead")
            target = stack[-2]
            self.get_version(target)
            self._set_champion(target)
            try:
                entry = ledger.append(model_name=self.name, action="rollback", who=self.user, why=reason,
                                      version=target, from_version=current, to_version=target)
            except BaseException:
                self._set_champion(current)
                raise
        self.client.set_model_version_tag(self.name, str(current), TAG_ROLLED_BACK, entry.when)
        return entry

    def set_gate_verdict(self, version: str, decision: "GateDecision") -> None:
        """Tag `version` with the gate's verdict (promote/reject) without moving anything."""
        self.client.set_model_version_tag(self.name, str(version), TAG_GATE_VERDICT, decision.verdict)

    def load_champion(self, dst_path: str | os.PathLike | None = None) -> "PyFuncModel":
        return load_champion(self.name, self.tracking_uri, home=self.home, dst_path=dst_path)
