"""Detection data (experiments/detection/data.py): generated set, DetectionSet, folder and tfds
loaders."""
import json
import os

import numpy as np
import pytest

from experiments.detection import data as D

#: load_splits sizes: every split, uncapped.
ALL = {"experts": 0, "train": 0, "validation": 0, "test": 0}


# --------------------------------------------------------------------------- generated set

def _assert_same(a, b):
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.image_index, b.image_index)
    assert a.names == b.names and a.class_names == b.class_names


def test_generate_set_is_deterministic_and_growable():
    a = D.generate_set(6, seed=3)
    assert a.images.shape == (6, D.IMAGE_SIZE, D.IMAGE_SIZE, 3) and a.images.dtype == np.uint8
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int32
    assert a.image_index.dtype == np.int32 and np.all(np.diff(a.image_index) >= 0)
    assert a.names == tuple(f"gen-{i:06d}" for i in range(6))
    assert a.class_names == D.CLASSES and len(D.CLASSES) >= 4
    _assert_same(a, D.generate_set(6, seed=3))
    other = D.generate_set(6, seed=4)
    assert not np.array_equal(a.images, other.images)
    # image i depends only on (seed, i): a shifted start gives the same images
    tail = D.generate_set(3, seed=3, start_index=3)
    _assert_same(tail, a.subset([3, 4, 5]))
    assert tail.names == ("gen-000003", "gen-000004", "gen-000005")


def test_boxes_are_tight_boxes_of_the_drawn_masks():
    seed, n = 7, 24
    gen = D.generate_set(n, seed)
    for i in range(n):
        image, boxes, labels, masks = D._render_with_masks(seed, i)
        np.testing.assert_array_equal(image, gen.images[i])
        gb, gl = gen.boxes_of(i)
        np.testing.assert_array_equal(boxes, gb)
        np.testing.assert_array_equal(labels, gl)
        assert 1 <= len(boxes) <= 8 and len(masks) == len(boxes)
        union = np.zeros(masks[0].shape, np.int32)
        for box, mask in zip(boxes, masks):
            rows = np.flatnonzero(mask.any(axis=1))
            cols = np.flatnonzero(mask.any(axis=0))
            tight = np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]) / D.IMAGE_SIZE
            np.testing.assert_allclose(box, tight, atol=1e-6)
            union += mask
        assert union.max() == 1, "objects must not overlap (so no box is occluded)"
    assert np.all((gen.boxes >= 0) & (gen.boxes <= 1))
    assert np.all(gen.boxes[:, 2] > gen.boxes[:, 0]) and np.all(gen.boxes[:, 3] > gen.boxes[:, 1])
    assert gen.labels.min() >= 0 and gen.labels.max() < len(D.CLASSES)


def test_scale_regimes_cover_tiny_and_large_objects():
    gen = D.generate_set(200, seed=0)
    side = (gen.boxes[:, 2:] - gen.boxes[:, :2]).max(axis=1) * D.IMAGE_SIZE
    assert (side < 12).sum() > 10 and (side > 150).sum() > 10
    assert set(np.unique(gen.labels)) == set(range(len(D.CLASSES)))
    small_only = large_only = mixed = 0
    for i in range(len(gen)):
        s = side[gen.image_index == i]
        small_only += bool(s.max() <= 31)
        large_only += bool(s.min() >= 59)
        mixed += bool(s.min() <= 31 and s.max() >= 59)
    assert min(small_only, large_only, mixed) >= 40, (small_only, large_only, mixed)


def test_generated_size_option():
    gen = D.generate_set(3, seed=1, size=100)
    assert gen.images.shape == (3, 100, 100, 3)
    assert np.all((gen.boxes >= 0) & (gen.boxes <= 1))


# --------------------------------------------------------------------------- DetectionSet

