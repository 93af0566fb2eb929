"""Experts of the action task (Section IV-D): Temporal, Spatial and Fusion classifiers.

Three frozen experts classify one clip into C actions; each returns class
probabilities ``float32[B, C]`` (softmax):

* **Temporal** (:func:`build_temporal`) sees only the F_t motion-vector maps
  ``mv [B, F_t, 24, 24, 2]`` (pixels per frame, as in :mod:`experiments.action.clips`),
  in the spirit of EMV-CNN / MV-3DCNN: the maps are stacked on channels as the
  paper's gate input (24 x 24 x 2F_t), scaled by 1/4, plus F_t magnitude maps
  (24 x 24 x 3F_t in all); 3x3 convolutions with BatchNorm and ReLU (48 at 24x24, 64
  stride 2 at 12x12, 64, 96 stride 2 at 6x6); the 6x6 map feeds a global average
  pool, a global max pool and a 1x1 convolution to 16 channels flattened (576
  values that keep *where* the motion is: a zoom is a divergence, the same flow
  with the sign flipped on either side of the centre); their concatenation feeds
  ``hidden`` (dense 64, ReLU: the features of :func:`temporal_features`), dropout
  0.3 and the dense C logits.
* **Spatial** (:func:`build_spatial`) sees only the F_s RGB frames
  ``rgb [B, F_s, S, S, 3]`` (float32 in [0, 1]), stacked on channels (S x S x 3F_s),
  mapped to [-1, 1] and, beside that, standardised per clip (:class:`ClipStandardize`,
  an automatic gain: 6F_s channels in all); five 3x3 convolutions with BatchNorm and ReLU (16 /2, 32
  /2, 32, 64 /2, 128 /2), global average pool, ``hidden`` (dense 64, ReLU), dropout
  0.3, dense C logits.
* **Fusion** (:func:`build_fusion`) sees both: late fusion of the two trained,
  frozen streams (no new CNN), ``z = a * log_softmax(T) + c * log_softmax(S) + bias``
  with ``a, c >= 0`` and ``bias [C]`` fitted on held-out clips (:func:`fit_fusion`),
  probabilities ``softmax(z)``.

Packing. A :class:`bmoe_tf.Expert` takes one raw input tensor, so a clip is packed
into one float32 vector of L = F_t*24*24*2 + F_s*S*S*3 values (:func:`pack`)::

    [ mv.reshape(-1)  (F_t*24*24*2 values)  |  rgb.reshape(-1) / 255  (F_s*S*S*3 values) ]

(C order of each clip's arrays). P_n of each expert (:func:`preprocess`) slices its
modality back out: Temporal the first part reshaped to ``[B, F_t, 24, 24, 2]``,
Spatial the second part reshaped to ``[B, F_s, S, S, 3]``, Fusion the whole vector.
The data cost d_n is given by the task (the paper's byte counts), not measured.

Export. :func:`export_expert` writes a TF2 SavedModel whose ``__call__`` (also
the ``serving_default`` signature) takes the kind's input (Temporal: mv float32
``[B, F_t, 24, 24, 2]``; Spatial: rgb float32 in [0, 1] ``[B, F_s, S, S, 3]``;
Fusion: the packed ``[B, L]``) and returns the softmax probabilities; beside it
``expert.json`` records kind, shapes and C. The Temporal SavedModel has a second
function, ``features`` (also the ``features`` signature): mv -> the ``hidden``
layer ``float32[B, 64]`` (used by :func:`temporal_features`). The Temporal and
Spatial exports also keep the network's Keras weights (``keras/weights.*``, a TF
checkpoint), so :func:`load_stream_model` can rebuild the logits network (e.g. to
fit and build the Fusion expert in a later process).
"""
import functools
import json
import math
import os

import numpy as np
from scipy.optimize import minimize

from bmoe_tf.backend import keras, tf
from bmoe_tf.experts import Expert
from bmoe_tf.training import resumable_fit
from experiments.action.clips import MV_GRID
from experiments.stages import atomic_dir

__all__ = [
    "ClipStandardize", "HIDDEN_UNITS", "KINDS", "MV_SCALE", "LateFusion", "ModalitySlice",
    "MotionInput",
    "StackFrames", "StatelessDropout", "build_fusion", "build_spatial", "build_temporal",
    "export_expert", "fit_fusion", "load_expert", "load_stream_model", "pack", "packed_length",
    "predict_probabilities", "preprocess", "stream_logits", "temporal_features",
    "train_classifier",
]

