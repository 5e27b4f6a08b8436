"""Replay: mix demonstrations of the champion's lineage into a new update's training set.

`replay: {fraction, seed}` adds `round(fraction × len(train))` demonstrations drawn, without
replacement, from the training sets of every update in the current champion's lineage (the
champion, its parent, ... — the safety update included), read from `updates/<id>/train.jsonl`.
The draw is a seeded shuffle of the pool sorted by (update id, demonstration id), keyed by the
replay seed and the new data's content hash: the same champion and the same data always replay
the same demonstrations. Replayed ids (`replay:<update id>:<demo id>`) are recorded in the update
state and logged to its MLflow run. `kind_shares` stratifies the draw by the demonstrations'
`metadata.kind` (the safety domain's `refusal` / `benign`), or their domain where they have no
kind (an earlier domain update's demonstrations: `tooluse`): `{refusal: 0.5}` makes half of the
replayed demonstrations refusals, the rest drawn from the other kinds, and `{refusal: 0.5,
tooluse: 0.3}` also sets how much of an earlier domain a later update keeps seeing (a kind with
fewer demonstrations than its quota gives all it has). Under SDFT a replayed prompt is distilled like a new one,
with its own demonstration in the teacher's context (`learn_as: rollout`), or learned as its
demonstration without a rollout (`learn_as: demonstration`: no decode for half of a 1.0 replay);
under SFT it is one more label.

A lineage whose demonstration files are gone (another data home, a clean-up) would replay
nothing and still be gated and promoted as if it had: with `fraction` > 0 an empty pool is an
error naming the missing files (`missing: warn` logs that line and trains without replay), and a
pool missing some of them a warning. An update with no champion yet has no lineage: nothing to
replay, and nothing missing.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sdft_ops.data import Demonstration, load_demonstrations

log = logging.getLogger(__name__)
REPLAY_PREFIX = "replay:"


class ReplayConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    fraction: float = Field(0.0, ge=0.0, le=4.0, description="replayed / new demonstrations")
    seed: int = 0
    kind_shares: dict[str, float] = Field(
        default_factory=dict, description="metadata.kind (else the domain) → share of the replayed "
        "demonstrations")
    learn_as: Literal["rollout", "demonstration"] = Field(
        "rollout", description="under SDFT, rollout: a replayed prompt is distilled like a new "
        "one; demonstration: it is learned as its recorded demonstration (an answer the lineage "
        "was trained on), never rolled out, so the replayed rows cost no decode")
    # an empty pool under fraction > 0: without this the update trains with no replay at all
    # and is gated and promoted as if it had replayed its lineage (issue 33)
    missing: Literal["error", "warn"] = Field(
        "error", description="the champion's lineage has no demonstration file left to replay "
        "(fraction > 0): error stops the update before training; warn logs the missing files "
        "and trains without replay")

    @field_validator("kind_shares")
    @classmethod
    def _shares_sum_to_at_most_one(cls, shares: dict[str, float]) -> dict[str, float]:
        if any(not 0.0 < v <= 1.0 for v in shares.values()) or sum(shares.values()) > 1.0:
            raise ValueError(f"replay.kind_shares must be in (0, 1] and sum to <= 1, got {shares}")
        return shares


def _lineage_files(registry, home: Path, champion: str) -> list[tuple[str, Path]]:
    """(update id, its train.jsonl) of each version in `champion`'s lineage, champion first."""
    from sdft_ops.registry import TAG_UPDATE_ID

    files = []
    for version in registry.lineage(champion):
        update_id = registry.get_version(version).tags.get(TAG_UPDATE_ID) or f"<version {version}>"
        files.append((update_id, Path(home) / "updates" / update_id / "train.jsonl"))
    return files


def _read_pool(files: Sequence[tuple[str, Path]]) -> list[Demonstration]:
    pool = []
    for update_id, path in files:
        if path.is_file():
            pool += [d.model_copy(update={"id": f"{REPLAY_PREFIX}{update_id}:{d.id}"})
                     for d in load_demonstrations(path).records]
    return sorted(pool, key=lambda d: d.id)


def lineage_pool(registry, home: Path, champion: str | None) -> list[Demonstration]:
    """Every training demonstration of the updates in `champion`'s lineage, ids prefixed with
    their update; empty without a champion. A version whose update folder is gone (trained in
    another data home) contributes nothing (`replay_pool` says so)."""
    return [] if champion is None else _read_pool(_lineage_files(registry, home, champion))


def replay_pool(registry, home: Path, champion: str | None,
                cfg: ReplayConfig) -> list[Demonstration]:
    """What an update may replay: `lineage_pool`, or nothing at `fraction` 0. An empty pool for
    a lineage whose files are gone is a ValueError (`missing: error`) or a warning (`warn`); a
    pool missing some of them, a warning."""
    if not cfg.fraction or champion is None:
        return []
    files = _lineage_files(registry, home, champion)
    pool = _read_pool(files)
    missing = [str(path) for _, path in files if not path.is_file()]
    if not missing:
        return pool
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    if pool:
        log.warning("replay: %d of the champion's lineage demonstration files are missing (%s); "
                    "replaying from the rest", len(missing), shown)
        return pool
    lost = (f"none of the demonstration files of champion v{champion}'s lineage is left: "
            f"missing {shown}")
    if cfg.missing == "error":
        raise ValueError(f"replay.fraction is {cfg.fraction} but {lost}. Restore them (run in the "
                         "data home that trained them), or set replay: {missing: warn} to train "
                         "without replay, or replay: {fraction: 0}")
    log.warning("replay: %s; training without replay (replay.missing: warn)", lost)
    return []


def draw_replay(pool: Sequence[Demonstration], n_new: int, cfg: ReplayConfig,
                data_hash: str) -> list[Demonstration]:
    """The replayed demonstrations for an update of `n_new` demonstrations hashing to `data_hash`."""
    n = min(len(pool), round(cfg.fraction * n_new))
    if n == 0:
        return []
    order = list(range(len(pool)))
    random.Random(f"{cfg.seed}:{data_hash}").shuffle(order)
    if not cfg.kind_shares:
        return [pool[i] for i in sorted(order[:n])]
    # stratified: the same seeded order, each listed kind up to its quota, the others up to the rest
    quota = {kind: round(share * n) for kind, share in cfg.kind_shares.items()}
    rest, chosen = n - sum(quota.values()), []
    for i in order:
        kind = pool[i].metadata.get("kind") or pool[i].domain
        if quota.get(kind, 0) > 0:
            quota[kind] -= 1
        elif kind in quota or rest == 0:
            continue
        else:
            rest -= 1
        chosen.append(i)
    return [pool[i] for i in sorted(chosen)]
