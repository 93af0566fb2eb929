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


def _photo_parts():
    import skimage.data

    from experiments.sr.data import cut_parts

    parts = []
    for name in ("astronaut", "coffee"):
        image = getattr(skimage.data, name)().astype(np.float32) / 255.0
        parts.append(cut_parts(image[:256, :256])[0])  # 16 parts of 64x64 each
    return np.concatenate(parts)  # [32, 64, 64, 3]


def test_readme_example_runs_as_written(tmp_path, monkeypatch):
    from experiments.sr.models import build_expert_model, export_expert

    for s in (4, 3, 2):  # untrained residual ESPCN: exactly bicubic
        export_expert(build_expert_model("espcn", s), tmp_path / "workdir" / "experts" /
                      f"espcn_x{s}")
    parts = _photo_parts()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(parts))
    scope = {"parts": parts[order[:20]], "val_parts": parts[order[20:26]],
             "test_parts": parts[order[26:]]}
    monkeypatch.chdir(tmp_path)
    exec(compile(_example_block(), "README.md", "exec"), scope)  # noqa: S102

    b = scope["b"]
    np.testing.assert_allclose(b, [0.0, 6144 / 6996, 1 - 6144 / 6996], atol=1e-9)
    assert [e.data_cost for e in scope["experts"]] == [3072, 5292, 12288]
    y = scope["y"]
    assert y.shape == (6, 64, 64, 3) and np.all(np.isfinite(y))
    mix = scope["mix"]
    assert int(mix.optimizer.iterations) == 2  # 2 epochs of one batch of 20
    assert np.all(np.isfinite(mix.offsets.numpy()))
    # calibrated offsets reproduce b's capacities on the calibration set, x4 unused
    picks = mix.select_experts(scope["val_parts"])
    np.testing.assert_array_equal(np.bincount(picks, minlength=3), expert_capacities(6, b))
    assert not np.any(picks == 0)