#: Expert kinds, in the paper's order {Temporal, Spatial, Fusion}.
KINDS = ("temporal", "spatial", "fusion")
#: Width of the ``hidden`` layer (the t-SNE features).
HIDDEN_UNITS = 64
#: Motion vectors are multiplied by this before the first convolution.
MV_SCALE = 0.25
_EXPERT_JSON = "expert.json"
#: Checkpoint prefix (inside an exported Temporal / Spatial expert) of the network's
#: Keras weights, for :func:`load_stream_model`.
_STREAM_WEIGHTS = os.path.join("keras", "weights")
_FORMAT = "bmoe-act-expert"
_DROPOUT = 0.3
_BN_MOMENTUM = 0.9


# ---- packing -----------------------------------------------------------------------------
def _mv_length(mv_frames):
    return int(mv_frames) * MV_GRID * MV_GRID * 2


def _rgb_length(rgb_frames, frame_size):
    return int(rgb_frames) * int(frame_size) * int(frame_size) * 3


def packed_length(mv_frames, rgb_frames, frame_size):
    """L, values of one packed clip: ``F_t * 24 * 24 * 2 + F_s * S * S * 3``."""
    return _mv_length(mv_frames) + _rgb_length(rgb_frames, frame_size)


def pack(mv, rgb):
    """Packs clips into the experts' raw input.

    Args:
      mv: ``[M, F_t, 24, 24, 2]`` motion vectors (float16 or float32).
      rgb: ``[M, F_s, S, S, 3]`` uint8 frames.
    Returns:
      ``float32[M, L]``: each row ``[mv.reshape(-1), rgb.reshape(-1) / 255]``.
    """
    mv = np.asarray(mv)
    rgb = np.asarray(rgb)
    if mv.ndim != 5 or mv.shape[2:] != (MV_GRID, MV_GRID, 2):
        raise ValueError(f"mv must be [M, F_t, {MV_GRID}, {MV_GRID}, 2], got {mv.shape}")
    if rgb.ndim != 5 or rgb.shape[-1] != 3 or rgb.shape[2] != rgb.shape[3]:
        raise ValueError(f"rgb must be [M, F_s, S, S, 3], got {rgb.shape}")
    if len(mv) != len(rgb):
        raise ValueError(f"mv has {len(mv)} clips, rgb has {len(rgb)}")
    m, n_mv = len(mv), _mv_length(mv.shape[1])
    out = np.empty((m, n_mv + _rgb_length(rgb.shape[1], rgb.shape[2])), np.float32)
    out[:, :n_mv] = mv.reshape(m, -1)
    rgb_part = rgb.reshape(m, -1).astype(np.float32)
    if rgb.dtype == np.uint8:
        rgb_part /= np.float32(255.0)
    out[:, n_mv:] = rgb_part
    return out


def _modality_input_shape(kind, mv_frames, rgb_frames, frame_size):
    if kind == "temporal":
        return (int(mv_frames), MV_GRID, MV_GRID, 2)
    if kind == "spatial":
        return (int(rgb_frames), int(frame_size), int(frame_size), 3)
    if kind == "fusion":
        return (packed_length(mv_frames, rgb_frames, frame_size),)
    raise ValueError(f"unknown expert kind {kind!r}; allowed: {', '.join(KINDS)}")


def preprocess(packed, kind, *, mv_frames, rgb_frames, frame_size):
    """P_n: the kind's modality of packed clips ``[B, L]`` (tf or numpy) as float32 tf.

    Temporal: ``[B, F_t, 24, 24, 2]``; Spatial: ``[B, F_s, S, S, 3]`` in [0, 1];
    Fusion: the packed ``[B, L]`` itself. Graph-safe.
    """
    x = tf.convert_to_tensor(packed)
    if x.dtype != tf.float32:
        x = tf.cast(x, tf.float32)
    length = packed_length(mv_frames, rgb_frames, frame_size)
    if x.shape.rank != 2 or (x.shape[-1] is not None and x.shape[-1] != length):
        raise ValueError(f"packed clips must be [B, {length}] (F_t={mv_frames}, "
                         f"F_s={rgb_frames}, S={frame_size}), got shape {x.shape}")
    n_mv = _mv_length(mv_frames)
    shape = _modality_input_shape(kind, mv_frames, rgb_frames, frame_size)
    if kind == "temporal":
        return tf.reshape(x[:, :n_mv], (-1,) + shape)
    if kind == "spatial":
        return tf.reshape(x[:, n_mv:], (-1,) + shape)
    return x


# ---- layers ------------------------------------------------------------------------------
def _stack_frames(x):
    shape = tf.shape(x)
    f, k = x.shape[1], x.shape[4]
    return tf.reshape(tf.transpose(x, (0, 2, 3, 1, 4)),
                      tf.stack([shape[0], shape[2], shape[3], f * k]))


@keras.utils.register_keras_serializable(package="bmoe_act")
class StackFrames(keras.layers.Layer):
    """``[B, F, H, W, K] -> [B, H, W, F * K]`` (channel ``f * K + k``)."""

    def call(self, inputs):
        return _stack_frames(inputs)

    def compute_output_shape(self, input_shape):
        s = tf.TensorShape(input_shape)
        return tf.TensorShape([s[0], s[2], s[3], s[1] * s[4]])


