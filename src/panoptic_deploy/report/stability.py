"""Do two benchmark runs agree? The p50 of each row of run A against the same row of run B.

Issue 11's check of stable timings: across two quiet ``make report`` runs, the rows the report does not flag
as unstable (network CoV within its threshold in *both* runs) must agree within 15 % in p50. Rows are paired
by (model, device, backend, precision); a row of one run only is listed, not compared. The agreement of a
pair is ``|p50_b - p50_a| / p50_a``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from panoptic_deploy.bench.results import BenchResult, read_bench
from panoptic_deploy.errors import BenchError
from panoptic_deploy.fileio import PathLike

DEFAULT_TOLERANCE = 0.15  # issue 11: "agree within 15 % in p50"


@dataclass(frozen=True)
class RowComparison:
    """One row in both runs."""

    row: str  # model device backend precision
    p50_a_ms: float
    p50_b_ms: float
    cov_a: float | None
    cov_b: float | None
    flagged: bool  # unstable in either run: reported, not held to the tolerance
    change: float  # |p50_b - p50_a| / p50_a

    def within(self, tolerance: float) -> bool:
        return self.change <= tolerance


@dataclass(frozen=True)
class TimingComparison:
    """Every row of two runs: paired ones compared, the others named."""

    rows: tuple[RowComparison, ...]
    only_a: tuple[str, ...]
    only_b: tuple[str, ...]
    tolerance: float

    @property
    def failures(self) -> tuple[RowComparison, ...]:
        """Unflagged rows whose p50 moved by more than the tolerance."""
        return tuple(r for r in self.rows if not r.flagged and not r.within(self.tolerance))

    def lines(self) -> list[str]:
        """A plain table, one line per row, then the verdict."""
        out = []
        for r in self.rows:
            state = (
                "flagged unstable (not held)"
                if r.flagged
                else ("ok" if r.within(self.tolerance) else "DIFFERS")
            )
            cov = "/".join("–" if c is None else f"{100 * c:.1f}%" for c in (r.cov_a, r.cov_b))
            out.append(
                f"{r.row}: p50 {r.p50_a_ms:.2f} -> {r.p50_b_ms:.2f} ms ({100 * r.change:.1f} %), "
                f"CoV {cov}: {state}"
            )
        out += [f"{name}: only in run A" for name in self.only_a]
        out += [f"{name}: only in run B" for name in self.only_b]
        held = [r for r in self.rows if not r.flagged]
        if not held:
            out.append("no row is unflagged in both runs: this check holds nothing (quiet the machine)")
        out.append(
            f"{len(held) - len(self.failures)} of {len(held)} unflagged row(s) agree within "
            f"{100 * self.tolerance:.0f} % in p50 ({len(self.rows) - len(held)} flagged row(s) not held)"
        )
        return out


def bench_files(folder: PathLike) -> list[Path]:
    """Every benchmark JSON under ``folder`` (e.g. ``results/bench``); BenchError when there is none."""
    # not the COCO panoptic sets beside each file (<name>.panoptic/panoptic.json)
    files = sorted(p for p in Path(folder).rglob("*.json") if not p.parent.name.endswith(".panoptic"))
    if not files:
        raise BenchError(f"{folder}: no benchmark JSON files")
    return files


def _key(r: BenchResult) -> str:
    where = r.device_name if r.device == "cuda" else "cpu"
    return f"{r.model} {where} {r.backend} {r.precision}"


def _by_row(files: Sequence[PathLike]) -> dict[str, BenchResult]:
    rows: dict[str, BenchResult] = {}
    for path in files:
        result = read_bench(path)
        key = _key(result)
        if key in rows:
            raise BenchError(f"{path}: a second benchmark of row '{key}' in the same run")
        rows[key] = result
    return rows


def compare_runs(
    run_a: Sequence[PathLike], run_b: Sequence[PathLike], tolerance: float = DEFAULT_TOLERANCE
) -> TimingComparison:
    """Pair the rows of two runs' benchmark files and compare their network p50."""
    a, b = _by_row(run_a), _by_row(run_b)
    rows = []
    for key in sorted(a.keys() & b.keys()):
        na, nb = a[key].latency.network, b[key].latency.network
        rows.append(
            RowComparison(
                key,
                na.p50_ms,
                nb.p50_ms,
                na.cov,
                nb.cov,
                na.unstable or nb.unstable,
                abs(nb.p50_ms - na.p50_ms) / na.p50_ms if na.p50_ms > 0 else float("inf"),
            )
        )
    return TimingComparison(
        tuple(rows), tuple(sorted(a.keys() - b.keys())), tuple(sorted(b.keys() - a.keys())), tolerance
    )
