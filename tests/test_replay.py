"""Replay's draw on its own (the pipeline test covers lineage, recording and MLflow)."""

import pytest
from pydantic import ValidationError

from sdft_ops.data import Demonstration
from sdft_ops.replay import ReplayConfig, draw_replay


def _pool(n_refusal: int, n_benign: int) -> list[Demonstration]:
    kinds = ["refusal"] * n_refusal + ["benign"] * n_benign
    return [Demonstration(id=f"replay:safety:{i:04d}", prompt=f"q{i}", demonstration=f"a{i}",
                          domain="safety", metadata={"kind": kind}) for i, kind in enumerate(kinds)]


def test_kind_shares_set_the_replayed_mix_deterministically():
    pool = _pool(25, 75)  # the safety domain's mix: a quarter refusals
    cfg = ReplayConfig(fraction=1.0, kind_shares={"refusal": 0.5})
    drawn = draw_replay(pool, 40, cfg, "hash-a")
    kinds = [d.metadata["kind"] for d in drawn]
    assert len(drawn) == 40 and kinds.count("refusal") == 20 and kinds.count("benign") == 20
    assert [d.id for d in draw_replay(pool, 40, cfg, "hash-a")] == [d.id for d in drawn]
    assert [d.id for d in draw_replay(pool, 40, cfg, "hash-b")] != [d.id for d in drawn]
    plain = draw_replay(pool, 40, ReplayConfig(fraction=1.0), "hash-a")
    assert [d.metadata["kind"] for d in plain].count("refusal") < 20  # unstratified: ~a quarter


def test_a_kind_short_of_its_quota_gives_all_it_has_and_the_rest_stays_the_rest():
    drawn = draw_replay(_pool(5, 95), 40, ReplayConfig(fraction=1.0, kind_shares={"refusal": 0.5}), "h")
    kinds = [d.metadata["kind"] for d in drawn]
    assert kinds.count("refusal") == 5 and kinds.count("benign") == 20


def test_an_earlier_domain_without_kinds_takes_its_share_by_its_domain_name():
    """A later domain update replays the lineage: the safety demonstrations (kinds) and an earlier
    domain's (no kind); a share keyed by that domain sets how much of it is replayed."""
    tooluse = [Demonstration(id=f"replay:tooluse:{i:04d}", prompt=f"t{i}", demonstration=f"c{i}",
                             domain="tooluse") for i in range(60)]
    pool = sorted(_pool(10, 60) + tooluse, key=lambda d: d.id)
    drawn = draw_replay(pool, 40, ReplayConfig(fraction=1.0, kind_shares={"refusal": 0.25,
                                                                           "tooluse": 0.5}), "h")
    domains = [d.domain for d in drawn]
    kinds = [d.metadata.get("kind") for d in drawn]
    assert domains.count("tooluse") == 20 and kinds.count("refusal") == 10 and kinds.count("benign") == 10
    unkeyed = draw_replay(pool, 40, ReplayConfig(fraction=1.0, kind_shares={"refusal": 0.25}), "h")
    assert [d.domain for d in unkeyed].count("tooluse") < 20  # drawn with the benign, by chance


@pytest.mark.parametrize("shares", [{"refusal": 0.0}, {"refusal": 1.5}, {"refusal": 0.6, "benign": 0.6}])
def test_kind_shares_out_of_range_are_refused(shares):
    with pytest.raises(ValidationError, match="kind_shares"):
        ReplayConfig(fraction=1.0, kind_shares=shares)
