"""Tests of the detection task's SSD experts (experiments/detection/ssd.py)."""
import math
import types

import numpy as np
import pytest

from bmoe_tf.backend import keras, tf
from experiments.detection import ssd


def _corners(a):
    a = np.asarray(a, np.float64)
    return np.stack([a[:, 0] - a[:, 2] / 2, a[:, 1] - a[:, 3] / 2,
                     a[:, 0] + a[:, 2] / 2, a[:, 1] + a[:, 3] / 2], -1)


def _random_boxes(rng, n, lo=0.02, hi=0.5):
    cy, cx = rng.uniform(0.1, 0.9, (2, n))
    h, w = rng.uniform(lo, hi, (2, n))
    return np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1).astype(np.float32)


# ---- anchors --------------------------------------------------------------------------------
@pytest.mark.parametrize("resolution", [100, 150, 300])
def test_anchor_count_centres_and_sizes(resolution):
    config = ssd.AnchorConfig(strides=(8, 16, 32), sizes=((0.05,), (0.1, 0.2), (0.4,)),
                              aspect_ratios=(1.0, 2.0))
    a = ssd.anchors(resolution, config)
    fs = [math.ceil(resolution / s) for s in (8, 16, 32)]
    per_cell = (2, 4, 2)
    assert ssd.feature_sizes(resolution, config) == tuple(fs)
    assert ssd.anchors_per_cell(config) == per_cell
    assert a.shape == (sum(f * f * k for f, k in zip(fs, per_cell)), 4) and a.dtype == np.float32
    base = 0
    for f, k, sizes in zip(fs, per_cell, config.sizes):
        level = a[base:base + f * f * k].reshape(f, f, k, 4)
        centres = (np.arange(f) + 0.5) / f
        np.testing.assert_allclose(level[:, :, :, 0], np.broadcast_to(centres[:, None, None],
                                                                      (f, f, k)), atol=1e-6)
        np.testing.assert_allclose(level[:, :, :, 1], np.broadcast_to(centres[None, :, None],
                                                                      (f, f, k)), atol=1e-6)
        expected = [(s / math.sqrt(r), s * math.sqrt(r)) for s in sizes for r in (1.0, 2.0)]
        np.testing.assert_allclose(level[3, 2, :, 2:], expected, rtol=1e-6)
        base += f * f * k


def test_anchor_config_checks():
    with pytest.raises(ValueError, match="one tuple of sizes per stride"):
        ssd.AnchorConfig(strides=(8, 16), sizes=((0.1,),))
    with pytest.raises(ValueError, match="strides"):
        ssd.AnchorConfig(strides=(8, 12, 32))


def test_mirror_index_maps_each_anchor_to_its_mirror_image():
    for r in (100, 150):
        a = ssd.anchors(r)
        m = ssd._mirror_index(r, ssd.AnchorConfig())
        np.testing.assert_allclose(a[m][:, 1], 1.0 - a[:, 1], atol=1e-6)
        np.testing.assert_array_equal(a[m][:, [0, 2, 3]], a[:, [0, 2, 3]])


# ---- box coding -----------------------------------------------------------------------------
def test_encode_decode_round_trip_numpy_and_tf():
    rng = np.random.default_rng(0)
    boxes = _random_boxes(rng, 500)
    anchors = np.concatenate([rng.uniform(0.1, 0.9, (500, 2)), rng.uniform(0.03, 0.7, (500, 2))],
                             -1).astype(np.float32)
    enc = ssd.encode_boxes(boxes, anchors)
    assert isinstance(enc, np.ndarray) and enc.shape == (500, 4)
    np.testing.assert_allclose(ssd.decode_boxes(enc, anchors), boxes, atol=1e-5)
    enc_tf = ssd.encode_boxes(tf.constant(boxes), anchors)
    assert isinstance(enc_tf, tf.Tensor)
    np.testing.assert_allclose(enc_tf.numpy(), enc, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ssd.decode_boxes(enc_tf, tf.constant(anchors)).numpy(), boxes,
                               atol=1e-5)
    # a box equal to its anchor encodes to zeros
    np.testing.assert_allclose(ssd.encode_boxes(_corners(anchors[:3]), anchors[:3]), 0, atol=1e-5)