@keras.utils.register_keras_serializable(package="bmoe_act")
class MotionInput(keras.layers.Layer):
    """``mv [B, F_t, 24, 24, 2] -> [B, 24, 24, 3 F_t]``: the 2F_t scaled (u, v) channels
    (:class:`StackFrames` order), then the F_t magnitudes ``scale * |(u, v)|``."""

    def __init__(self, scale=MV_SCALE, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        x = tf.cast(inputs, tf.float32) * self.scale
        magnitude = tf.sqrt(tf.reduce_sum(tf.square(x), -1, keepdims=True) + 1e-12)
        return tf.concat([_stack_frames(x), _stack_frames(magnitude)], -1)

    def compute_output_shape(self, input_shape):
        s = tf.TensorShape(input_shape)
        return tf.TensorShape([s[0], s[2], s[3], s[1] * 3])

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


@keras.utils.register_keras_serializable(package="bmoe_act")
class StatelessDropout(keras.layers.Layer):
    """Dropout whose masks are a function of ``(seed, seed_offset, step)``.

    ``step`` is a non-trainable weight counting training calls, so it is saved in
    checkpoints with the model: a resumed training draws the same masks as an
    uninterrupted one (Keras' Dropout draws from a per-process random state).
    :func:`train_classifier` sets ``seed_offset`` to its ``seed``.
    """

    def __init__(self, rate, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = int(seed)
        self.seed_offset = 0

    def build(self, input_shape):
        self.step = self.add_weight(name="step", shape=(), dtype=tf.int64, trainable=False,
                                    initializer="zeros")
        super().build(input_shape)

    def _dropped(self, inputs):
        step = self.step.assign_add(1)
        seed = tf.stack([tf.constant(self.seed * 1_000_003 + self.seed_offset, tf.int64), step])
        return tf.nn.experimental.stateless_dropout(inputs, self.rate, seed=seed)

    def call(self, inputs, training=None):
        if training is None:
            training = keras.backend.learning_phase()
        if self.rate <= 0:
            return inputs
        if isinstance(training, (bool, int)):
            return self._dropped(inputs) if training else tf.identity(inputs)
        return tf.cond(tf.cast(training, tf.bool), lambda: self._dropped(inputs),
                       lambda: tf.identity(inputs))

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.utils.register_keras_serializable(package="bmoe_act")
class ModalitySlice(keras.layers.Layer):
    """:func:`preprocess` as a layer: packed ``[B, L]`` -> the ``kind``'s modality."""

    def __init__(self, kind, mv_frames, rgb_frames, frame_size, **kwargs):
        super().__init__(**kwargs)
        _modality_input_shape(kind, mv_frames, rgb_frames, frame_size)  # checks kind
        self.kind = kind
        self.mv_frames, self.rgb_frames = int(mv_frames), int(rgb_frames)
        self.frame_size = int(frame_size)

    def call(self, inputs):
        return preprocess(inputs, self.kind, mv_frames=self.mv_frames,
                          rgb_frames=self.rgb_frames, frame_size=self.frame_size)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape([input_shape[0]]) + _modality_input_shape(
            self.kind, self.mv_frames, self.rgb_frames, self.frame_size)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "mv_frames": self.mv_frames,
                "rgb_frames": self.rgb_frames, "frame_size": self.frame_size}


@keras.utils.register_keras_serializable(package="bmoe_act")
class LateFusion(keras.layers.Layer):
    """``[T, S]`` logits ``[B, C]`` each -> ``softmax(a log_softmax(T) + c log_softmax(S)
    + bias)``; a, c and bias are non-trainable weights."""

    def __init__(self, temporal_weight=1.0, spatial_weight=1.0, bias=None, **kwargs):
        super().__init__(**kwargs)
        self.temporal_weight = float(temporal_weight)
        self.spatial_weight = float(spatial_weight)
        self.bias_init = None if bias is None else [float(b) for b in bias]

    def build(self, input_shape):
        c = int(input_shape[0][-1])
        bias = np.zeros(c) if self.bias_init is None else np.asarray(self.bias_init)
        if bias.shape != (c,):
            raise ValueError(f"fusion bias has {bias.size} values, the streams {c} classes")
        const = keras.initializers.Constant
        self.a = self.add_weight(name="temporal_weight", shape=(), trainable=False,
                                 initializer=const(self.temporal_weight))
        self.c = self.add_weight(name="spatial_weight", shape=(), trainable=False,
                                 initializer=const(self.spatial_weight))
        self.bias = self.add_weight(name="bias", shape=(c,), trainable=False,
                                    initializer=const(bias.tolist()))
        super().build(input_shape)

    def call(self, inputs):
        t, s = (tf.nn.log_softmax(tf.cast(x, tf.float32), -1) for x in inputs)
        return tf.nn.softmax(self.a * t + self.c * s + self.bias, -1)

    def compute_output_shape(self, input_shape):
        return tf.TensorShape(input_shape[0])

    def get_config(self):
        return {**super().get_config(), "temporal_weight": self.temporal_weight,
                "spatial_weight": self.spatial_weight, "bias": self.bias_init}


# ---- models ------------------------------------------------------------------------------
def _conv_bn(x, filters, stride, name, kernel=3):
    x = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                            name=name)(x)
    x = keras.layers.BatchNormalization(momentum=_BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _head(x, num_classes):
    x = keras.layers.Dense(HIDDEN_UNITS, activation="relu", name="hidden")(x)
    x = StatelessDropout(_DROPOUT, seed=1, name="dropout")(x)
    return keras.layers.Dense(int(num_classes), name="logits")(x)


def _check_classes(num_classes):
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")


def build_temporal(mv_frames, num_classes):
    """The Temporal expert's network: mv float32 ``[B, F_t, 24, 24, 2]`` -> logits ``[B, C]``.

    See the module docstring for the layers; the ``hidden`` layer (dense 64, ReLU)
    is the last hidden layer. 193,246 weights (``count_params``) at F_t = 16, C = 13.
    """
    _check_classes(num_classes)
    if int(mv_frames) < 1:
        raise ValueError(f"mv_frames must be >= 1, got {mv_frames}")
    inputs = keras.Input((int(mv_frames), MV_GRID, MV_GRID, 2), name="mv")
    x = MotionInput(name="motion_input")(inputs)
    x = _conv_bn(x, 48, 1, "conv1")
    x = _conv_bn(x, 64, 2, "conv2")
    x = _conv_bn(x, 64, 1, "conv3")
    x = _conv_bn(x, 96, 2, "conv4")  # 6 x 6
    layout = keras.layers.Conv2D(16, 1, activation="relu", name="layout")(x)
    x = keras.layers.Concatenate(name="pooled")([
        keras.layers.GlobalAveragePooling2D(name="avg_pool")(x),
        keras.layers.GlobalMaxPooling2D(name="max_pool")(x),
        keras.layers.Flatten(name="layout_flat")(layout)])
    return keras.Model(inputs, _head(x, num_classes), name="temporal")


@keras.utils.register_keras_serializable(package="bmoe_act")
class ClipStandardize(keras.layers.Layer):
    """Per-clip auto-gain: ``(x - mean) / max(std, floor)`` over all of a clip's values
    (``[B, ...]``, statistics per example), so that a low-contrast (flat) clip reaches
    the network at full contrast, as a camera's automatic gain would deliver it."""

    def __init__(self, floor=0.01, **kwargs):
        super().__init__(**kwargs)
        self.floor = float(floor)

    def call(self, inputs):
        axes = list(range(1, inputs.shape.rank))
        mean, var = tf.nn.moments(inputs, axes=axes, keepdims=True)
        return (inputs - mean) / tf.maximum(tf.sqrt(var), self.floor)

    def get_config(self):
        return dict(super().get_config(), floor=self.floor)


def build_spatial(rgb_frames, frame_size, num_classes):
    """The Spatial expert's network: rgb float32 ``[B, F_s, S, S, 3]`` in [0, 1] ->
    logits ``[B, C]`` (S >= 16). 117,902 weights at F_s = 2, C = 13 (any S). Each clip
    enters both as is (brightness and colour tell sources apart) and standardised
    (:class:`ClipStandardize`: the flat, low-contrast clips of the generated set keep
    their content)."""
    _check_classes(num_classes)
    f, s = int(rgb_frames), int(frame_size)
    if f < 1 or s < 16:
        raise ValueError(f"need rgb_frames >= 1 and frame_size >= 16, got {rgb_frames}, "
                         f"{frame_size}")
    inputs = keras.Input((f, s, s, 3), name="rgb")
    x = StackFrames(name="stack_frames")(inputs)
    x = keras.layers.Concatenate(name="with_auto_gain")(
        [keras.layers.Rescaling(2.0, -1.0, name="to_signed")(x),
         ClipStandardize(name="auto_gain")(x)])
    for i, (filters, stride) in enumerate(((16, 2), (32, 2), (32, 1), (64, 2), (128, 2))):
        x = _conv_bn(x, filters, stride, f"conv{i + 1}")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, _head(x, num_classes), name="spatial")


