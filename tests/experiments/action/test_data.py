"""Loading action clips: a UCF-101-style folder, tfds (mock data) and the --data forms."""
import os
import re
import sys
import types

import av
import numpy as np
import pytest

from experiments.action import data as D
from experiments.action.clips import MV_GRID
from experiments.action.video import encode_h264

F_T = 4           # motion-vector maps per clip in these tests (clips need 5 frames)
SIZE = 32         # RGB frame side
CLASSES = ("MoveLeft", "MoveRight", "Still")
SPEED = {"MoveLeft": -2, "MoveRight": 2, "Still": 0}


def _frames(n, dx, seed, h=48, w=64):
    """``uint8[n, h, w, 3]``: a smooth random texture whose content moves ``dx`` px/frame."""
    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, size=(h // 4 + 2, (w + 2 * abs(dx) * n) // 4 + 4, 3))
    big = np.repeat(np.repeat(big, 4, axis=0), 4, axis=1).astype(np.float32)
    big = (big + np.roll(big, 1, 0) + np.roll(big, 1, 1) + np.roll(big, 2, 1)) / 4
    x0 = abs(dx) * n
    return np.stack([big[:h, x0 - dx * t: x0 - dx * t + w] for t in range(n)]).astype(np.uint8)


def _write_avi(path, frames, b_frames=0):
    """MPEG-4 part 2 in an AVI container (UCF-101's container), PyAV defaults."""
    with av.open(str(path), mode="w", format="avi") as out:
        stream = out.add_stream("mpeg4", rate=25)
        if b_frames:
            stream.codec_context.max_b_frames = b_frames
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))


def _write(path, frames):
    if str(path).endswith(".avi"):
        _write_avi(path, frames)
    else:
        encode_h264(frames, path=str(path))


def _ucf_folder(root, *, groups=(1, 2, 3, 4), n_frames=10, classes=CLASSES):
    """``root/<Class>/v_<Class>_gNN_cMM.{avi,mp4}``; class 0 has two clips in group 1."""
    files = []
    for k, name in enumerate(classes):
        os.makedirs(root / name, exist_ok=True)
        for g in groups:
            for c in ((1, 2) if (k == 0 and g == groups[0]) else (1,)):
                ext = "avi" if (g + c) % 2 else "mp4"
                rel = f"{name}/v_{name}_g{g:02d}_c{c:02d}.{ext}"
                _write(root / rel, _frames(n_frames, SPEED.get(name, 1), seed=len(files)))
                files.append(rel)
    return files


@pytest.fixture(scope="module")
def ucf(tmp_path_factory):
    root = tmp_path_factory.mktemp("ucf")
    return root, _ucf_folder(root)


def _group_number(group):
    return re.search(r"g(\d+)$", group).group(1)


def _check_sets(sets, class_names=CLASSES, source=None):
    assert tuple(sets) == D.SPLIT_NAMES
    numbers = {}
    for split, s in sets.items():
        assert s.class_names == tuple(class_names)
        assert s.mv.shape == (len(s), F_T, MV_GRID, MV_GRID, 2) and s.mv.dtype == np.float16
        assert s.rgb.shape == (len(s), 2, SIZE, SIZE, 3) and s.rgb.dtype == np.uint8
        assert np.all(s.degradation == "") and np.all(s.mv_bytes > 0) and np.all(s.rgb_bytes > 0)
        assert np.all(np.isfinite(s.mv))
        if source:
            assert s.source == source
        numbers[split] = {_group_number(g) for g in s.groups}
    for a in D.SPLIT_NAMES:  # one group number lies in one split only
        for b in D.SPLIT_NAMES:
            assert a == b or not (numbers[a] & numbers[b]), (a, b, numbers)


def test_folder_splits_by_group_with_labels_shapes_and_motion(ucf):
    root, files = ucf
    sets = D.load_folder(root, mv_frames=F_T, frame_size=SIZE, seed=3, progress=False)
    _check_sets(sets, source=f"folder:{root}")
    assert sorted(np.concatenate([s.clip_ids for s in sets.values()])) == sorted(files)
    for s in sets.values():
        assert len(s) >= len(CLASSES)  # 4 groups over 4 splits: one group, every class, each
        for cid, label, group in zip(s.clip_ids, s.labels, s.groups):
            cls = cid.split("/")[0]
            assert CLASSES[label] == cls and group.startswith(cls + "/g")
    allsets = sets.values()
    mv = np.concatenate([s.mv for s in allsets]).astype(np.float32)
    labels = np.concatenate([s.labels for s in allsets])
    u = mv[..., 0].mean(axis=(1, 2, 3))
    assert u[labels == 1].mean() > 0.5 and u[labels == 0].mean() < -0.5   # right / left
    assert abs(u[labels == 2].mean()) < 0.2
    assert np.all(np.abs(mv[..., 1].mean(axis=(1, 2, 3))) < 0.3)
    # same seed, same split; caps keep every class (round robin)
    again = D.load_folder(root, mv_frames=F_T, frame_size=SIZE, seed=3, progress=False)
    assert all(list(again[k].clip_ids) == list(sets[k].clip_ids) for k in D.SPLIT_NAMES)
    capped = D.load_folder(root, mv_frames=F_T, frame_size=SIZE, seed=3, progress=False,
                           max_clips={"experts": 3, "train": 2})
    assert len(capped["experts"]) == 3 and set(capped["experts"].labels) == {0, 1, 2}
    assert len(capped["train"]) == 2
    assert list(capped["test"].clip_ids) == list(sets["test"].clip_ids)