# ---- matching -------------------------------------------------------------------------------
def test_match_hand_made_example():
    anchors = np.array([[0.25, 0.25, 0.2, 0.2],    # IoU 0.90 with gt 0
                        [0.25, 0.27, 0.2, 0.2],    # IoU 0.90 with gt 0
                        [0.25, 0.60, 0.2, 0.2],    # no overlap
                        [0.75, 0.75, 0.1, 0.1],    # IoU 0.16 with the small gt 1: its best
                        [0.76, 0.75, 0.2, 0.2]],   # IoU 0.04 with gt 1
                       np.float32)
    gt = np.array([[0.15, 0.16, 0.35, 0.36], [0.73, 0.73, 0.77, 0.77]], np.float32)
    labels = np.array([2, 0], np.int32)
    loc, cls = ssd.match(gt, labels, anchors)
    assert loc.dtype == np.float32 and cls.dtype == np.int32
    np.testing.assert_array_equal(cls, [3, 3, 0, 1, 0])
    np.testing.assert_allclose(loc[0], ssd.encode_boxes(gt[0], anchors[0]), atol=1e-6)
    np.testing.assert_allclose(loc[1], ssd.encode_boxes(gt[0], anchors[1]), atol=1e-6)
    np.testing.assert_allclose(loc[3], ssd.encode_boxes(gt[1], anchors[3]), atol=1e-6)
    np.testing.assert_array_equal(loc[[2, 4]], 0)
    # the decoded targets are the ground truth
    np.testing.assert_allclose(ssd.decode_boxes(loc[[0, 1, 3]], anchors[[0, 1, 3]]),
                               gt[[0, 0, 1]], atol=1e-6)
    # a higher threshold keeps only each gt's best anchor
    _, cls = ssd.match(gt, labels, anchors, iou_threshold=0.95)
    assert (cls > 0).sum() == 2 and cls[3] == 1
    # an image without boxes is all background
    loc, cls = ssd.match(np.zeros((0, 4)), np.zeros(0), anchors)
    assert not cls.any() and not loc.any() and loc.shape == (5, 4)


def test_match_set_groups_boxes_by_image():
    a = ssd.anchors(100)
    rng = np.random.default_rng(1)
    boxes = _random_boxes(rng, 5)
    image_index = np.array([0, 0, 2, 2, 2])
    labels = np.array([0, 1, 2, 3, 4])
    loc, cls = ssd.match_set(boxes, labels, image_index, 3, a)
    assert loc.shape == (3, len(a), 4) and cls.shape == (3, len(a))
    assert not cls[1].any()
    for i, sel in ((0, [0, 1]), (2, [2, 3, 4])):
        l, c = ssd.match(boxes[sel], labels[sel], a)
        np.testing.assert_array_equal(cls[i], c)
        np.testing.assert_array_equal(loc[i], l)


# ---- loss -----------------------------------------------------------------------------------
def test_ssd_loss_hand_computed():
    # image 0: anchors 0, 1 positive (classes 0 and 1 -> targets 1, 2), 8 negatives;
    # image 1: no positives (so max(1, P) = 1 and 3 * 1 hardest negatives)
    a = 10
    cls_targets = np.zeros((2, a), np.int32)
    cls_targets[0, :2] = [1, 2]
    loc_targets = np.zeros((2, a, 4), np.float32)
    loc_targets[0, 1] = [0.1, 0.0, 0.0, -1.0]
    loc_pred = np.full((2, a, 4), 5.0, np.float32)  # negatives' offsets must not count
    loc_pred[0, 0] = [0.5, -2.0, 0.0, 0.0]          # smooth-L1: 0.125 + 1.5
    loc_pred[0, 1] = [0.3, 0.0, 0.0, 0.0]           # 0.5 * 0.2^2 + (1 - 0.5) = 0.52
    b = [3.0, -1.0, 2.0, 0.5, 1.0, -2.0, 4.0, 0.0]  # negatives' class-1 logit
    logits = np.zeros((2, a, 3), np.float32)
    logits[0, 0] = [0.0, 2.0, 0.0]
    logits[0, 1] = [1.0, 0.0, 1.0]
    logits[0, 2:, 1] = b
    logits[1, :8, 1] = b
    logits[1, 8:, 1] = -3.0
    ce_pos = math.log(1 + 2 * math.exp(-2)) + (math.log(2 * math.e + 1) - 1)
    ce_neg = {v: math.log(2 + math.exp(v)) for v in b}  # background logit 0, others 0 and v
    top6 = sum(ce_neg[v] for v in (4.0, 3.0, 2.0, 1.0, 0.5, 0.0))  # 3 * P = 6 of 8
    expected0 = (1.625 + 0.52 + ce_pos + top6) / 2
    expected1 = sum(ce_neg[v] for v in (4.0, 3.0, 2.0))
    loss = ssd.ssd_loss(loc_targets, cls_targets, loc_pred, logits)
    assert loss.dtype == tf.float32 and loss.shape == (2,)
    np.testing.assert_allclose(loss.numpy(), [expected0, expected1], rtol=1e-5)
    # neg_pos_ratio 1: the 2 hardest negatives
    loss = ssd.ssd_loss(loc_targets, cls_targets, loc_pred, logits, neg_pos_ratio=1)
    expected0 = (1.625 + 0.52 + ce_pos + ce_neg[4.0] + ce_neg[3.0]) / 2
    np.testing.assert_allclose(loss.numpy()[0], expected0, rtol=1e-5)


