"""Super-resolution experts of Section IV-C: ESPCN [42] and FSRCNN [11] at x4, x3, x2.

Each expert E_n sees P_n(x), an anti-aliased downsample of a 64x64x3 RGB part
(float32 in [0, 1]) to ``floor(64 / S_n)`` pixels (16, 21, 32), and returns a
64x64x3 part, so all experts' outputs can be mixed (Eq. 2). Where
``S_n * floor(64 / S_n) != 64`` (x3: 21 -> 63) the network output is resized to
64x64 (bicubic) inside the model.

Resampling. P_n is ``tf.image.resize(x, (low, low), method="bicubic",
antialias=True)``: the Keys cubic kernel widened by the scale factor, which is
what MATLAB's ``imresize`` does and how DIV2K's own low-resolution images are made.
Upsampling (global residual, x3's 63 -> 64) is ``tf.image.resize(...,
method="bicubic")``. TensorFlow's resize kernels cannot be compiled with XLA, so
both are applied here as the two separable matrices they are (one per axis,
obtained by resizing an identity with ``tf.image.resize`` itself): the same
numbers up to float rounding (< 1e-6, tested), traceable, XLA-compilable and
fast on CPU.

Global residual learning (a deviation from both original papers): with
``residual=True`` (the default) the model adds a bicubic upsample of its input
to the network output, and the network's last layer starts at zero, so an
untrained expert is exactly :func:`bicubic_upscale` and training only has to
learn the missing detail. This makes the short CPU trainings of the demo converge
(the plain networks spend their first epochs learning to copy colours).

Outputs are not clipped to [0, 1] (MSE training and exact residual identity);
clip when computing PSNR.
"""
import functools
import os

import numpy as np

from bmoe_tf.backend import keras, tf
from bmoe_tf.checks import check_count
from bmoe_tf.experts import Expert
from bmoe_tf.training import resumable_fit
from experiments.stages import atomic_dir

__all__ = [
    "SCALES", "FAMILIES", "low_resolution_size", "downsample", "upsample",
    "bicubic_upscale", "build_expert_model", "shuffle_orders", "train_expert", "export_expert",
    "load_expert", "ResizeImages", "DepthToSpace",
]

#: Upscaling factors S_n of the paper's experts, E_1 (cheapest) first.
SCALES = (4, 3, 2)
#: Expert architectures: ESPCN [42] and FSRCNN [11].
FAMILIES = ("espcn", "fsrcnn")


def _check(family=None, scale=None):
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown SR expert family {family!r}; allowed: {', '.join(FAMILIES)}")
    if scale is not None and (isinstance(scale, bool) or scale not in SCALES):
        raise ValueError(f"unknown SR scale {scale!r}; allowed: {', '.join(map(str, SCALES))}")


def low_resolution_size(scale, size=64):
    """Side of P_n(x): ``size // scale`` (64 -> 16, 21, 32 for x4, x3, x2)."""
    _check(scale=scale)
    return int(size) // int(scale)


@functools.lru_cache(maxsize=None)
def _resize_matrix(n_in, n_out, antialias):
    """``[n_out, n_in]`` matrix of 1-D bicubic resampling, as tf.image.resize does it."""
    with tf.init_scope():  # eager even while a graph is being traced
        eye = tf.eye(n_in, dtype=tf.float32)[:, :, None, None]  # batch i: delta at row i
        out = tf.image.resize(eye, (n_out, 1), method="bicubic", antialias=antialias)
        mat = tf.transpose(out[:, :, 0, 0]).numpy()
    mat.setflags(write=False)
    return mat