# ---- training ----------------------------------------------------------------------------
def _to_float(x):
    return tf.cast(x, tf.float32) / 255.0 if x.dtype == tf.uint8 else tf.cast(x, tf.float32)


def train_classifier(model, inputs, labels, val_inputs=None, val_labels=None, *, epochs,
                     batch_size=64, learning_rate=1e-3, seed=0, checkpoint_dir=None, verbose=1,
                     label_smoothing=0.0, callbacks=()):
    """Trains a Temporal or Spatial network with Adam on softmax cross-entropy of its logits.

    Every epoch visits all clips in a permutation drawn from ``(seed, epoch)``
    (the last batch smaller), so an epoch sees the same batches however the run
    was interrupted; dropout masks are a function of ``(seed, step)``
    (:class:`StatelessDropout`). No augmentation (a flip would turn a pan left into
    a pan right). The learning rate decays from ``learning_rate`` to 1 % of it
    (cosine) over all epochs. ``keras.utils.set_random_seed(seed)`` is called first.

    Args:
      model: from :func:`build_temporal` / :func:`build_spatial` (logits out).
      inputs: the model's modality for M clips: mv ``[M, F_t, 24, 24, 2]`` (float16 /
        float32) or rgb ``[M, F_s, S, S, 3]`` (uint8, scaled by 1/255 per batch, or
        float in [0, 1]).
      labels: int ``[M]``.
      val_inputs, val_labels: optional held-out clips (loss and accuracy per epoch).
      epochs: total epochs (those done before a resume included).
      checkpoint_dir: when given, Keras ``BackupAndRestore`` checkpoints model,
        optimizer and epoch there after every epoch (``chief/``), and the epochs'
        logs go to ``history.json``; a later call with the same arguments resumes
        after the last finished epoch (a killed run loses at most one epoch). Both
        are deleted when training ends (the folder too when then empty):
        :func:`bmoe_tf.training.resumable_fit`.
      verbose: 0 silent, 1 one line per epoch, 2 Keras progress bars too.
      label_smoothing: > 0 trains on smoothed one-hot targets.
      callbacks: extra Keras callbacks (run after the checkpoint of each epoch).

    Returns:
      The history of all epochs (also those before a resume): ``loss``,
      ``accuracy``, ``seconds`` per epoch and ``val_loss``, ``val_accuracy`` when
      validating.
    """
    keras.utils.set_random_seed(int(seed))
    x = np.asarray(inputs)
    y = np.asarray(labels).astype(np.int32).reshape(-1)
    n, num_classes = len(y), int(model.output_shape[-1])
    if n == 0 or len(x) != n:
        raise ValueError(f"need a non-empty training set with one label per clip, got "
                         f"{len(x)} inputs and {n} labels")
    if tuple(x.shape[1:]) != tuple(model.input_shape[1:]):
        raise ValueError(f"inputs {x.shape} do not match the model input {model.input_shape}")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    batch_size = int(min(batch_size, n))
    steps = math.ceil(n / batch_size)
    for layer in model.submodules:
        if isinstance(layer, StatelessDropout):
            layer.seed_offset = int(seed)

    schedule = keras.optimizers.schedules.CosineDecay(float(learning_rate),
                                                      max(1, epochs * steps), alpha=0.01)
    optimizer = keras.optimizers.Adam(schedule)
    if label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(from_logits=True,
                                                    label_smoothing=float(label_smoothing))
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])

    def target(t):
        return tf.one_hot(t, num_classes) if label_smoothing else t

    x_all, y_all = tf.constant(x), tf.constant(y)
    no_autograph = tf.autograph.experimental.do_not_convert

    def data(first_epoch):
        epoch_sets = [tf.data.Dataset.from_tensor_slices(
            np.random.default_rng([int(seed), e]).permutation(n).astype(np.int32))
            .batch(batch_size) for e in range(first_epoch, epochs)]
        train = epoch_sets[0]
        for more in epoch_sets[1:]:
            train = train.concatenate(more)
        return train.map(no_autograph(lambda i: (_to_float(tf.gather(x_all, i)),
                                                 target(tf.gather(y_all, i)))),
                         num_parallel_calls=1, deterministic=True).prefetch(2)

    val = None
    if val_inputs is not None and len(val_inputs):
        val = (tf.data.Dataset.from_tensor_slices(
            (np.asarray(val_inputs), np.asarray(val_labels).astype(np.int32).reshape(-1)))
               .batch(256).map(no_autograph(lambda a, b: (_to_float(a), target(b)))))
    return resumable_fit(model, data, epochs=int(epochs), steps_per_epoch=steps,
                         validation_data=val, checkpoint_dir=checkpoint_dir, verbose=verbose,
                         callbacks=callbacks)