def test_ssd_loss_gradient_and_graph():
    rng = np.random.default_rng(0)
    cls_t = tf.constant(rng.integers(0, 3, (4, 50)) * (rng.random((4, 50)) < 0.1), tf.int32)
    loc_t = tf.constant(rng.normal(size=(4, 50, 4)), tf.float32)
    pred = tf.Variable(rng.normal(size=(4, 50, 7)), dtype=tf.float32)

    @tf.function(jit_compile=True)
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(ssd.ssd_loss(loc_t, cls_t, pred[..., :4], pred[..., 4:]))
        return loss, tape.gradient(loss, pred)

    loss, grad = step()
    eager = tf.reduce_mean(ssd.ssd_loss(loc_t, cls_t, pred[..., :4], pred[..., 4:]))
    np.testing.assert_allclose(loss.numpy(), eager.numpy(), rtol=1e-5)
    assert np.isfinite(grad.numpy()).all() and np.abs(grad.numpy()).sum() > 0


# ---- NMS and postprocess ---------------------------------------------------------------------
def _nms_reference(boxes, scores, threshold, max_output):
    keep = []
    for i in sorted(range(len(scores)), key=lambda i: -scores[i]):
        if len(keep) == max_output:
            break
        if all(ssd.box_iou(boxes[i:i + 1], boxes[j:j + 1])[0, 0] <= threshold for j in keep):
            keep.append(i)
    return keep


def test_nms_matches_brute_force_reference():
    rng = np.random.default_rng(3)
    for trial in range(30):
        n = int(rng.integers(1, 60))
        boxes = _random_boxes(rng, n, 0.05, 0.4)
        scores = rng.permutation(n).astype(np.float32) / n + 0.01
        threshold = float(rng.choice([0.2, 0.45, 0.7]))
        max_output = int(rng.choice([3, 100]))
        got = ssd.nms(boxes, scores, threshold, max_output)
        assert got.dtype == tf.int32
        assert got.numpy().tolist() == _nms_reference(boxes, scores, threshold, max_output)


