"""Frozen TF1 GraphDefs (Object Detection API exports) as experts: bmoe_tf.frozen_graph."""
import numpy as np
import pytest

from bmoe_tf import Expert, FrozenGraph, detection_outputs
from bmoe_tf.backend import tf
from bmoe_tf.cache import build_expert_cache

OUTPUTS = ["detection_boxes:0", "detection_scores:0", "detection_classes:0", "num_detections:0"]
NUM_DETECTIONS = 3
WEIGHTS = {"a": [1.0, 0.5, 0.25], "b": [0.2, 0.3, 0.4]}


def _write_od_graph(directory, filename, weights, batch=None):
    """A tiny stand-in for an Object Detection API ``frozen_inference_graph.pb``.

    ``image_tensor`` uint8 [batch, H, W, 3] -> 100 boxes placed at the mean colour
    (m_r, m_g, m_r + .5, m_g + .5), scores ``(mean colour . w) * linspace(1, .01)``
    with w a Variable frozen into a constant, classes 1, 2, 1, 2, ... and
    ``num_detections`` = 3.
    """
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.uint8, [batch, None, None, 3], name="image_tensor")
        pixels = tf.cast(image, tf.float64)  # float64 sums: no float32 drift over 90k pixels
        mean = tf.cast(tf.reduce_mean(pixels, axis=[1, 2]) / 255.0, tf.float32)  # [B, 3]
        w = tf.compat.v1.get_variable("w", initializer=tf.constant([weights]))
        size = tf.shape(image)[0]
        score = tf.reduce_sum(mean * w, axis=1, keepdims=True)
        corner = tf.stack([mean[:, 0], mean[:, 1], mean[:, 0] + 0.5, mean[:, 1] + 0.5], axis=1)
        tf.tile(corner[:, None, :], [1, 100, 1], name="detection_boxes")
        tf.identity(score * tf.linspace(1.0, 0.01, 100)[None], name="detection_scores")
        tf.identity(tf.tile(tf.constant([[1.0, 2.0]]), [size, 50]), name="detection_classes")
        tf.identity(tf.fill([size], float(NUM_DETECTIONS)), name="num_detections")
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                sess, graph.as_graph_def(), [n.split(":")[0] for n in OUTPUTS])
    assert not any(n.op.startswith("Variable") for n in frozen.node)
    tf.io.write_graph(frozen, str(directory), filename, as_text=False)
    return str(directory / filename)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    root = tmp_path_factory.mktemp("frozen")
    return {name: _write_od_graph(root, f"{name}.pb", w) for name, w in WEIGHTS.items()} | {
        "batch1": _write_od_graph(root, "batch1.pb", WEIGHTS["a"], batch=1), "dir": root}


def _images(count=4, size=300):
    """Uniform-colour images in [0, 1] whose colours are exact multiples of 1/255."""
    colours = np.random.default_rng(0).integers(0, 256, (count, 3)) / 255.0
    return np.broadcast_to(colours[:, None, None, :], (count, size, size, 3)).astype(np.float32)


def _expected(x, weights):
    """detection_outputs of the graph on images x, computed with numpy."""
    mean = x.mean(axis=(1, 2)).astype(np.float64)
    out = np.zeros((len(x), 100, 6))
    out[..., 5] = -1
    ramp = np.linspace(1.0, 0.01, 100)
    for j in range(NUM_DETECTIONS):
        out[:, j, :4] = np.stack([mean[:, 0], mean[:, 1], mean[:, 0] + .5, mean[:, 1] + .5], 1)
        out[:, j, 4] = mean @ np.asarray(weights) * ramp[j]
        out[:, j, 5] = j % 2
    return out


def _to_pixels(resolution):
    return lambda x, r=resolution: tf.image.resize(x, (r, r)) * 255.0


def _od_expert(path, resolution, name):
    return Expert.from_frozen_graph(path, "image_tensor:0", OUTPUTS, combine=detection_outputs,
                                    input_dtype=tf.uint8, preprocess=_to_pixels(resolution),
                                    name=name, input_shape=(300, 300, 3))