# ---- fusion ------------------------------------------------------------------------------
def _log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def fit_fusion(temporal_logits, spatial_logits, labels, *, l2=1e-3):
    """Fits the late fusion ``z = a log_softmax(T) + c log_softmax(S) + bias`` on held-out clips.

    Minimises the mean negative log-likelihood of ``softmax(z)`` plus
    ``l2 * ((a - 1)^2 + (c - 1)^2 + |bias|^2)`` (keeps the fit finite when the
    held-out clips are separable or miss a class) with L-BFGS-B, ``a, c in [0, 20]``,
    starting from ``a = c = 1``, ``bias = 0``.

    Args:
      temporal_logits, spatial_logits: ``[M, C]`` logits (or log-probabilities) of
        the two streams on the same clips.
      labels: int ``[M]``.
    Returns:
      A JSON-able dict: ``temporal_weight`` (a), ``spatial_weight`` (c), ``bias``
      (C floats), and on the fitting clips ``nll`` and ``accuracy`` of the fusion
      and ``temporal_accuracy`` / ``spatial_accuracy`` of each stream.
    """
    lt, ls = _log_softmax(temporal_logits), _log_softmax(spatial_logits)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    m, c = lt.shape
    if ls.shape != (m, c) or len(y) != m or m == 0:
        raise ValueError(f"need [M, C] logits of both streams and M labels, got "
                         f"{lt.shape}, {ls.shape}, {y.shape}")
    if y.min() < 0 or y.max() >= c:
        raise ValueError(f"labels must lie in [0, {c}), got [{y.min()}, {y.max()}]")
    onehot = np.eye(c)[y]

    def objective(p):
        z = p[0] * lt + p[1] * ls + p[2:]
        logp = _log_softmax(z)
        nll = -np.mean(logp[np.arange(m), y])
        g = (np.exp(logp) - onehot) / m  # d nll / d z
        grad = np.concatenate([[np.sum(g * lt), np.sum(g * ls)], g.sum(0)])
        return nll + l2 * np.sum((p - start) ** 2), grad + 2 * l2 * (p - start)

    start = np.concatenate([[1.0, 1.0], np.zeros(c)])
    bounds = [(0.0, 20.0), (0.0, 20.0)] + [(None, None)] * c
    p = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=bounds,
                 options={"maxiter": 500}).x
    z = p[0] * lt + p[1] * ls + p[2:]
    return {"temporal_weight": float(p[0]), "spatial_weight": float(p[1]),
            "bias": [float(b) for b in p[2:]],
            "nll": float(-np.mean(_log_softmax(z)[np.arange(m), y])),
            "accuracy": float(np.mean(z.argmax(-1) == y)),
            "temporal_accuracy": float(np.mean(lt.argmax(-1) == y)),
            "spatial_accuracy": float(np.mean(ls.argmax(-1) == y))}


