"""README's "The API in one example" runs as written (exec), on tiny SR experts."""
import os
import re

import numpy as np

from bmoe_tf.routing import expert_capacities

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _example_block():
    text = open(README, encoding="utf-8").read()
    section = text.split("## The API in one example", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section must hold exactly one python block"
    return blocks[0]


def test_readme_example_runs_as_written_on_a_smoke_workdir(sr_smoke, tmp_path, monkeypatch):
    """The block as written, in a folder whose ``workdir`` is the smoke run's workdir
    (its trained ESPCN SavedModels), on that run's own training / validation / test parts."""
    from experiments.super_resolution.data import PartSet

    smoke_workdir, _ = sr_smoke
    os.symlink(smoke_workdir, tmp_path / "workdir")
    sets = {s: PartSet.load(os.path.join(smoke_workdir, "data", f"{s}.npz")).parts
            for s in ("train", "validation", "test")}
    scope = {"parts": sets["train"], "val_parts": sets["validation"],
             "test_parts": sets["test"]}
    assert len(scope["parts"]) >= 128  # at least one full batch
    monkeypatch.chdir(tmp_path)
    exec(compile(_example_block(), "README.md", "exec"), scope)  # noqa: S102

    b = scope["b"]
    np.testing.assert_allclose(b, [0.0, 6144 / 6996, 1 - 6144 / 6996], atol=1e-9)
    assert [e.data_cost for e in scope["experts"]] == [3072, 5292, 12288]
    y = scope["y"]
    assert y.shape == sets["test"].shape and np.all(np.isfinite(y))
    mix = scope["mix"]
    assert int(mix.optimizer.iterations) == 2 * (len(sets["train"]) // 128)
    assert np.all(np.isfinite(mix.offsets.numpy()))
    # calibrated offsets reproduce b's capacities on the calibration set, x4 unused
    picks = mix.select_experts(scope["val_parts"])
    np.testing.assert_array_equal(np.bincount(picks, minlength=3),
                                  expert_capacities(len(picks), b))
    assert not np.any(picks == 0)