def test_postprocess_shape_padding_sorting_and_classwise_nms():
    r, c, k = 100, 3, 6
    a = ssd.anchors(r)
    raw = np.zeros((2, len(a), 4 + c + 1), np.float32)
    raw[..., 4] = 10.0  # everything background
    # image 0: anchors 0 and 1 overlap (IoU > 0.45): same class -> one survives, other
    # class -> both; anchor 50 far away, low score; a large box sticking out of the image
    target = np.array([[0.0, 0.0, 0.1, 0.1]], np.float32)
    for i, cls, logit in ((0, 0, 12.0), (1, 0, 11.0), (50, 2, 10.0)):
        raw[0, i, :4] = ssd.encode_boxes(target if i < 2 else _corners(a[i:i + 1]), a[i])
        raw[0, i, 4 + 1 + cls] = logit
    raw[0, 2, :4] = ssd.encode_boxes(target, a[2])
    raw[0, 2, 4 + 2] = 11.5  # class 1, same box as anchors 0/1
    big = len(a) - 1
    raw[0, big, :4] = ssd.encode_boxes(np.array([[-0.2, 0.5, 1.3, 1.1]], np.float32), a[big])
    raw[0, big, 4 + 3] = 10.5
    out = ssd.postprocess(tf.constant(raw), a, max_detections=k)
    assert out.shape == (2, k, 6) and out.dtype == tf.float32
    out = out.numpy()
    scores = out[0, :, 4]
    assert (np.diff(scores) <= 0).all()
    np.testing.assert_array_equal(out[0, :4, 5], [0, 1, 2, 2])
    np.testing.assert_allclose(out[0, 0, :4], target[0], atol=1e-5)
    np.testing.assert_allclose(out[0, 2, :4], [0.0, 0.5, 1.0, 1.0], atol=1e-5)  # clipped
    assert (out[..., :4] >= 0).all() and (out[..., :4] <= 1).all()
    np.testing.assert_allclose(scores[0], 1 / (1 + math.exp(-2) + 2 * math.exp(-12)), rtol=1e-5)
    # padding: rows after the 4 detections of image 0 and all of image 1
    np.testing.assert_array_equal(out[0, 4:], np.tile([0, 0, 0, 0, 0, -1], (k - 4, 1)))
    np.testing.assert_array_equal(out[1], np.tile([0, 0, 0, 0, 0, -1], (k, 1)))

    # graph-safe: the same under tf.function with an unknown batch size
    fn = tf.function(lambda x: ssd.postprocess(x, a, max_detections=k),
                     input_signature=[tf.TensorSpec([None, len(a), 4 + c + 1], tf.float32)])
    np.testing.assert_allclose(fn(tf.constant(raw)).numpy(), out)


