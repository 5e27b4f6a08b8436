"""What ties a registered version to its weights and to the report it was gated on.

* `identity_check`: the gate's check that a report scored the candidate version's weights
  (`EvalReport.model_sha256` equals the version's `sdft_ops.weights_sha256`) and is the report
  file the version recorded at evaluation (`sdft_ops.report_sha256`): a report edited after it
  was written, scores and summaries alike, fails it. `with_identity` adds it to a decision.
* `candidate_version`: an update's registered version for given weights, found again after a
  crash between registering it and recording it in `state.json` (so a rerun never registers a
  second one); the update's other versions that no registry action settled (not in the ledger:
  trained from an earlier champion before the update was killed, or gated but killed before
  the alias moved) are marked `superseded` and lose the `candidate` alias.
* `verify_version`: `sdft-ops verify VERSION` — the recorded hash against the version's files
  (its folder in the data home and its registered artifact), one line.

The hash and the tags: `sdft_ops.weights_identity`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from sdft_ops.gate import GLOBAL, GateDecision, RuleCheck
from sdft_ops.policy_package import CANDIDATE
from sdft_ops.registry import (
    TAG_GATE_VERDICT,
    TAG_MODEL_DIR,
    TAG_PARENT_VERSION,
    TAG_UPDATE_ID,
    NO_PARENT,
    PolicyRegistry,
)
from sdft_ops.weights_identity import (
    SHORT,
    TAG_REPORT_SHA256,
    TAG_WEIGHTS_SHA256,
    report_sha256,
    weights_sha256,
)

SUPERSEDED = "superseded"  # gate_verdict of a pending version whose update was retrained


def identity_check(report_path: Path, version: str, tags: dict[str, str]) -> RuleCheck:
    """Passed iff the report at `report_path` scored the weights `version` holds and is the
    report recorded for it (see module docstring)."""
    held, recorded = tags.get(TAG_WEIGHTS_SHA256), tags.get(TAG_REPORT_SHA256)
    try:
        scored = json.loads(Path(report_path).read_text(encoding="utf-8")).get("model_sha256")
        digest = report_sha256(report_path)
    except (OSError, ValueError, AttributeError) as e:
        scored, digest = None, f"unreadable ({' '.join(str(e).split())})"
    if held is None or recorded is None:
        note = (f"version {version} records no weights or report hash (registered before they "
                "were recorded); re-run the update's evaluation to register it with them")
    elif scored != held:
        note = (f"the report scored weights {str(scored)[:SHORT]} but version {version} holds "
                f"{held[:SHORT]}; re-run the evaluation of the candidate version")
    elif digest != recorded:
        note = (f"the report is not the one recorded for version {version} (sha256 "
                f"{digest[:SHORT]}, recorded {recorded[:SHORT]}): it was changed after the "
                "evaluation; re-run the evaluation")
    else:
        return RuleCheck(suite=GLOBAL, rule="identity", passed=True,
                         note=f"report and version {version} hold weights {held[:SHORT]}")
    return RuleCheck(suite=GLOBAL, rule="identity", passed=False, note=note)


def with_identity(decision: GateDecision, check: RuleCheck) -> GateDecision:
    """`decision` with the identity `check` added (a failed one turns it into a reject)."""
    context = decision.model_dump(exclude={"promote", "checks", "reasons", "warnings",
                                           "decided_at"})
    return GateDecision.from_checks([check, *decision.checks], **context)


def candidate_version(registry: PolicyRegistry, update_id: str, weights: str,
                      parent_version: str | None) -> str | None:
    """The unsettled version `update_id` registered for `weights` trained from `parent_version`,
    or None; its other unsettled versions are marked superseded (see module docstring)."""
    parent_tag = NO_PARENT if parent_version is None else str(parent_version)
    settled, found = {e.version for e in registry.history()}, None
    for mv in registry.client.search_model_versions(f"name = '{registry.name}'"):
        tags = mv.tags
        if (tags.get(TAG_UPDATE_ID) != update_id or str(mv.version) in settled
                or tags.get(TAG_GATE_VERDICT) == SUPERSEDED):
            continue
        if tags.get(TAG_WEIGHTS_SHA256) == weights and tags.get(TAG_PARENT_VERSION) == parent_tag:
            found = str(mv.version)
            continue
        registry.client.set_model_version_tag(registry.name, str(mv.version), TAG_GATE_VERDICT,
                                              SUPERSEDED)
        if registry.candidate_version() == str(mv.version):
            registry.client.delete_registered_model_alias(registry.name, CANDIDATE)
    return found


def _artifact_folder(registry: PolicyRegistry, version: str, tmp: str) -> Path:
    """The version's registered model folder: read in place from a local artifact store, else
    downloaded into `tmp`."""
    import mlflow

    uri = registry.client.get_model_version_download_uri(registry.name, version)
    parts = urlparse(uri)
    if parts.scheme in ("", "file") and Path(parts.path).is_dir():
        root = Path(parts.path)
    else:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp,
                                                        tracking_uri=registry.tracking_uri))
    return next(root.rglob("config.json")).parent


def verify_version(registry: PolicyRegistry, version: str) -> tuple[bool, str]:
    """(ok, one line): `version`'s recorded weights hash against its files."""
    tags = registry.get_version(version).tags
    recorded = tags.get(TAG_WEIGHTS_SHA256)
    if recorded is None:
        return False, (f"version {version}: no weights hash recorded (registered before sdft-ops "
                       "recorded one); nothing to verify against")
    places = []
    folder = tags.get(TAG_MODEL_DIR)
    if folder and Path(folder).is_dir():
        places.append(("its model folder " + folder, Path(folder)))
    with tempfile.TemporaryDirectory(prefix="sdft-ops-verify-") as tmp:
        places.append(("its registered artifact", _artifact_folder(registry, version, tmp)))
        wrong = [f"{name} holds {found[:SHORT]}" for name, path in places
                 if (found := weights_sha256(path)) != recorded]
    if wrong:
        return False, (f"version {version}: MISMATCH, recorded weights {recorded[:SHORT]} but "
                       f"{'; '.join(wrong)}: the files were changed after registration; do not "
                       "serve it, re-register the update")
    return True, (f"version {version}: OK, weights {recorded[:SHORT]} match "
                  f"{' and '.join(name for name, _ in places)}")
