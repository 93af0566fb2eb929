"""The general MAC counter (bmoe_tf.macs): count_macs / mac_table on any built model."""
import pytest

from bmoe_tf import gating, macs
from bmoe_tf.backend import keras, tf
from bmoe_tf.macs import count_macs, mac_table


def test_gating_re_exports_the_counter():
    assert gating.count_macs is macs.count_macs
    assert gating.mac_table is macs.mac_table


def test_count_macs_conv_and_dense():
    inputs = keras.Input((10, 12, 3))
    x = keras.layers.Conv2D(8, (3, 5), strides=(1, 2), activation="relu")(inputs)  # 8x4x8
    x = keras.layers.MaxPooling2D(2)(x)  # 4x2x8
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(7)(x)
    model = keras.Model(inputs, outputs)
    conv = 8 * 4 * (3 * 5 * 3 * 8)
    assert [row["macs"] for row in mac_table(model)] == [conv, 0, 0, 64 * 7]
    assert count_macs(model) == conv + 64 * 7 == 11968

    seq = keras.Sequential([keras.Input((5, 6)), keras.layers.Dense(4), keras.layers.Dense(2)])
    assert count_macs(seq) == 5 * 6 * 4 + 5 * 4 * 2  # leading non-batch dim 5


def test_count_macs_other_convolutions():
    inputs = keras.Input((9, 9, 8))
    x = keras.layers.Conv2D(16, 3, groups=4)(inputs)              # 7x7x16
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2)(x)    # 5x5x32
    x = keras.layers.Conv2DTranspose(4, 2, strides=2)(x)          # 10x10x4
    model = keras.Model(inputs, x)
    assert [row["macs"] for row in mac_table(model)] == [
        7 * 7 * 3 * 3 * 2 * 16, 0, 5 * 5 * 3 * 3 * 16 * 2, 5 * 5 * 2 * 2 * 4 * 32]
    seq = keras.Sequential([keras.Input((10, 6)), keras.layers.Conv1D(5, 3, padding="causal")])
    assert count_macs(seq) == 10 * 3 * 6 * 5


def test_count_macs_recurses_into_nested_models_and_layers():
    inner = keras.Sequential([keras.Input((10,)), keras.layers.Dense(6), keras.layers.Dense(2)],
                             name="inner")
    inputs = keras.Input((10,))
    outer = keras.Model(inputs, inner(inputs) + inner(inputs))  # shared: counted per call
    rows = [row for row in mac_table(outer) if row["type"] == "Dense"]
    assert [row["layer"] for row in rows] == ["inner/" + layer.name for layer in inner.layers] * 2
    assert count_macs(outer) == 2 * (10 * 6 + 6 * 2)

    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.first = keras.layers.Dense(8)
            self.second = keras.layers.Dense(4)

        def call(self, x):
            return self.second(tf.nn.relu(self.first(x)))

    inputs = keras.Input((5, 16))
    model = keras.Model(inputs, Block(name="block")(inputs))
    rows = mac_table(model)
    assert [(row["layer"], row["macs"]) for row in rows] == [
        ("block/" + model.layers[1].first.name, 5 * 16 * 8),
        ("block/" + model.layers[1].second.name, 5 * 8 * 4)]
    assert "call" not in model.layers[1].first.__dict__  # the trace left no patch behind


def test_count_macs_subclassed_model():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3)
            self.flatten = keras.layers.Flatten()
            self.head = keras.layers.Dense(2)

        def call(self, x):
            return self.head(self.flatten(self.conv(x)))

    net = Net()
    with pytest.raises(ValueError, match="not built"):
        count_macs(net)
    net(tf.zeros((2, 8, 8, 3)))
    assert count_macs(net) == 6 * 6 * 3 * 3 * 3 * 4 + 144 * 2


def test_count_macs_unknown_weighted_layer_raises():
    class Scale(keras.layers.Layer):
        def build(self, input_shape):
            self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], 3))

        def call(self, x):
            return tf.matmul(x, self.kernel)

    inputs = keras.Input((4,))
    model = keras.Model(inputs, Scale(name="my_scale")(keras.layers.ReLU()(inputs)))
    with pytest.raises(ValueError, match="my_scale"):
        count_macs(model)


def test_count_macs_refuses_what_it_cannot_count():
    inputs = keras.Input((5, 3))
    with pytest.raises(ValueError, match="control flow"):  # the cell runs in a while loop
        count_macs(keras.Model(inputs, keras.layers.SimpleRNN(4)(inputs)))
    with pytest.raises(ValueError, match="lstm"):  # fused kernel, the cell is never called
        count_macs(keras.Model(inputs, keras.layers.LSTM(4, name="lstm")(inputs)))
    inputs = keras.Input((None, 3))
    with pytest.raises(ValueError, match="unknown dimension"):
        count_macs(keras.Model(inputs, keras.layers.Dense(2)(inputs)))




def test_count_macs_refuses_a_non_layer():
    with pytest.raises(TypeError, match="Keras model or layer"):
        count_macs("not a model")
    with pytest.raises(TypeError, match="Keras model or layer"):
        mac_table(42)