def test_subset_boxes_of_and_save_load_round_trip(tmp_path):
    gen = D.generate_set(5, seed=2)
    sub = gen.subset([4, 1, 1])
    assert len(sub) == 3 and sub.names == ("gen-000004", "gen-000001", "gen-000001")
    for j, i in enumerate([4, 1, 1]):
        np.testing.assert_array_equal(sub.boxes_of(j)[0], gen.boxes_of(i)[0])
        np.testing.assert_array_equal(sub.boxes_of(j)[1], gen.boxes_of(i)[1])
    assert len(gen.subset([])) == 0
    path = tmp_path / "sets" / "gen.npz"
    gen.save(str(path))
    assert sorted(os.listdir(path.parent)) == ["gen.npz"]
    _assert_same(gen, D.DetectionSet.load(str(path)))


def test_load_rejects_corrupt_and_incomplete_files(tmp_path):
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match="corrupt.npz"):
        D.DetectionSet.load(str(bad))
    partial = tmp_path / "partial.npz"
    np.savez(partial, images=np.zeros((1, 4, 4, 3), np.uint8), boxes=np.zeros((0, 4)))
    with pytest.raises(ValueError, match=r"partial\.npz.*labels"):
        D.DetectionSet.load(str(partial))


# --------------------------------------------------------------------------- folder

def _write_png(path, array):
    from PIL import Image

    Image.fromarray(array).save(path)


def _make_folder(root, n=4, size=(320, 320)):
    """n images of size (H, W) with a red box in image 0 and a green one in image 1."""
    os.makedirs(root, exist_ok=True)
    h, w = size
    images, annotations = [], []
    for i in range(n):
        arr = np.full((h, w, 3), 40, np.uint8)
        name = f"img{i}.png"
        if i == 0:
            arr[32:160, 64:224] = (255, 0, 0)
            annotations.append({"id": 11, "image_id": 100, "category_id": 7,
                                "bbox": [64, 32, 160, 128]})
            annotations.append({"id": 12, "image_id": 100, "category_id": 3,
                                "bbox": [0, 0, 10, 10], "iscrowd": 1})
        if i == 1:
            arr[0:h, 100:120] = (0, 255, 0)
            annotations.append({"id": 13, "image_id": 101, "category_id": 3,
                                "bbox": [100, 0, 20, h + 0.3]})
        _write_png(os.path.join(root, name), arr)
        images.append({"id": 100 + i, "file_name": name, "width": w, "height": h})
    doc = {"images": images, "annotations": annotations,
           "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]}
    with open(os.path.join(root, "annotations.json"), "w") as f:
        json.dump(doc, f)
    return doc


def _rewrite(root, doc):
    with open(os.path.join(root, "annotations.json"), "w") as f:
        json.dump(doc, f)


def test_load_folder_happy_path(tmp_path):
    root = str(tmp_path / "f")
    _make_folder(root, n=4)
    ds = D.load_folder(root)
    assert len(ds) == 4 and ds.images.shape == (4, 300, 300, 3)
    assert ds.names == ("img0.png", "img1.png", "img2.png", "img3.png")
    assert ds.class_names == ("three", "seven")  # sorted category ids 3, 7
    b0, l0 = ds.boxes_of(0)  # crowd annotation 12 dropped
    np.testing.assert_allclose(b0, [[32 / 320, 64 / 320, 160 / 320, 224 / 320]], atol=1e-6)
    np.testing.assert_array_equal(l0, [1])
    b1, l1 = ds.boxes_of(1)  # 0.3 px beyond the border: clipped
    np.testing.assert_allclose(b1, [[0, 100 / 320, 1, 120 / 320]], atol=1e-6)
    np.testing.assert_array_equal(l1, [0])
    assert len(ds.boxes_of(2)[0]) == 0 and len(ds.boxes_of(3)[0]) == 0
    y, x = int(96 / 320 * 300), int(144 / 320 * 300)
    np.testing.assert_array_equal(ds.images[0, y, x], [255, 0, 0])
    assert abs(int(ds.images[0, 5, 5, 0]) - 40) <= 1

    # every split needs ground truth (check_ground_truth): a box on images 2 and 3 too
    doc = json.load(open(os.path.join(root, "annotations.json")))
    doc["annotations"] += [{"id": 20 + i, "image_id": 100 + i, "category_id": 3,
                            "bbox": [10, 10, 50, 50]} for i in (2, 3)]
    _rewrite(root, doc)
    splits = D.load_splits(f"folder:{root}", seed=0, sizes=ALL)
    assert [len(splits[k]) for k in D.SPLITS] == [1, 1, 1, 1]
    assert sorted(sum((splits[k].names for k in D.SPLITS), ())) == sorted(ds.names)
    capped = D.load_splits(f"folder:{root}", seed=0, sizes=dict(ALL, experts=1))
    assert len(capped["experts"]) == 1


def _break(doc, kind):
    """Mutate a valid annotations doc; returns the strings the error must mention."""
    if kind == "missing_key":
        del doc["categories"]
        return ["annotations.json", "categories"]
    if kind == "missing_ann_key":
        del doc["annotations"][0]["bbox"]
        return ["annotations.json", "annotations[0]", "bbox"]
    if kind == "missing_image":
        doc["images"][2]["file_name"] = "nope.png"
        return ["annotations.json", "nope.png", "id=102"]
    if kind == "outside":
        doc["annotations"][0]["bbox"] = [64, 32, 300, 128]
        return ["annotations.json", "id=11", "img0.png", "outside"]
    if kind == "zero_area":
        doc["annotations"][2]["bbox"] = [10, 10, 0, 5]
        return ["annotations.json", "id=13", "img1.png", "area"]
    if kind == "negative_area":
        doc["annotations"][0]["bbox"] = [10, 10, 5, -5]
        return ["annotations.json", "id=11", "img0.png", "area"]
    if kind == "unknown_category":
        doc["annotations"][0]["category_id"] = 99
        return ["annotations.json", "id=11", "img0.png", "99", "[3, 7]"]
    if kind == "size_mismatch":
        doc["images"][3]["width"] = 640
        return ["annotations.json", "img3.png", "640"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing_key", "missing_ann_key", "missing_image", "outside",
                                  "zero_area", "negative_area", "unknown_category",
                                  "size_mismatch"])