def test_folder_rgb_is_centre_crop_of_frames_0_and_ft(ucf):
    root, _ = ucf
    from experiments.action.video import read_motion_vectors

    rel = f"{CLASSES[2]}/v_{CLASSES[2]}_g03_c01.mp4"
    decoded = read_motion_vectors(root / rel, max_frames=F_T + 1, keep_frames=True)
    mv, rgb = D.clip_arrays(decoded, mv_frames=F_T, rgb_frames=2, frame_size=48)
    np.testing.assert_array_equal(mv, decoded.mv[1:F_T + 1])
    np.testing.assert_array_equal(rgb[0], decoded.frames[0][:, 8:56])  # 48x64 -> 48x48
    np.testing.assert_array_equal(rgb[1], decoded.frames[F_T][:, 8:56])
    _, rgb3 = D.clip_arrays(decoded, mv_frames=F_T, rgb_frames=3, frame_size=24)
    assert rgb3.shape == (3, 24, 24, 3)
    with pytest.raises(ValueError, match=r"has 5 frames.*6 \(mv_frames \+ 1\)"):
        D.clip_arrays(decoded, mv_frames=5, rgb_frames=2, frame_size=24)


def test_folder_with_split_lists_uses_the_testlist(tmp_path):
    files = _ucf_folder(tmp_path, n_frames=6)
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    test = [f for f in files if "_g01_" in f]
    _write(tmp_path / CLASSES[0] / f"v_{CLASSES[0]}_g04_c09.avi", _frames(6, 1, 0))  # unlisted
    train = [f for f in files if "_g01_" not in f]
    (lists / "testlist01.txt").write_text("\n".join(test) + "\n")
    (lists / "trainlist01.txt").write_text(
        "\n".join(f"{f} {CLASSES.index(f.split('/')[0]) + 1}" for f in train) + "\n")
    sets = D.load_folder(tmp_path, mv_frames=F_T, frame_size=SIZE, seed=0, progress=False)
    _check_sets(sets)
    assert sorted(sets["test"].clip_ids) == sorted(test)
    rest = sorted(np.concatenate([sets[s].clip_ids for s in D.SPLIT_NAMES[:3]]))
    assert rest == sorted(train)  # files in neither list are skipped


