"""experiments.report: the console table, the notes under it."""
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