def test_load_folder_rejects_bad_annotations(tmp_path, kind):
    root = str(tmp_path / "f")
    doc = _make_folder(root, n=4)
    expected = _break(doc, kind)
    _rewrite(root, doc)
    with pytest.raises(ValueError) as err:
        D.load_folder(root)
    for text in expected:
        assert text in str(err.value), (text, str(err.value))


def test_load_folder_rejects_missing_and_unparsable_json_and_bad_images(tmp_path):
    root = str(tmp_path / "f")
    _make_folder(root, n=3)
    with open(os.path.join(root, "annotations.json"), "w") as f:
        f.write('{"images": [\n  {"id": 1,, }\n]}')
    with pytest.raises(ValueError, match=r"annotations\.json.*line 2 column"):
        D.load_folder(root)
    os.remove(os.path.join(root, "annotations.json"))
    with pytest.raises(ValueError, match=r"annotations\.json.*not found"):
        D.load_folder(root)

    _make_folder(root, n=3)
    with open(os.path.join(root, "img2.png"), "wb") as f:
        f.write(b"not an image")
    with pytest.raises(ValueError, match=r"annotations\.json.*id=102.*img2\.png.*cannot be read"):
        D.load_folder(root)
    small = str(tmp_path / "small")
    doc = _make_folder(small, n=3, size=(200, 320))
    with pytest.raises(ValueError, match=r"img0\.png.*320x200 px.*allow_small_images"):
        D.load_folder(small)
    ds = D.load_folder(small, allow_small_images=True)
    assert ds.images.shape == (3, 300, 300, 3) and len(ds.boxes) == 2
    doc["images"] = doc["images"][:3]
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in (100, 101, 102)]
    _rewrite(small, doc)
    with pytest.raises(ValueError, match=r"small.*3 image.*at least 4.*experts, train"):
        D.load_splits(f"folder:{small}", seed=0, sizes=ALL,
                      allow_small_images=True)