def _resize(images, height, width, antialias):
    """Separable bicubic resize of ``[..., H, W, C]`` images (float32)."""
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.float32:
        images = tf.cast(images, tf.float32)
    if images.shape.rank not in (3, 4):
        raise ValueError(f"images must be [B, H, W, C] or [H, W, C], got shape {images.shape}")
    h, w = images.shape[-3], images.shape[-2]
    if h is None or w is None:
        raise ValueError(f"image height and width must be static, got shape {images.shape}")
    if (h, w) == (height, width):
        return images
    rows = tf.constant(_resize_matrix(int(h), int(height), bool(antialias)))
    cols = tf.constant(_resize_matrix(int(w), int(width), bool(antialias)))
    images = tf.einsum("rh,...hwc->...rwc", rows, images)
    return tf.einsum("sw,...rwc->...rsc", cols, images)


def downsample(images, scale, size=64):
    """P_n: ``[B, size, size, 3]`` parts -> ``[B, low, low, 3]`` float32, low = size // scale.

    ``tf.image.resize(images, (low, low), method="bicubic", antialias=True)``,
    computed as two separable matrix products (same values to < 1e-6; works in
    graphs and under XLA). Also accepts a single ``[size, size, 3]`` part.
    """
    low = low_resolution_size(scale, size)
    return _resize(images, low, low, antialias=True)


def upsample(images, size=64):
    """``tf.image.resize(images, (size, size), method="bicubic")`` (float32)."""
    return _resize(images, int(size), int(size), antialias=False)


def bicubic_upscale(parts, scale, size=64):
    """The bicubic reference: ``upsample(downsample(parts))``, numpy in and out."""
    return upsample(downsample(np.asarray(parts, np.float32), scale, size), size).numpy()


@keras.utils.register_keras_serializable(package="bmoe_sr")
class ResizeImages(keras.layers.Layer):
    """Bicubic resize of ``[B, H, W, C]`` to ``[B, size, size, C]`` (see :func:`upsample`)."""

    def __init__(self, size, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)

    def call(self, inputs):
        return upsample(inputs, self.size)

    def compute_output_shape(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        return tf.TensorShape([input_shape[0], self.size, self.size, input_shape[-1]])

    def get_config(self):
        return {**super().get_config(), "size": self.size}


@keras.utils.register_keras_serializable(package="bmoe_sr")
class DepthToSpace(keras.layers.Layer):
    """``tf.nn.depth_to_space``: the sub-pixel shuffle of ESPCN."""

    def __init__(self, block_size, **kwargs):
        super().__init__(**kwargs)
        self.block_size = int(block_size)

    def call(self, inputs):
        return tf.nn.depth_to_space(inputs, self.block_size)

    def get_config(self):
        return {**super().get_config(), "block_size": self.block_size}


def _prelu(name):
    # Caffe's (and FSRCNN's) PReLU initial slope; one slope per channel.
    return keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25),
                              shared_axes=[1, 2], name=name)


