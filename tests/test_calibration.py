"""The shipped calibration: well-formed, derived from its null, and not drifted against a freshly built zoo."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import pytest

from hubguard.errors import FingerprintError
from hubguard.lineage.calibration import Calibration, load_calibration

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_calibration_is_consistent() -> None:
    cal = load_calibration()
    assert cal.overall.std > 0 and cal.layer.std > 0
    assert cal.derivative_z > cal.independent_z
    if cal.overall.samples:  # a zoo calibration: its own negatives are all below the derivative threshold
        assert max(cal.overall.z(s) for s in cal.overall.samples) < cal.derivative_z
        assert cal.overall.mean == pytest.approx(statistics.fmean(cal.overall.samples), abs=1e-2)
        fpr = cal.overall.false_positive_rate(max(cal.overall.samples) + 1e-6)
        assert fpr == 0.0


def test_malformed_calibration_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FingerprintError, match="malformed"):
        Calibration.from_dict({"null": {"overall": {"mean": 0, "std": 0}}, "thresholds": {}})


@pytest.mark.slow
def test_calibration_has_not_drifted(quick_zoo, tmp_path) -> None:  # noqa: F811 - fixture from test_zoo_quick
    """Recompute the null from the quick zoo; the shipped thresholds must still separate its pairs."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import lineage as bench  # benchmarks/lineage.py

    zoo_dir, _ = quick_zoo
    out = tmp_path / "lineage.json"
    cal_path = tmp_path / "calibration.json"
    assert bench.main(["--zoo", str(zoo_dir), "--out", str(out), "--write-calibration", str(cal_path)]) == 0
    fresh = Calibration.from_dict(json.loads(cal_path.read_text()))
    shipped = load_calibration()
    # the null of independently trained models sits where the shipped one says (within a few of its stds)
    assert abs(fresh.overall.mean - shipped.overall.mean) < 3 * shipped.overall.std + 1.0
    assert fresh.overall.std < 3 * shipped.overall.std + 1.0
    pairs = json.loads(out.read_text())["pairs_detail"]
    negatives = [p["hubguard"] for p in pairs if not p["positive"]]
    assert max(shipped.overall.z(s) for s in negatives) < shipped.derivative_z, "an independent pair looks derivative"
    missed = [p for p in pairs if p["positive"] and shipped.verdict(shipped.overall.z(p["hubguard"])) != "derivative"]
    assert missed == []
    multi = json.loads(out.read_text())["multi_base"]
    assert all(m["all_bases_found"] for m in multi)
    assert all(m["layer_map_correct"] in (True, None) for m in multi)


from tests.test_zoo_quick import quick_zoo  # noqa: E402, F401  (session fixture: builds the quick zoo once)