def build_fusion(temporal_model, spatial_model, fusion_weights, mv_frames, rgb_frames,
                 frame_size):
    """The Fusion expert: packed ``[B, L]`` -> probabilities ``[B, C]`` (softmax).

    Slices the two modalities (:class:`ModalitySlice`), runs the two streams'
    networks (frozen: ``trainable = False``, inference mode) and fuses their logits
    with ``fusion_weights`` from :func:`fit_fusion` (:class:`LateFusion`).
    """
    args = (int(mv_frames), int(rgb_frames), int(frame_size))
    for kind, model in (("temporal", temporal_model), ("spatial", spatial_model)):
        if tuple(model.input_shape[1:]) != _modality_input_shape(kind, *args):
            raise ValueError(f"{kind} model input {model.input_shape} does not match "
                             f"F_t={mv_frames}, F_s={rgb_frames}, S={frame_size}")
        model.trainable = False
    if temporal_model.output_shape[-1] != spatial_model.output_shape[-1]:
        raise ValueError(f"the streams predict {temporal_model.output_shape[-1]} and "
                         f"{spatial_model.output_shape[-1]} classes")
    inputs = keras.Input((packed_length(*args),), name="clips")
    t = temporal_model(ModalitySlice("temporal", *args, name="mv_part")(inputs), training=False)
    s = spatial_model(ModalitySlice("spatial", *args, name="rgb_part")(inputs), training=False)
    probs = LateFusion(fusion_weights["temporal_weight"], fusion_weights["spatial_weight"],
                       fusion_weights["bias"], name="late_fusion")([t, s])
    return keras.Model(inputs, probs, name="fusion")


# ---- export and loading ------------------------------------------------------------------
class _Serving(tf.Module):
    # plain attributes saved with the object: TF Hub's reusable-SavedModel names, so
    # hub.KerasLayer (hence Expert.variables) sees them
    variables = ()
    trainable_variables = ()

    def __init__(self, model, kind, features=None):
        super().__init__(name=f"{kind}_expert")
        # weights tracked as a plain list, the model called through an untracked
        # closure: saving a tracked Keras model also traces every layer (slow)
        self.variables = list(model.variables)
        self.trainable_variables = []
        self._model = functools.partial(model.__call__, training=False)
        self._softmax = kind != "fusion"  # build_fusion already returns probabilities
        if features is not None:
            self._features = functools.partial(features.__call__, training=False)
            self.features = tf.function(self._features_fn)

    @tf.function
    def __call__(self, x):
        out = tf.cast(self._model(x), tf.float32)
        return tf.nn.softmax(out, -1) if self._softmax else out

    def _features_fn(self, mv):
        return tf.cast(self._features(mv), tf.float32)