def build_expert_model(family, scale, size=64, *, residual=True):
    """An SR expert: ``[B, low, low, 3] -> [B, size, size, 3]``, low = size // scale.

    * ``"espcn"`` (Shi et al. 2016): conv 5x5 64 tanh -> conv 3x3 32 tanh ->
      conv 3x3 3*S*S -> depth_to_space(S).
    * ``"fsrcnn"`` (Dong et al. 2016, d=56, s=12, m=4): conv 5x5 56 PReLU ->
      shrink 1x1 12 PReLU -> 4 x conv 3x3 12 PReLU -> expand 1x1 56 PReLU ->
      Conv2DTranspose 9x9 stride S to 3 channels (times a fixed 0.1 when
      ``residual``: the paper's 10x smaller deconvolution learning rate).

    All convolutions are "same" padded, so the network output is S*low pixels
    wide; it is resized (bicubic) to ``size`` when that differs (x3: 63 -> 64).

    Args:
      family: one of :data:`FAMILIES`.
      scale: one of :data:`SCALES`.
      size: side of the high-resolution part.
      residual: global residual learning (a deviation from both papers, for short
        CPU training): add ``upsample(input)`` to the output and zero-initialise
        the last layer, so the untrained model equals :func:`bicubic_upscale`.
        With False the papers' plain networks (last layer: Glorot for ESPCN,
        N(0, 0.001) for FSRCNN's deconvolution, as in the paper).

    Raises:
      ValueError: unknown family or scale.
    """
    _check(family, scale)
    low = low_resolution_size(scale, size)
    inputs = keras.Input((low, low, 3), name="low_resolution")
    if family == "espcn":
        last_init = "zeros" if residual else "glorot_uniform"
        x = keras.layers.Conv2D(64, 5, padding="same", activation="tanh", name="conv1")(inputs)
        x = keras.layers.Conv2D(32, 3, padding="same", activation="tanh", name="conv2")(x)
        x = keras.layers.Conv2D(3 * scale * scale, 3, padding="same", name="conv3",
                                kernel_initializer=last_init)(x)
        x = DepthToSpace(scale, name="pixel_shuffle")(x)
    else:
        last_init = ("zeros" if residual
                     else keras.initializers.RandomNormal(stddev=1e-3))
        he = "he_normal"
        x = keras.layers.Conv2D(56, 5, padding="same", kernel_initializer=he,
                                name="feature")(inputs)
        x = _prelu("feature_prelu")(x)
        x = keras.layers.Conv2D(12, 1, padding="same", kernel_initializer=he, name="shrink")(x)
        x = _prelu("shrink_prelu")(x)
        for i in range(4):
            x = keras.layers.Conv2D(12, 3, padding="same", kernel_initializer=he,
                                    name=f"map{i + 1}")(x)
            x = _prelu(f"map{i + 1}_prelu")(x)
        x = keras.layers.Conv2D(56, 1, padding="same", kernel_initializer=he, name="expand")(x)
        x = _prelu("expand_prelu")(x)
        x = keras.layers.Conv2DTranspose(3, 9, strides=scale, padding="same",
                                         kernel_initializer=last_init, name="deconv")(x)
        if residual:
            # FSRCNN trains its deconvolution with a 10x smaller learning rate; under
            # Adam a fixed 0.1 output scale has that effect (same function class).
            # Without it the zero-started deconvolution (fan-in ~1400) overshoots.
            x = keras.layers.Rescaling(0.1, name="deconv_scale")(x)
    if scale * low != size:
        x = ResizeImages(size, name="resize_output")(x)
    if residual:
        x = keras.layers.Add(name="global_residual")(
            [x, ResizeImages(size, name="bicubic_input")(inputs)])
    return keras.Model(inputs, x, name=f"{family}_x{scale}")


