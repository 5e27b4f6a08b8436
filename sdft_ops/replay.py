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
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sdft_ops.data import Demonstration, load_demonstrations

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

    @field_validator("kind_shares")
    @classmethod
    def _shares_sum_to_at_most_one(cls, shares: dict[str, float]) -> dict[str, float]:
        if any(not 0.0 < v <= 1.0 for v in shares.values()) or sum(shares.values()) > 1.0:
            raise ValueError(f"replay.kind_shares must be in (0, 1] and sum to <= 1, got {shares}")
        return shares


def lineage_pool(registry, home: Path, champion: str | None) -> list[Demonstration]:
    """Every training demonstration of the updates in `champion`'s lineage, ids prefixed with
    their update; empty without a champion. A version whose update folder is gone (trained in
    another data home) contributes nothing."""
    from sdft_ops.registry import TAG_UPDATE_ID

    if champion is None:
        return []
    pool = []
    for version in registry.lineage(champion):
        update_id = registry.get_version(version).tags.get(TAG_UPDATE_ID)
        path = Path(home) / "updates" / str(update_id) / "train.jsonl"
        if update_id and path.is_file():
            pool += [d.model_copy(update={"id": f"{REPLAY_PREFIX}{update_id}:{d.id}"})
                     for d in load_demonstrations(path).records]
    return sorted(pool, key=lambda d: d.id)


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
