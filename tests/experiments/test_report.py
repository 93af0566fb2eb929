"""experiments.report: the console table, the notes under it."""
import pytest

from experiments import report as report_lib


def _report(curves, rho):
    at = {a: {m: 1.0 for m in curves} for a in report_lib.AT}
    return dict(curves=curves, rho=rho, at=at, points={}, oracle="oracle", eval={},
                oracle_exceeded=[])


def test_missing_rho_comes_with_a_note_saying_why():
    curves = {"enforce": [[100.0, 0.5], [100.0, 0.6], [200.0, 0.7]],
              "random": [[100.0, 0.4], [100.0, 0.4]],
              "benchmark": [[100.0, 0.3], [200.0, 0.6]],
              "bicubic": [[50.0, 0.1]]}  # a task's extra curve: not a Table IV method
    report = _report(curves, {"benchmark": 12.0})
    table = report_lib.format_table(report)
    assert [line.split()[-1] for line in table.splitlines()[1:]] == ["12.00", "-", "-"]
    notes = report_lib.warnings(report)
    assert len(notes) == 1
    note = notes[0]
    assert note.startswith("NOTE (test): rho is missing ('-') for enforce, random:")
    assert "two targets land on the same realised cost" in note
    assert "enforce: 3 points at 2 distinct realised costs" in note
    assert "random: 2 points at 1 distinct realised cost)" in note
    assert "bicubic" not in note


def test_no_note_when_every_curve_has_rho():
    curves = {"enforce": [[100.0, 0.5], [200.0, 0.7]]}
    assert report_lib.warnings(_report(curves, {"enforce": 3.0})) == []
    assert report_lib.rho_note(_report(curves, {"enforce": 3.0})) is None


def test_bytes_saved_reads_the_experts_line_at_the_mixtures_metric():
    from experiments.report import bytes_saved

    report = {"bias": [{"target": 100.0}, {"target": 300.0}, {"target": 900.0}],
              "curves": {"benchmark": [[100.0, 20.0], [500.0, 30.0], [900.0, 32.0]]},
              "points": {"enforce": [{"target": 300.0, "cost": 290.0, "metric": 28.0}],
                         "soft": [{"target": 300.0, "cost": 300.0, "metric": 27.0}]}}
    out = bytes_saved(report)
    # the line reaches 28.0 at 100 + (28 - 20) / (30 - 20) * 400 = 420 B
    assert out["method"] == "enforce" and out["experts_bytes"] == pytest.approx(420.0)
    assert out["saving"] == pytest.approx(1 - 290.0 / 420.0)
    report["points"]["enforce"][0]["metric"] = 33.0  # above every single expert
    assert bytes_saved(report)["experts_bytes"] is None and bytes_saved(report)["saving"] is None
    assert bytes_saved({"bias": [], "curves": {}, "points": {}}) is None
