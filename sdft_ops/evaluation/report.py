"""The evaluation report: one candidate's suite results, CIs and retention vs a reference model.

`build_report` is the only place statistics are computed: a percentile-bootstrap CI of every
candidate suite score (`metrics.bootstrap_ci`) and, for each suite scored by both models, a
paired `metrics.retention` against the reference (champion). The resulting `EvalReport` is a
frozen record: JSON round-trips exactly (non-finite floats are written as "NaN"/"Infinity"
strings so the file stays strict JSON), `save` is atomic, `to_markdown` renders a table and
`plot_retention` / `plot_accuracy_matrix` write PNGs (matplotlib's Agg canvas, no pyplot state).

    report = build_report("runs/42/final", results, reference_ref="champion", reference_results=ref)
    report.save(run_dir / "eval_report.json"); print(report.to_markdown())
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sdft_ops.evaluation.metrics import AccuracyMatrix, Retention, bootstrap_ci, retention
from sdft_ops.evaluation.types import SuiteResult

Results = Mapping[str, SuiteResult] | Iterable[SuiteResult]


class EvalReport(BaseModel):
    """Candidate results with 95% bootstrap CIs, and retention against an optional reference.

    `results[s]` / `reference_results[s]` are keyed by suite name; `score_ci[s]` is the CI of the
    candidate's mean score on s; `retention[s]` exists for every suite in both result sets.
    `seeds` records every seed used (`bootstrap`), `n_boot` the resample count.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    model_ref: str = Field(min_length=1)
    model_sha256: str | None = Field(None, description="weights_identity.weights_sha256 of the scored "
                                     "model folder; the gate ties it to the candidate version")
    reference_ref: str | None = None
    results: dict[str, SuiteResult] = Field(min_length=1)
    reference_results: dict[str, SuiteResult] = Field(default_factory=dict)
    score_ci: dict[str, tuple[float, float]]
    retention: dict[str, Retention] = Field(default_factory=dict)
    level: float = Field(0.95, gt=0.0, lt=1.0)
    n_boot: int = Field(ge=1)
    config: dict[str, Any] = Field(default_factory=dict)
    seeds: dict[str, int] = Field(default_factory=dict)
    created_at: str = Field(description="ISO-8601 UTC timestamp")
    code_version: str | None = None
    stopped_early: str | None = Field(
        None, description="why the other suites were not scored: a sequential test settled a "
        "drop (`eval.stop_at_first_reject`); the verdict cannot change, the report is partial")

    @model_validator(mode="after")
    def _consistent(self) -> "EvalReport":
        for field in ("results", "reference_results"):
            for key, result in getattr(self, field).items():
                if key != result.suite:
                    raise ValueError(f"{field}[{key!r}] holds suite {result.suite!r}; key each "
                                     "result by its own suite name")
        if set(self.score_ci) != set(self.results):
            raise ValueError(f"score_ci covers {sorted(self.score_ci)} but results are "
                             f"{sorted(self.results)}; build the report with build_report()")
        both = set(self.results) & set(self.reference_results)
        if set(self.retention) != both:
            raise ValueError(f"retention covers {sorted(self.retention)} but the suites scored by "
                             f"both models are {sorted(both)}; build the report with build_report()")
        if self.reference_results and self.reference_ref is None:
            raise ValueError("reference_results given without reference_ref; name the reference model")
        try:
            datetime.fromisoformat(self.created_at)
        except ValueError as e:
            raise ValueError(f"created_at {self.created_at!r} is not ISO-8601; use "
                             "datetime.now(timezone.utc).isoformat()") from e
        return self

    def suites(self) -> list[str]:
        """Candidate suites in insertion order, then suites only the reference has."""
        return list(self.results) + [s for s in self.reference_results if s not in self.results]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON atomically (temp file in the same folder + os.replace)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.model_dump_json(indent=2))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EvalReport":
        """Read a report written by `save`; unreadable or invalid files raise ValueError naming the file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read eval report {path}: {e}; check the path "
                             "(reports are written by EvalReport.save)") from e
        try:
            return cls.model_validate_json(text)
        except ValidationError as e:
            raise ValueError(f"{path} is not a valid eval report ({e.error_count()} problems):\n{e}\n"
                             "regenerate it with build_report(...).save(path)") from e

    def to_markdown(self) -> str:
        """A header naming both models, then one table row per suite (see module docstring)."""
        pct = f"{self.level:.0%}"
        lines = [f"# Evaluation: `{self.model_ref}`",
                 f"reference: `{self.reference_ref}`" if self.reference_ref else "reference: none",
                 *(["", f"**Stopped early:** {self.stopped_early}; the other suites were not scored."]
                   if self.stopped_early else []),
                 "",
                 f"| suite | metric | n | candidate score [{pct} CI] | reference score "
                 f"| retention ratio [{pct} CI] | Δ [{pct} CI] | McNemar p |",
                 "|---|---|---:|---|---|---|---|---:|"]
        for suite in self.suites():
            cand, ref = self.results.get(suite), self.reference_results.get(suite)
            shown = cand or ref
            assert shown is not None  # suites() only lists suites present somewhere
            arrow = "↑" if shown.higher_is_better else "↓"
            cells = [_md_escape(suite), f"{_md_escape(shown.metric)} {arrow}", str(len(shown.item_ids)),
                     f"{_num(cand.score)} {_ci(self.score_ci[suite])}" if cand else "—",
                     _num(ref.score) if ref else "—"]
            ret = self.retention.get(suite)
            if ret is None:
                cells += ["—", "—", "—"]
            else:
                cells += [f"{_num(ret.ratio)} {_ci(ret.ratio_ci)}",
                          f"{_num(ret.difference, signed=True)} {_ci(ret.difference_ci, signed=True)}",
                          "—" if ret.mcnemar_p is None else _p(ret.mcnemar_p)]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"{pct} percentile-bootstrap CIs, {self.n_boot} resamples, seeds {self.seeds}; "
                      "ratio and Δ are oriented so > 1 / > 0 means better than the reference."]
        return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _num(x: float, signed: bool = False) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _ci(ci: tuple[float, float], signed: bool = False) -> str:
    return f"[{_num(ci[0], signed)}, {_num(ci[1], signed)}]"


def _p(p: float) -> str:
    return "<0.001" if p < 1e-3 else f"{p:.3f}"


def _by_suite(results: Results | None, what: str) -> dict[str, SuiteResult]:
    if results is None:
        return {}
    items = list(results.items()) if isinstance(results, Mapping) else [(r.suite, r) for r in results]
    out: dict[str, SuiteResult] = {}
    for key, result in items:
        if key != result.suite:
            raise ValueError(f"{what}[{key!r}] holds suite {result.suite!r}; key results by suite name")
        if key in out:
            raise ValueError(f"{what}: suite {key!r} given twice; pass one result per suite")
        out[key] = result
    return out


def _code_version() -> str | None:
    try:
        return metadata.version("sdft-ops")
    except metadata.PackageNotFoundError:
        return None


def build_report(model_ref: str, results: Results, reference_ref: str | None = None,
                 reference_results: Results | None = None, config: dict[str, Any] | None = None,
                 seed: int = 0, n_boot: int = 2000, *, level: float = 0.95,
                 created_at: str | None = None, code_version: str | None = None,
                 stopped_early: str | None = None, model_sha256: str | None = None) -> EvalReport:
    """Compute per-suite bootstrap CIs and paired retention for suites present in both sets.

    `results` / `reference_results` are mappings suite → SuiteResult or plain iterables of
    SuiteResult. Every bootstrap uses `seed`, so the report is a deterministic function of its
    inputs apart from `created_at` (now, UTC, unless given) and `code_version` (the installed
    sdft-ops version unless given). Incomparable suite pairs raise ComparabilityError.
    `model_sha256`: the hash of the scored model's weights (`weights_identity`).
    """
    cand = _by_suite(results, "results")
    if not cand:
        raise ValueError("build_report needs at least one candidate SuiteResult")
    ref = _by_suite(reference_results, "reference_results")
    if ref and reference_ref is None:
        raise ValueError("reference_results given without reference_ref; name the reference model")
    return EvalReport(
        model_ref=model_ref, model_sha256=model_sha256, reference_ref=reference_ref, results=cand,
        reference_results=ref,
        score_ci={s: bootstrap_ci(r.scores, n_boot=n_boot, seed=seed, level=level) for s, r in cand.items()},
        retention={s: retention(cand[s], ref[s], n_boot=n_boot, seed=seed, level=level)
                   for s in cand if s in ref},
        level=level, n_boot=n_boot, config=dict(config or {}), seeds={"bootstrap": seed},
        created_at=created_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        code_version=code_version if code_version is not None else _code_version(),
        stopped_early=stopped_early)


# ---------------------------------------------------------------------------- plots


def _agg_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_retention(report: EvalReport, path: str | os.PathLike) -> Path:
    """Horizontal bar per suite of the retention ratio with its CI, and a line at ratio 1.0.

    Non-finite ratios are drawn as no bar (labelled in the tick); infinite CI ends are clipped
    to the plotted range.
    """
    if not report.retention:
        raise ValueError("report has no retention to plot; build it with reference_results")
    suites = list(report.retention)
    rets = [report.retention[s] for s in suites]
    finite = [v for r in rets for v in (r.ratio, *r.ratio_ci) if math.isfinite(v)]
    span = (min(finite + [1.0]), max(finite + [1.0]))
    ratios, err_low, err_high, labels = [], [], [], []
    for s, r in zip(suites, rets, strict=True):
        ok = math.isfinite(r.ratio)
        ratios.append(r.ratio if ok else 0.0)
        low, high = (min(max(v, span[0]), span[1]) for v in r.ratio_ci)  # nan stays nan
        has_ci = ok and not (math.isnan(low) or math.isnan(high))
        err_low.append(max(0.0, r.ratio - low) if has_ci else 0.0)
        err_high.append(max(0.0, high - r.ratio) if has_ci else 0.0)
        labels.append(s if ok else f"{s} (ratio {_num(r.ratio)})")

    fig = _agg_figure(7.0, 1.0 + 0.45 * len(suites))
    ax = fig.add_subplot()
    y = list(range(len(suites)))
    colors = ["tab:green" if v >= 1.0 else "tab:red" for v in ratios]
    ax.barh(y, ratios, xerr=[err_low, err_high], color=colors, alpha=0.8, capsize=4)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"retention ratio (> 1 = better than reference), {report.level:.0%} CI")
    ax.set_title(f"{report.model_ref} vs {report.reference_ref}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def plot_accuracy_matrix(matrix: AccuracyMatrix, path: str | os.PathLike) -> Path:
    """Heatmap of R[stage][task] with every cell annotated (3 decimals, "n/a" for NaN)."""
    import numpy as np

    values = np.ma.masked_invalid(np.asarray(matrix.values, dtype=np.float64))
    fig = _agg_figure(1.6 + 1.1 * len(matrix.tasks), 1.4 + 0.6 * len(matrix.stages))
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label="score")
    ax.set_xticks(range(len(matrix.tasks)), matrix.tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(matrix.stages)), matrix.stages)
    ax.set_xlabel("task (evaluated on)")
    ax.set_ylabel("stage (model after)")
    low, high = (values.min(), values.max()) if values.count() else (0.0, 1.0)
    mid = (float(low) + float(high)) / 2.0
    for i, row in enumerate(matrix.values):
        for j, v in enumerate(row):
            text = "n/a" if math.isnan(v) else f"{v:.3f}"
            color = "black" if math.isnan(v) or v > mid else "white"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