def export_expert(model, path, kind, *, mv_frames, rgb_frames, frame_size):
    """Writes the ``kind`` expert as a SavedModel at ``path`` (replacing one there).

    ``__call__`` / ``serving_default``: the kind's input (float32, any batch) ->
    softmax probabilities ``float32[B, C]``; for ``"temporal"`` also ``features``
    (function and signature): mv -> ``hidden`` ``float32[B, 64]``. ``expert.json``
    records ``kind``, ``num_classes``, ``mv_frames``, ``rgb_frames``,
    ``frame_size``, ``input_shape`` and ``packed_length``; Temporal and Spatial
    exports also hold the network's weights (``keras/weights.*``, read by
    :func:`load_stream_model`). Written to
    ``path + ".partial"`` and renamed (:class:`experiments.stages.atomic_dir`), so
    ``path`` never holds a partial export. Returns ``path``.

    Args:
      model: Temporal / Spatial network (logits out), or the Fusion model of
        :func:`build_fusion` (probabilities out).
    """
    shape = _modality_input_shape(kind, mv_frames, rgb_frames, frame_size)
    if tuple(model.input_shape[1:]) != shape:
        raise ValueError(f"{kind} model input {model.input_shape} does not match "
                         f"{(None,) + shape}")
    features = None
    if kind == "temporal":
        features = keras.Model(model.inputs, model.get_layer("hidden").output)
    path = os.path.normpath(os.fspath(path))
    module = _Serving(model, kind, features)
    spec = tf.TensorSpec((None,) + shape, tf.float32, name="mv" if kind == "temporal" else
                         "rgb" if kind == "spatial" else "clips")
    signatures = {"serving_default": module.__call__.get_concrete_function(spec)}
    if features is not None:
        signatures["features"] = module.features.get_concrete_function(spec)
    meta = {"format": _FORMAT, "kind": kind, "num_classes": int(model.output_shape[-1]),
            "mv_frames": int(mv_frames), "rgb_frames": int(rgb_frames),
            "frame_size": int(frame_size), "input_shape": list(shape),
            "packed_length": packed_length(mv_frames, rgb_frames, frame_size)}
    if features is not None:
        meta["feature_dim"] = int(features.output_shape[-1])
    with atomic_dir(path) as tmp:
        tf.saved_model.save(module, tmp, signatures=signatures)
        if kind != "fusion":
            # the variables alone (not the optimizer's slots), in build order
            tf.train.Checkpoint(variables=list(model.variables)).write(
                os.path.join(tmp, _STREAM_WEIGHTS))
        with open(os.path.join(tmp, _EXPERT_JSON), "w") as fh:
            json.dump(meta, fh, indent=1)
    return path


def _read_meta(path, **shapes):
    """expert.json of the export at ``path``, checked against ``shapes``; ValueError if not."""
    path = os.fspath(path)
    meta_path = os.path.join(path, _EXPERT_JSON)
    try:
        with open(meta_path) as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not an exported action expert (cannot read "
                         f"{_EXPERT_JSON}: {err})") from None
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT or \
            meta.get("kind") not in KINDS:
        raise ValueError(f"{path} is not an exported action expert ({_EXPERT_JSON} has no "
                         f"format {_FORMAT!r} and kind in {KINDS})")
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise ValueError(f"{path} is not an exported action expert (no saved_model.pb)")
    wrong = {k: (meta.get(k), int(v)) for k, v in shapes.items() if meta.get(k) != int(v)}
    if wrong:
        raise ValueError(f"the {meta['kind']} expert at {path} was exported for other clip "
                         f"shapes: " + ", ".join(f"{k} {a} (asked {b})"
                                                 for k, (a, b) in wrong.items()))
    return meta


def load_expert(path, *, name, data_cost, mv_frames, rgb_frames, frame_size):
    """The exported expert at ``path`` as a :class:`bmoe_tf.Expert` on packed clips ``[B, L]``.

    Its kind is read from ``expert.json``; P_n is :func:`preprocess` for that kind,
    d_n is ``data_cost`` (bytes, as the task gives it). The expert is resolved for
    input shape ``(L,)``.

    Raises:
      ValueError naming ``path``: not an export of :func:`export_expert`, or exported
      for other F_t, F_s or S.
    """
    meta = _read_meta(path, mv_frames=mv_frames, rgb_frames=rgb_frames, frame_size=frame_size)
    p = functools.partial(preprocess, kind=meta["kind"], mv_frames=int(mv_frames),
                          rgb_frames=int(rgb_frames), frame_size=int(frame_size))
    return Expert(os.fspath(path), preprocess=p, data_cost=data_cost, name=name,
                  input_shape=(packed_length(mv_frames, rgb_frames, frame_size),))