def test_folder_layout_errors_name_the_thing(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        D.load_folder(tmp_path / "nowhere", progress=False)
    (tmp_path / "loose.avi").write_bytes(b"x")
    with pytest.raises(ValueError, match="no class subfolders"):
        D.load_folder(tmp_path, progress=False)
    (tmp_path / "Empty").mkdir()
    with pytest.raises(ValueError, match="holds a video"):
        D.load_folder(tmp_path, progress=False)

    one = tmp_path / "one"
    _ucf_folder(one, n_frames=2, classes=("Jump",))
    _ucf_folder(one, n_frames=2, groups=(3,), classes=("Lonely",))
    with pytest.raises(ValueError, match=r"class 'Lonely'.*one group only"):
        D.load_folder(one, mv_frames=F_T, progress=False)

    few = tmp_path / "few"
    _ucf_folder(few, n_frames=2, groups=(1, 2, 3), classes=("A", "B"))
    with pytest.raises(ValueError, match=r"3 group\(s\).*4 splits"):
        D.load_folder(few, mv_frames=F_T, progress=False)

    lists = tmp_path / "lists"   # class B has no file in the testlist
    files = _ucf_folder(lists, n_frames=2, classes=("A", "B"))
    (lists / "testlist01.txt").write_text("".join(f + "\n" for f in files
                                                  if f.startswith("A/") and "_g01_" in f))
    (lists / "trainlist01.txt").write_text(
        "\n".join(f for f in files if "_g01_" not in f) + "\n")
    with pytest.raises(ValueError, match=r"\['B'\].*test split"):
        D.load_folder(lists, mv_frames=F_T, progress=False)


def test_folder_bad_videos_name_the_file(tmp_path):
    files = _ucf_folder(tmp_path, n_frames=6, classes=("A", "B"))
    bad = tmp_path / files[-1]
    bad.write_bytes(b"this is not a video at all" * 20)
    with pytest.raises(ValueError, match=re.escape(str(bad))):
        D.load_folder(tmp_path, mv_frames=F_T, progress=False)
    _write(bad, _frames(3, 1, seed=0))
    with pytest.raises(ValueError, match=re.escape(str(bad)) + r".* 3 frame.* 5 \(mv_frames"):
        D.load_folder(tmp_path, mv_frames=F_T, progress=False)


def test_parse_data_and_dispatch(tmp_path, monkeypatch):
    assert D.parse_data("generated") == ("generated", None)
    assert D.parse_data("folder:/a/b:c") == ("folder", "/a/b:c")
    assert D.parse_data("tfds:ucf101/ucf101_1_256") == ("tfds", "ucf101/ucf101_1_256")
    for bad in ("ucf101", "folder:", "tfds:", "file:/x", ""):
        with pytest.raises(ValueError, match=r"generated.*folder:PATH.*tfds:NAME"):
            D.parse_data(bad)
    with pytest.raises(ValueError, match="unknown --data"):
        D.load_splits("video:/x", seed=0, sizes={s: 1 for s in D.SPLIT_NAMES})

    calls = []
    fake = types.ModuleType("experiments.action.footage")
    fake.generate_splits = lambda seed, sizes, **kw: calls.append((seed, sizes, kw)) or "sets"
    monkeypatch.setitem(sys.modules, "experiments.action.footage", fake)
    sizes = {"experts": 5, "train": 4, "validation": 2, "test": 3}
    assert D.load_splits("generated", seed=7, sizes=sizes, mv_frames=8, unreliable_share=0.5,
                         progress=False) == "sets"
    assert calls == [(7, sizes, {"mv_frames": 8, "rgb_frames": 2, "frame_size": 96,
                                 "unreliable_share": 0.5, "progress": False})]
    with pytest.raises(ValueError, match=r"missing \['test'\]"):
        D.load_splits("generated", seed=0, sizes={"experts": 1, "train": 1, "validation": 1})

    _ucf_folder(tmp_path, n_frames=6, classes=("A", "B"))
    sets = D.load_splits(f"folder:{tmp_path}", seed=1, frame_size=SIZE, mv_frames=F_T,
                         sizes={"experts": 1, "train": 0, "validation": 0, "test": 0},
                         progress=False)
    _check_sets(sets, class_names=("A", "B"))
    assert len(sets["experts"]) == 1 and len(sets["test"]) == 2


def test_tfds_mock_reencodes_frames_and_reads_motion_vectors():
    import tensorflow_datasets as tfds

    name = "ucf101/ucf101_1_256"
    with tfds.testing.mock_data(num_examples=3):
        sets = D.load_splits(f"tfds:{name}", seed=0, mv_frames=F_T, frame_size=SIZE,
                             sizes={"experts": 0, "train": 0, "validation": 0, "test": 0},
                             progress=False)
    assert [len(sets[s]) for s in D.SPLIT_NAMES] == [1, 1, 1, 3]
    for split, s in sets.items():
        assert s.class_names[0] == "ApplyEyeMakeup" and len(s.class_names) == 101
        assert s.source == f"tfds:{name}"
        assert s.mv.shape == (len(s), F_T, MV_GRID, MV_GRID, 2)
        assert s.rgb.shape == (len(s), 2, SIZE, SIZE, 3)
        assert all(g.startswith(f"tfds:{'test' if split == 'test' else 'train'}:")
                   for g in s.groups)
        assert np.all(s.mv_bytes > 0) and np.all(s.degradation == "")
    train_groups = [g for s in D.SPLIT_NAMES[:3] for g in sets[s].groups]
    assert sorted(train_groups) == [f"tfds:train:{i}" for i in range(3)]
    assert list(sets["test"].groups) == [f"tfds:test:{i}" for i in range(3)]


def test_tfds_mock_odd_sizes_caps_and_short_clips():
    import tensorflow_datasets as tfds

    name = "ucf101/ucf101_1"  # mock videos of random, often odd, sizes (5..49 px)
    with tfds.testing.mock_data(num_examples=6):
        sets = D.load_tfds(name, mv_frames=F_T, frame_size=SIZE, seed=1, progress=False,
                           sizes={"experts": 1, "test": 2})
        assert [len(sets[s]) for s in D.SPLIT_NAMES] == [1, 2, 1, 2]
        assert all(s.mv.shape[1:] == (F_T, MV_GRID, MV_GRID, 2) for s in sets.values())
        with pytest.raises(ValueError, match=rf"tfds {name} split 'train' example \d+: the video "
                                             r"has \d+ frame\(s\), fewer than the 61"):
            D.load_tfds(name, mv_frames=60, progress=False)


def test_tfds_unprepared_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"ucf101.*tfds_data_dir"):
        D.load_tfds("ucf101/ucf101_1_256", data_dir=str(tmp_path), progress=False)


def test_folder_warns_about_b_frames(tmp_path, capsys):
    """xvid-style B-frames: FFmpeg exports no usable vectors for them (WORKSPACE D40)."""
    for k, name in enumerate(CLASSES):
        os.makedirs(tmp_path / name)
        for g in (1, 2, 3, 4):
            _write_avi(tmp_path / name / f"v_{name}_g{g:02d}_c01.avi",
                       _frames(10, 2, seed=10 * k + g), b_frames=2)
    sets = D.load_folder(tmp_path, mv_frames=F_T, frame_size=SIZE, progress=False)
    out = capsys.readouterr().out
    total = sum(len(v) for v in sets.values())
    assert f"WARNING: folder {tmp_path}: {total} of {total} clips have B-frames" in out
