"""Argument checks shared by the library (in the spirit of Sonnet's ``assert_rank``).

Every helper takes the argument's ``name`` and raises ``ValueError`` with a message
that starts with it, so a bad input fails the same way wherever it enters.

* :func:`as_float_array` -- numbers -> ``float64`` numpy array, optionally of a rank.
* :func:`check_rank` -- a numpy array or tensor of the given rank(s).
* :func:`check_finite` -- no NaN / infinity (numpy).
* :func:`check_finite_tensor` -- the same for a tensor: eagerly a ``ValueError``,
  inside a graph an assertion op (``InvalidArgumentError`` when it runs).
* :func:`check_vector` -- a non-empty, finite 1-D ``float64`` vector, optionally of
  a given length.
* :func:`check_count` -- a Python / numpy integer ``>= minimum`` (not a bool).
* :func:`check_index_vector` -- ``int[M]`` indices in ``[0, N)`` (an assignment).
"""
import numbers

import numpy as np

from bmoe_tf.backend import tf

__all__ = ["is_int", "as_float_array", "check_rank", "check_finite", "check_finite_tensor",
           "check_vector", "check_count", "check_index_vector"]


def is_int(value):
    """True for a Python or numpy integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _rank_text(rank):
    ranks = (rank,) if isinstance(rank, int) else tuple(rank)
    return " or ".join(str(r) for r in ranks), ranks


def check_rank(value, rank, name, *, layout=None):
    """Checks that ``value`` (numpy array or tensor) has rank ``rank`` (an int or ints).

    Args:
      value: anything with ``.ndim`` or ``.shape.rank``.
      rank: the allowed rank, or a tuple of them.
      name: the argument's name for the message.
      layout: how to describe the expected shape, e.g. ``"[M, N]"``; default
        ``"rank <rank>"``.
    Returns:
      ``value`` unchanged.
    """
    text, ranks = _rank_text(rank)
    shape = getattr(value, "shape", None)
    actual = value.shape.rank if isinstance(shape, tf.TensorShape) else np.ndim(value)
    if actual not in ranks:
        want = layout or f"rank {text}"
        shown = tuple(shape) if shape is not None else np.shape(value)
        raise ValueError(f"{name} must be {want}, got shape {shown}")
    return value


def as_float_array(value, name, *, rank=None, layout=None, what=None):
    """``value`` as a ``float64`` numpy array, optionally of rank ``rank``.

    Raises:
      ValueError: ``value`` is not numeric (``"<name> must be <what>"``, by default
        "an array of numbers") or has another rank.
    """
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        if what is None:
            what = f"a {layout} array of numbers" if layout else "an array of numbers"
        raise ValueError(f"{name} must be {what}, got {value!r}") from err
    if rank is not None:
        check_rank(array, rank, name, layout=layout)
    return array


def check_finite(array, name, *, show=False):
    """``ValueError`` when a numpy array holds a NaN or an infinity.

    ``show=True`` puts the values in the message (for short vectors).
    """
    if not np.all(np.isfinite(array)):
        detail = (f"a non-finite entry in {np.asarray(array).tolist()}" if show
                  else "a NaN or an infinity")
        raise ValueError(f"{name} must be finite, got {detail}")
    return array


def check_finite_tensor(x, name):
    """A tensor's finiteness: eagerly ``ValueError``; in a graph an assertion op.

    The assertion is tied to the returned tensor (use it). Under XLA
    (``jit_compile=True``) assertion ops do not stop execution; callers that must
    stay safe there handle non-finite values themselves (see
    :func:`bmoe_tf.routing.enforcement_mask`).
    """
    if tf.executing_eagerly():
        if not bool(tf.reduce_all(tf.math.is_finite(x))):
            raise ValueError(f"{name} must be finite, got a NaN or an infinity")
        return x
    return tf.debugging.assert_all_finite(x, f"{name} must be finite")


def check_vector(value, name, *, size=None, per="expert", hint="", finite=True, show=True):
    """A non-empty 1-D ``float64`` vector (finite unless ``finite=False``).

    Args:
      value: sequence of numbers.
      name: the argument's name.
      size: the required length, or None.
      per: what one entry belongs to (``"expert"``), for the messages.
      hint: appended to the length message, e.g. ``"; give one frequency per expert"``.
      show: put the values in the non-finite message.
    """
    vector = as_float_array(value, name, what=f"a 1-D sequence of numbers (one per {per})")
    if vector.ndim != 1 or vector.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D vector (one entry per {per}), "
                         f"got shape {vector.shape}")
    if size is not None and vector.size != size:
        raise ValueError(f"{name} has {vector.size} entries but there are {size} {per}s{hint}")
    if finite:
        check_finite(vector, name, show=show)
    return vector


def check_count(value, name, *, minimum=0):
    """A Python / numpy integer (not a bool) ``>= minimum``, returned as ``int``."""
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_index_vector(value, name, *, size, bound, item="example"):
    """``int[size]`` indices in ``[0, bound)``, returned as ``int64``.

    Args:
      value: the indices (e.g. an assignment: the expert of each example).
      name: the argument's name.
      size: required length (M).
      bound: exclusive upper bound (N).
      item: what one entry belongs to, for the message.
    """
    a = np.asarray(value)
    if a.ndim != 1 or a.shape[0] != size:
        raise ValueError(
            f"{name} must be a 1-D vector with one expert per {item} ({size}), "
            f"got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer expert indices, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() >= bound):
        raise ValueError(
            f"{name} entries must be expert indices in [0, {bound}), "
            f"got values in [{a.min()}, {a.max()}]")
    return a.astype(np.int64)