def _low_resolution(parts, scale, size, chunk=1024):
    parts = np.asarray(parts, np.float32)
    if parts.ndim != 4 or parts.shape[1:] != (size, size, 3):
        raise ValueError(f"parts must be [B, {size}, {size}, 3], got shape {parts.shape}")
    lows = [downsample(parts[i:i + chunk], scale, size).numpy()
            for i in range(0, len(parts), chunk)]
    return parts, np.concatenate(lows) if lows else np.zeros((0,) + (size // scale,) * 2 + (3,),
                                                             np.float32)


def shuffle_orders(n, seed, epochs):
    """``[epochs, n]`` int64: the order in which each epoch visits the ``n`` parts.

    Epoch e's order is the e-th pass of ``tf.data``'s ``shuffle(n, seed,
    reshuffle_each_iteration=True)`` as ``keras.Model.fit`` iterates a dataset that
    is one epoch per pass (the order these experts were always trained in). It
    depends on ``seed`` and TensorFlow's global seed (``keras.utils.set_random_seed``,
    which the task sets before building each expert), not on earlier epochs having
    run in this process, so a resumed training sees the epochs it missed.
    """
    n, epochs = check_count(n, "n", minimum=1), check_count(epochs, "epochs")
    order = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
    iter(order)  # fit makes one iterator before its first epoch's
    return np.array([np.fromiter(order.as_numpy_iterator(), np.int64, n)
                     for _ in range(epochs)], np.int64).reshape(epochs, n)


def train_expert(model, scale, train_parts, val_parts, *, epochs, batch_size=64,
                 learning_rate=1e-3, checkpoint_dir=None, verbose=1, seed=0, callbacks=()):
    """Trains ``model`` on ``(downsample(parts), parts)`` with MSE and Adam.

    Every epoch visits all parts in :func:`shuffle_orders` ``(n, seed, epochs)``
    (the last batch smaller); trained with :func:`bmoe_tf.training.resumable_fit`.

    Args:
      model: from :func:`build_expert_model` (``scale`` must match its input size).
      scale: S_n.
      train_parts, val_parts: ``[B, size, size, 3]`` float32 parts in [0, 1];
        ``val_parts`` may be None.
      epochs: total number of epochs (including those already done when resuming).
      checkpoint_dir: when given, model, optimizer and the number of finished
        epochs are checkpointed after every epoch, and a later call with the same
        arguments resumes after the last finished epoch with the weights an
        uninterrupted run would have (an interrupted run loses at most one epoch);
        the checkpoint is deleted when training ends.
      verbose: 0 silent, 1 one line per epoch, 2 Keras progress bars too.
      seed: seeds the shuffling of the training set.
      callbacks: extra Keras callbacks (run after the checkpoint of each epoch).

    Returns:
      The history of all epochs (also those before a resume): ``loss``, ``seconds``
      and ``val_loss`` (with ``val_parts``), one entry per epoch.
    """
    size = int(model.output_shape[1])
    low = low_resolution_size(scale, size)
    if tuple(model.input_shape[1:]) != (low, low, 3):
        raise ValueError(f"model input {model.input_shape} does not match scale x{scale} "
                         f"({low}x{low}x3)")
    y_train, x_train = _low_resolution(train_parts, scale, size)
    n = len(y_train)
    if n == 0:
        raise ValueError("train_parts is empty")
    x_all, y_all = tf.constant(x_train), tf.constant(y_train)
    no_autograph = tf.autograph.experimental.do_not_convert

    def data(first_epoch):
        batches = None
        for order in shuffle_orders(n, seed, epochs)[first_epoch:]:
            epoch = tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
            batches = epoch if batches is None else batches.concatenate(epoch)
        return (batches.map(no_autograph(lambda i: (tf.gather(x_all, i), tf.gather(y_all, i))))
                .prefetch(tf.data.AUTOTUNE))

    val = None
    if val_parts is not None:
        y_val, x_val = _low_resolution(val_parts, scale, size)
        val = tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(batch_size)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    return resumable_fit(model, data, epochs=epochs, steps_per_epoch=-(-n // batch_size),
                         validation_data=val, checkpoint_dir=checkpoint_dir, verbose=verbose,
                         callbacks=callbacks)


def export_expert(model, path):
    """Writes ``model`` as a TF2 SavedModel at ``path`` (replacing one already there).

    ``hub.KerasLayer(path, trainable=False)`` (hence :class:`bmoe_tf.Expert`) loads
    it and calls it on ``[B, low, low, 3]`` float32 with any batch size. Written to
    a temporary folder and renamed (:class:`experiments.stages.atomic_dir`), so ``path``
    never holds a partial model.
    Returns ``path``.
    """
    path = os.path.normpath(os.fspath(path))
    with atomic_dir(path) as tmp:
        model.save(tmp, save_format="tf", include_optimizer=False)
    return path


def load_expert(path, scale, family, size=64):
    """The exported expert at ``path`` as a :class:`bmoe_tf.Expert`.

    P_n is :func:`downsample` at ``scale``; d_n is the default float32 bytes of
    P_n(x) (``low * low * 3 * 4``: 3072, 5292, 12288 bytes for x4, x3, x2).
    """
    _check(family, scale)
    return Expert(os.fspath(path), preprocess=functools.partial(downsample, scale=scale, size=size),
                  name=f"{family}_x{scale}", input_shape=(size, size, 3))