def test_od_frozen_graph_expert(graphs):
    expert = _od_expert(graphs["a"], 150, "ssd150")
    assert isinstance(expert.model, FrozenGraph)
    assert expert.output_shape == (100, 6) and expert.output_dtype == tf.float32
    assert expert.data_cost == 3 * 150 * 150 * 4  # the float32 bytes of P_n(x): 270 kB
    assert not expert.model.trainable
    assert expert.model.trainable_variables == [] and expert.variables == []
    x = _images()
    np.testing.assert_allclose(expert(x).numpy(), _expected(x, WEIGHTS["a"]), atol=1e-6)
    graph_fn = tf.function(lambda t: expert(t))  # also inside a tf.function
    np.testing.assert_allclose(graph_fn(tf.constant(x)).numpy(), expert(x).numpy())
    # a graph with a static batch of 1 takes any batch, one example at a time
    one = _od_expert(graphs["batch1"], 150, "one")
    np.testing.assert_allclose(one(x).numpy(), expert(x).numpy(), atol=1e-7)


def test_single_output_and_dtype_handling(graphs):
    layer = FrozenGraph(graphs["a"], "image_tensor", "num_detections:0")
    assert layer.graph_input_dtype == tf.uint8
    assert layer(tf.zeros((2, 8, 8, 3))).numpy().tolist() == [3.0, 3.0]
    # values are rounded and saturated to uint8, not wrapped around
    boxes = FrozenGraph(graphs["a"], "image_tensor:0", "detection_boxes:0")
    x = np.full((1, 4, 4, 3), 300.0, np.float32)
    np.testing.assert_allclose(boxes(x).numpy()[0, 0], [1.0, 1.0, 1.5, 1.5])
    assert FrozenGraph.from_config(
        FrozenGraph(graphs["a"], "image_tensor:0", OUTPUTS, combine=detection_outputs)
        .get_config()).combine is detection_outputs


def test_frozen_graph_experts_in_the_outputs_cache(graphs):
    experts = [_od_expert(graphs["a"], 150, "a150"), _od_expert(graphs["b"], 300, "b300")]
    x = _images(5)
    cache = build_expert_cache(experts, x, kind="outputs", batch_size=2, verbose=0)
    assert cache["outputs"].shape == (5, 2, 100, 6)
    np.testing.assert_allclose(cache["outputs"][:, 0], _expected(x, WEIGHTS["a"]), atol=1e-6)
    np.testing.assert_allclose(cache["outputs"][:, 1], _expected(x, WEIGHTS["b"]), atol=1e-6)


def test_detection_outputs_pads_beyond_num_detections():
    boxes = tf.reshape(tf.range(24, dtype=tf.float32), (2, 3, 4))
    scores = tf.constant([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]])
    classes = tf.constant([[1.0, 3.0, 2.0], [2.0, 2.0, 1.0]])
    out = detection_outputs([boxes, scores, classes, tf.constant([2.0, 0.0])]).numpy()
    np.testing.assert_array_equal(out[0, :2], np.float32([[0, 1, 2, 3, 0.9, 0],
                                                          [4, 5, 6, 7, 0.8, 2]]))
    np.testing.assert_array_equal(out[0, 2], [0, 0, 0, 0, 0, -1])
    np.testing.assert_array_equal(out[1], [[0, 0, 0, 0, 0, -1]] * 3)
    with pytest.raises(ValueError, match="4 tensors"):
        detection_outputs([boxes, scores])


def test_bad_files_and_names(graphs):
    root = graphs["dir"]
    with pytest.raises(ValueError, match="missing.pb"):
        FrozenGraph(str(root / "missing.pb"), "image_tensor:0", OUTPUTS[0])
    (root / "garbage.pb").write_bytes(b"\xff\xfe not a graph \x00\x13\x37" * 10)
    with pytest.raises(ValueError, match="garbage.pb.*not a GraphDef"):
        FrozenGraph(str(root / "garbage.pb"), "image_tensor:0", OUTPUTS[0])
    (root / "empty.pb").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pb.*no nodes"):
        FrozenGraph(str(root / "empty.pb"), "image_tensor:0", OUTPUTS[0])
    with pytest.raises(ValueError, match=r"a\.pb.*'input:0'.*placeholders: image_tensor"):
        FrozenGraph(graphs["a"], "input:0", OUTPUTS[0])
    with pytest.raises(ValueError, match=r"'detection_masks:0'.*num_detections"):
        FrozenGraph(graphs["a"], "image_tensor:0", ["detection_masks:0"])
    with pytest.raises(ValueError, match="combine"):
        FrozenGraph(graphs["a"], "image_tensor:0", OUTPUTS)
    with pytest.raises(ValueError, match="input_dtype float32 differs.*uint8"):
        FrozenGraph(graphs["a"], "image_tensor:0", OUTPUTS[0], input_dtype=tf.float32)
    with pytest.raises(ValueError, match="from_frozen_graph"):
        Expert(graphs["a"])