# --------------------------------------------------------------------------- splits, tfds

def test_load_splits_generated_and_unknown_spec():
    splits = D.load_splits("generated", seed=5,
                           sizes={"experts": 2, "train": 3, "validation": 2, "test": 1})
    assert [len(splits[k]) for k in D.SPLITS] == [2, 3, 2, 1]
    names = [set(splits[k].names) for k in D.SPLITS]
    assert sum(map(len, names)) == len(set().union(*names)) == 8  # disjoint
    # the experts' split is the range the experts trained on before D75 (the same experts)
    assert splits["experts"].names == D.generate_set(2, 5).names
    with pytest.raises(ValueError, match="unknown detection data source"):
        D.load_splits("cocoa", seed=0, sizes=dict(ALL, train=1))
    with pytest.raises(ValueError, match="missing"):
        D.load_splits("generated", seed=0, sizes={"train": 1})


@pytest.mark.parametrize("name", ["coco/2017", "voc/2007"])
def test_tfds_mock(name, capsys):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=4):
        with pytest.raises(ValueError, match=rf"{name}.*'train'.*example 0.*allow_small_images"):
            D.load_tfds(name, "train")
        ds = D.load_tfds(name, "train", allow_small_images=True)
        assert ds.images.shape == (4, 300, 300, 3) and ds.images.dtype == np.uint8
        assert len(ds.boxes) == len(ds.labels) == len(ds.image_index)
        assert np.all((ds.boxes >= 0) & (ds.boxes <= 1))
        assert np.all(ds.boxes[:, 2] > ds.boxes[:, 0]) and np.all(ds.boxes[:, 3] > ds.boxes[:, 1])
        assert len(ds.class_names) == (80 if name.startswith("coco") else 20)
        assert "degenerate" in capsys.readouterr().out
        splits = D.load_splits(f"tfds:{name}", seed=0, allow_small_images=True,
                               sizes=dict(ALL, experts=1))
    assert len(splits["experts"]) == 1 and len(splits["train"]) == 2  # tfds train halved
    assert not set(splits["experts"].names) & set(splits["train"].names)
    assert all(len(splits[k]) > 0 for k in D.SPLITS)
    if name.startswith("coco"):  # validation halved into validation + test
        assert len(splits["validation"]) + len(splits["test"]) == 4
        assert not set(splits["validation"].names) & set(splits["test"].names)


def test_a_folder_split_without_ground_truth_is_refused_naming_the_file(tmp_path):
    """pycocotools' mAP of a split without boxes is -1 (printed -100.00 for every expert)."""
    root = str(tmp_path / "f")
    doc = _make_folder(root, n=4)
    _rewrite(root, dict(doc, annotations=[]))
    ann = os.path.join(root, "annotations.json")
    with pytest.raises(ValueError, match="no ground-truth boxes") as err:
        D.load_splits(f"folder:{root}", seed=0, sizes=ALL)
    assert ann in str(err.value) and "no (non-crowd) annotations at all" in str(err.value)
    assert "experts, train, validation, test splits have" in str(err.value)
    # boxes on two of the four images: the splits of the other two are refused
    _rewrite(root, doc)
    with pytest.raises(ValueError, match=r"the \w+, \w+ splits have no ground-truth boxes \(its 2 "
                                         "boxes all fall in the other splits"):
        D.load_splits(f"folder:{root}", seed=0, sizes=ALL)


def test_tfds_not_found_is_one_line(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(ValueError) as err:
        D.load_tfds("nonexistent", "train", data_dir=str(tmp_path))
    text = str(err.value)
    assert "\n" not in text and len(text) < 600, text
    assert "nonexistent" in text and "tfds build" in text