def load_stream_model(path):
    """The Keras network (logits out) of the Temporal or Spatial expert exported at ``path``.

    Rebuilt with :func:`build_temporal` / :func:`build_spatial` from ``expert.json``
    and loaded with the weights :func:`export_expert` kept beside the SavedModel.
    ValueError naming ``path`` when it is not such an export.
    """
    meta = _read_meta(path)
    if meta["kind"] == "fusion":
        raise ValueError(f"{path} holds the fusion expert; only the temporal and spatial "
                         f"experts keep a stream network")
    prefix = os.path.join(os.fspath(path), _STREAM_WEIGHTS)
    if not os.path.exists(prefix + ".index"):
        raise ValueError(f"{path} has no stream weights ({_STREAM_WEIGHTS}.index)")
    if meta["kind"] == "temporal":
        model = build_temporal(meta["mv_frames"], meta["num_classes"])
    else:
        model = build_spatial(meta["rgb_frames"], meta["frame_size"], meta["num_classes"])
    try:
        tf.train.Checkpoint(variables=list(model.variables)).read(prefix).assert_consumed()
    except (AssertionError, ValueError, tf.errors.OpError) as err:
        raise ValueError(f"the stream weights at {path} do not fit the {meta['kind']} "
                         f"network ({type(err).__name__}: {str(err)[:300]})") from None
    return model


def stream_logits(model, inputs, batch_size=256):
    """``float32[M, C]``: a stream network's logits (inference mode) on its modality.

    Args:
      model: from :func:`build_temporal` / :func:`build_spatial` /
        :func:`load_stream_model`.
      inputs: mv ``[M, F_t, 24, 24, 2]``, or rgb ``[M, F_s, S, S, 3]`` (uint8, scaled by
        1/255, or float in [0, 1]); converted batch by batch.
    """
    x = np.asarray(inputs)
    if tuple(x.shape[1:]) != tuple(model.input_shape[1:]):
        raise ValueError(f"inputs {x.shape} do not match the model input {model.input_shape}")

    @tf.function(autograph=False, reduce_retracing=True)
    def run(batch):
        return tf.cast(model(_to_float(batch), training=False), tf.float32)

    batch_size = int(batch_size)
    out = [run(tf.constant(x[i:i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
    if not out:
        return np.zeros((0, int(model.output_shape[-1])), np.float32)
    return np.concatenate(out)


# ---- inference ---------------------------------------------------------------------------
def predict_probabilities(expert, mv, rgb, batch_size=256):
    """``float32[M, C]``: ``expert`` (from :func:`load_expert`) on clips packed batch by batch.

    Args:
      mv: ``[M, F_t, 24, 24, 2]``; rgb: ``[M, F_s, S, S, 3]`` uint8 (a ClipSet's arrays).
    """
    mv, rgb = np.asarray(mv), np.asarray(rgb)
    if len(mv) != len(rgb) or len(mv) == 0:
        raise ValueError(f"need the same non-zero number of mv and rgb clips, got {len(mv)}, "
                         f"{len(rgb)}")

    @tf.function(autograph=False, reduce_retracing=True)
    def run(x):
        return expert(x)

    batch_size = int(batch_size)
    out = [run(tf.constant(pack(mv[i:i + batch_size], rgb[i:i + batch_size]))).numpy()
           for i in range(0, len(mv), batch_size)]
    return np.concatenate(out).astype(np.float32)


def temporal_features(path, mv, batch_size=256):
    """``float32[M, 64]``: the Temporal expert's ``hidden`` layer for ``mv [M, F_t, 24, 24, 2]``.

    Runs the ``features`` function of the Temporal SavedModel at ``path``
    (:func:`export_expert`). ValueError naming ``path`` if it is not one.
    """
    meta = _read_meta(path)
    if meta["kind"] != "temporal":
        raise ValueError(f"{path} holds a {meta['kind']} expert; features need the temporal one")
    mv = np.asarray(mv)
    if mv.ndim != 5 or mv.shape[1] != meta["mv_frames"] or mv.shape[2:] != (MV_GRID, MV_GRID, 2):
        raise ValueError(f"mv must be [M, {meta['mv_frames']}, {MV_GRID}, {MV_GRID}, 2] for "
                         f"the expert at {path}, got {mv.shape}")
    loaded = tf.saved_model.load(os.fspath(path))
    batch_size = int(batch_size)
    out = [loaded.features(tf.constant(mv[i:i + batch_size], tf.float32)).numpy()
           for i in range(0, len(mv), batch_size)]
    if not out:
        return np.zeros((0, meta["feature_dim"]), np.float32)
    return np.concatenate(out).astype(np.float32)
