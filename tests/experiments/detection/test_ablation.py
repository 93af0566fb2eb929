"""Detection ablations (Table II, Fig. 5): the grids, the gate complexities, and a smoke run
on a copy of the shared smoke workdir (compact gates; one extra expert at 200 px)."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bmoe_tf.gating import count_macs
from experiments.detection.ablation import GRIDS, RANGES, complexity_gates, spaced_resolutions


def test_spaced_resolutions():
    assert spaced_resolutions(100, 300, 2) == (100, 300)
    assert spaced_resolutions(100, 300, 3) == (100, 200, 300)
    assert spaced_resolutions(100, 300, 4) == (100, 167, 233, 300)
    assert spaced_resolutions(150, 300, 4) == (150, 200, 250, 300)
    assert RANGES == ((100, 300), (150, 300), (100, 200))
    assert GRIDS["full"] == dict(batch_sizes=(16, 32, 64), counts=(2, 3, 4, 5))


def test_complexity_gates_rise_and_bracket_the_paper():
    macs = [count_macs(build()) for _, build in complexity_gates("paper", 224, 3)]
    assert macs == sorted(macs) and len(set(macs)) == 3
    # around Table II's 23.0 M .. 38.7 M Mult-Adds
    assert 1.5e7 < macs[0] < 2.5e7 and 3.5e7 < macs[-1] < 4.5e7
    compact = [count_macs(build()) for _, build in complexity_gates("compact", 96, 2)]
    assert compact == sorted(compact)
    assert all(build().output_shape == (None, 2)
               for _, build in complexity_gates("compact", 96, 2))


@pytest.mark.slow  # ~100 s: keeps `make test` under 15 minutes (the CLI smoke runs stay)
def test_ablation_smoke_run(det_smoke, tmp_path):
    wd, _, _ = det_smoke
    copy = tmp_path / "abl"
    shutil.copytree(wd, copy)
    args = [sys.executable, "-m", "experiments.detection", "--preset=smoke", f"--workdir={copy}",
            "--verbose=0", "--gate=compact", "--ablation=complexity,experts"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((copy / "report.json").read_text())
    comp = report["ablation"]["complexity"]
    assert set(comp["experts"]) == {"3", "2"}
    assert comp["experts"]["2"] == [100, 300]
    assert len(comp["rows"]) == 3 * len(GRIDS["smoke"]["batch_sizes"])
    for row in comp["rows"]:
        assert set(row["rho"]) == {"3", "2"}
        assert all(np.isfinite(v) for v in row["rho"].values())
    rows = report["ablation"]["experts"]["rows"]
    assert [tuple(r["range"]) for r in rows] == list(RANGES)
    assert rows[2]["resolutions"] == [100, 200]
    # the 200 px expert was trained once, for the ablation only
    assert (copy / "ablations" / "experts" / "ssd200").is_dir()
    assert not (copy / "experts" / "ssd200").exists()
    assert rows[2]["experts"][1]["data_cost"] == 3 * 200 * 200 * 4
    md = (copy / "report.md").read_text()
    assert "Table II layout" in md and "Fig. 5 layout" in md
    assert (copy / "reports" / "fig5_rho_vs_experts.png").exists()
    # every point runs the pipeline's own stages: the point with the main run's gate,
    # batch and experts is the main run, bit for bit (gate weights, b, test curve)
    from experiments.gates import load_gate

    (root,) = [p for p in (copy / "ablations").iterdir() if p.name not in ("experts", "cache")]
    point = root / "complexity" / "compact(16, 32, 32)" / "M16" / "N3"
    for a, b in zip(load_gate(str(copy / "gates" / "enforce" / "shared"))[0].get_weights(),
                    load_gate(str(point / "gates" / "enforce" / "shared"))[0].get_weights()):
        assert np.array_equal(a, b)
    assert json.loads((point / "bias.json").read_text()) == json.loads(
        (copy / "bias.json").read_text())
    main_test = json.loads((copy / "evaluation.json").read_text())["test"]
    point_test = json.loads((point / "evaluation.json").read_text())["test"]
    assert point_test["curves"]["enforce"] == main_test["curves"]["enforce"]
    # resumed: nothing is redone
    again = subprocess.run(args, capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "ablation complexity (Table II)] skipped" in again.stdout
    assert "ablation experts (Fig. 5)] skipped" in again.stdout
    assert json.loads((copy / "report.json").read_text())["ablation"] == report["ablation"]