def test_resize_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 300, 300, 3), dtype=np.uint8)
    small = ssd.resize_images(images, 100)
    assert small.shape == (2, 100, 100, 3) and small.dtype == tf.float32
    expected = tf.image.resize(images.astype(np.float32) / 255, (100, 100), antialias=True)
    np.testing.assert_allclose(small.numpy(), expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(ssd.resize_images(images, 300).numpy(), images / 255, atol=1e-6)
    np.testing.assert_allclose(ssd.resize_images(images.astype(np.float32) / 255, 100).numpy(),
                               small.numpy(), atol=1e-5)


# ---- model, export ---------------------------------------------------------------------------
def test_build_ssd_shapes_and_params():
    counts = set()
    for r in (100, 150, 300):
        model = ssd.build_ssd(r, 5)
        assert model.output_shape == (None, len(ssd.anchors(r)), 4 + 5 + 1)
        counts.add(model.count_params())
    assert len(counts) == 1 and 100_000 <= counts.pop() <= 150_000
    out = ssd.build_ssd(100, 2, width=0.5)(tf.zeros((3, 100, 100, 3)))
    assert out.shape == (3, len(ssd.anchors(100)), 7)


def _randomised(model, seed=0):
    """Random head biases, so an untrained model makes detections."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if layer.name.endswith("_out"):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 2, bias.shape).astype(np.float32)])
    return model


def test_export_and_load_expert_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    model = _randomised(ssd.build_ssd(100, 3))
    path = ssd.export_ssd(model, 100, tmp_path / "ssd100", max_detections=20)
    assert path == str(tmp_path / "ssd100") and not (tmp_path / "ssd100.partial").exists()
    expert = ssd.load_expert(path, 100)
    assert expert.name == "ssd100" and expert.data_cost == 120000.0
    assert expert.output_shape == (20, 6)
    assert len(expert.variables) == len(model.variables)  # frozen, all visible
    assert not expert.model.trainable_weights
    images = np.random.default_rng(0).integers(0, 256, (5, 300, 300, 3), dtype=np.uint8)
    want = ssd.postprocess(model(ssd.resize_images(images, 100), training=False),
                           ssd.anchors(100), max_detections=20).numpy()
    assert (want[..., 4] > 0).sum() > 20  # there are detections to compare
    np.testing.assert_allclose(expert(images).numpy(), want, atol=1e-5)
    got = ssd.detect(expert, images, batch_size=2)
    assert got.shape == (5, 20, 6) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(ssd.detect(model, images, batch_size=3, max_detections=20), want,
                               atol=1e-5)
    # the serving signature too
    loaded = tf.saved_model.load(path)
    sig = loaded.signatures["serving_default"]
    out = list(sig(images=ssd.resize_images(images, 100)).values())[0]
    np.testing.assert_allclose(out.numpy(), want, atol=1e-5)


@pytest.mark.parametrize("resolution, cost", [(100, 120000), (150, 270000), (300, 1080000)])
def test_data_cost_is_the_float32_bytes_of_the_resized_image(resolution, cost):
    # what Expert measures for load_expert's preprocess on 300x300x3 inputs
    from bmoe_tf.experts import data_cost_bytes

    x = ssd.resize_images(tf.zeros((1, 300, 300, 3), tf.uint8), resolution)
    assert data_cost_bytes(x.shape[1:]) == cost == 3 * resolution ** 2 * 4


# ---- training --------------------------------------------------------------------------------
def _tiny_set(num, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num, 300, 300, 3), dtype=np.uint8)
    per = rng.integers(0, 3, num)
    boxes = _random_boxes(rng, int(per.sum()), 0.1, 0.6).clip(0, 1)
    return types.SimpleNamespace(images=images, boxes=boxes,
                                 labels=rng.integers(0, 2, len(boxes)).astype(np.int32),
                                 image_index=np.repeat(np.arange(num), per).astype(np.int32))


class _Interrupt(Exception):
    pass


class _StopAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self._epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self._epoch:
            raise _Interrupt


@pytest.mark.slow  # ~20 s: keeps make test under 15 minutes on 2 cores
def test_train_ssd_resumes_after_interruption(tmp_path):
    train, val = _tiny_set(32, 0), _tiny_set(8, 1)

    def fresh(seed=0):
        keras.utils.set_random_seed(seed)
        return ssd.build_ssd(100, 2, width=0.5)

    kwargs = dict(epochs=2, batch_size=16, learning_rate=1e-2, seed=3, verbose=0)
    ref = fresh()
    full = ssd.train_ssd(ref, 100, train, val, checkpoint_dir=tmp_path / "a", **kwargs)
    assert len(full["loss"]) == len(full["val_loss"]) == len(full["seconds"]) == 2
    assert all(np.isfinite(full["loss"]))

    model = fresh()
    with pytest.raises(_Interrupt):
        ssd.train_ssd(model, 100, train, val, checkpoint_dir=tmp_path / "b",
                      callbacks=[_StopAt(1)], **kwargs)
    resumed_model = fresh(seed=5)  # other initial weights: the checkpoint must win
    resumed = ssd.train_ssd(resumed_model, 100, train, val, checkpoint_dir=tmp_path / "b",
                            **kwargs)
    assert len(resumed["loss"]) == 2
    np.testing.assert_allclose(resumed["loss"], full["loss"], rtol=1e-4)
    np.testing.assert_allclose(resumed["val_loss"], full["val_loss"], rtol=1e-4)
    for w_ref, w in zip(ref.get_weights(), resumed_model.get_weights()):
        np.testing.assert_allclose(w, w_ref, rtol=1e-4, atol=1e-5)

    # the checkpoints are removed once trained (bmoe_tf.training.resumable_fit)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_train_ssd_checks_resolution():
    with pytest.raises(ValueError, match="does not match resolution"):
        ssd.train_ssd(ssd.build_ssd(100, 2, width=0.5), 150, _tiny_set(4, 0), None, epochs=1)


@pytest.mark.slow  # ~24 s of make test (two traced SSD trainings)
def test_train_ssd_without_checkpoints_and_validation_freq():
    keras.utils.set_random_seed(0)
    model = ssd.build_ssd(100, 2, width=0.5)
    history = ssd.train_ssd(model, 100, _tiny_set(8, 0), _tiny_set(4, 1), epochs=2,
                            batch_size=4, validation_freq=2, verbose=0, flip=False)
    assert len(history["loss"]) == len(history["seconds"]) == 2
    assert len(history["val_loss"]) == 1
