"""Training and loading one gate of an experiment (any task).

Each gate lives in ``gates/<method>/<target index or shared>/``:
``gate/`` (the SavedModel, written last, so its presence means done),
``backup/`` (the per-epoch checkpoint of :func:`bmoe_tf.training.resumable_fit`: an
interrupted fit resumes after the last finished epoch; removed when training ends),
``logs/`` (TensorBoard) and ``gate.json`` (b, method, w_bias, history). With
``quantization_aware`` (``--quantization_aware``) the float gate is kept in
``float_gate/`` and then fine-tuned with int8 fake-quant ops (``backup_qat/``,
``logs/qat``): ``gate/`` is that rounding-aware gate, what the export converts
unchanged (:mod:`gating_tflite.quantization_aware`; WORKSPACE D76). With ``int8_weights``
(``--int8_weights``) the trained gate's kernels are rounded to TFLite's int8 grid before
``gate/`` is saved, so that the 16x8 export (``--activations=int16``) keeps its choices
(:mod:`gating_tflite.int8_weights`; WORKSPACE D78).

Every random order of a gate's training is a function of (seed, gate name, epoch)
only (:func:`gate_seed`), so a gate trained after a restart sees exactly the data
order it would have seen in an uninterrupted run.
"""
import os

import numpy as np

from bmoe_tf import BiasedMixture
from bmoe_tf.backend import keras, tf
from bmoe_tf.cache import cache_dataset
from bmoe_tf.training import resumable_fit
from experiments import distribute
from gating_tflite import int8_weights as int8
from gating_tflite import quantization_aware as qa
from experiments.stages import atomic_dir, fingerprint, load_artefact, read_json, write_json

__all__ = ["train_gate", "load_gate", "gate_files", "gate_done", "gate_seed", "qat_schedule",
           "QAT_EPOCH_FRACTION", "QAT_LEARNING_RATE_FACTOR"]

#: The rounding-aware fine-tuning after the float training (``quantization_aware``):
#: ceil(epochs x this) epochs at the gate's learning rate x ``QAT_LEARNING_RATE_FACTOR``,
#: the same loss and data order (WORKSPACE D76).
QAT_EPOCH_FRACTION = 0.25
QAT_LEARNING_RATE_FACTOR = 0.1


def qat_schedule(epochs, learning_rate):
    """``(epochs, learning_rate)`` of the rounding-aware fine-tuning of a gate trained
    ``epochs`` epochs at ``learning_rate``."""
    return max(1, int(np.ceil(epochs * QAT_EPOCH_FRACTION))), \
        learning_rate * QAT_LEARNING_RATE_FACTOR


def gate_files(directory):
    """The artefacts whose presence means the gate in ``directory`` is done."""
    return [os.path.join(directory, "gate"), os.path.join(directory, "gate.json")]


def gate_done(directory):
    return all(os.path.exists(p) for p in gate_files(directory))


def gate_seed(seed, name):
    """The data-order seed of the gate called ``name`` (e.g. ``"soft/2 w_bias=1"``): a
    function of (seed, name) only, never of how many gates a process trained before."""
    return int(fingerprint([int(seed), str(name)])[:8], 16)


#: Restart k of a gate (``--gate_restarts``) trains from ``seed + k * RESTART_SEED_STRIDE``:
#: other initial weights and another data order; restart 0 is the gate one training gives.
RESTART_SEED_STRIDE = 1_000_003


def restart_seed(seed, restart):
    """The training seed of restart ``restart`` (0, 1, ...) of a gate whose seed is ``seed``."""
    if int(restart) < 0:
        raise ValueError(f"restart must be >= 0, got {restart}")
    return int(seed) + int(restart) * RESTART_SEED_STRIDE


def adopt_gate(candidate, directory):
    """Copies the finished gate in ``candidate`` (``gate/``, ``gate.json``) into
    ``directory``, replacing what a previous, interrupted copy left there: the chosen
    restart is then the gate every later stage, the export and the system load."""
    import shutil

    with atomic_dir(os.path.join(directory, "gate")) as tmp:
        shutil.copytree(os.path.join(candidate, "gate"), tmp)
    write_json(os.path.join(directory, "gate.json"),
               read_json(os.path.join(candidate, "gate.json")))


def load_gate(directory):
    """(keras gate model, its gate.json dict); a corrupt gate is named in one line."""
    path = os.path.join(directory, "gate")
    model = load_artefact(path, qa.load_gate_model, rebuild=directory)
    return model, read_json(os.path.join(directory, "gate.json"))


def train_gate(directory, *, build_gate, experts, bias, method, train, batch_size, epochs,
               learning_rate, bias_weight=1.0, combine="gate", training_loss="selected",
               seed=0, name="gate", verbose=1, input_shape=None, gate_preprocess=None,
               strategy=None, byte_target=None, quantization_aware=False,
               int8_weights=False):
    """Trains a gate with the experts frozen and saves it; resumes if interrupted.

    Args:
      directory: ``gates/<method>/<target index>[/candidates/...]``.
      build_gate: ``() -> keras.Model`` mapping gate inputs ``[B, ...]`` to logits ``[B, N]``.
      experts: the frozen :class:`bmoe_tf.Expert` list.
      bias: ``float[N]``.
      method: ``"enforce"``, ``"soft"`` or ``"enforce_bytes"`` (each batch within
        ``byte_target`` mean bytes per input of ``train.costs``).
      train: :class:`experiments.pipeline.TrainingSet`.
      batch_size, epochs, learning_rate: the schedule (Adam).
      seed: the run's seed: weights are initialised from it, the data order from
        ``gate_seed(seed, name)`` and the epoch.
      input_shape, gate_preprocess: the experts' raw input shape and P_g when the gate
        sees only part of it (:class:`bmoe_tf.BiasedMixture`).
      strategy: a ``tf.distribute.Strategy`` (:mod:`experiments.distribute`) or None
        (the current one). ``batch_size`` is the global batch; Algorithm 1 holds over
        it. Under ``MultiWorkerMirroredStrategy`` every worker calls this with the same
        arguments; only the chief writes ``gate.json``, the SavedModel and the
        TensorBoard logs (the others save to temporary directories), and
        ``BackupAndRestore`` (a shared ``directory``) resumes every worker at the same
        epoch.
      quantization_aware: then fine-tune the trained gate with int8 fake-quant ops
        (:func:`qat_schedule`; single-process strategies only): the saved gate is
        the rounding-aware one.
      int8_weights: then round the trained gate's kernels to TFLite's per-channel int8
        grid (:func:`gating_tflite.int8_weights.snap_gate_weights`) before saving it;
        not with ``quantization_aware`` (whose fake-quant ops already round them).
    Returns:
      ``(gate, info)`` as :func:`load_gate`.
    """
    if gate_done(directory):
        return load_gate(directory)
    if quantization_aware and int8_weights:
        raise ValueError("train_gate: quantization_aware and int8_weights exclude each other "
                         "(a QAT gate's kernels are on the int8 grid already)")
    strategy = strategy or tf.distribute.get_strategy()
    chief = distribute.is_chief(strategy)
    os.makedirs(directory, exist_ok=True)
    keras.utils.set_random_seed(seed)
    mixture_args = dict(bias_weight=bias_weight, combine=combine, training_loss=training_loss,
                        input_shape=input_shape, gate_preprocess=gate_preprocess,
                        byte_target=byte_target)
    data = cache_dataset(train.gate_inputs, train.cache, train.targets,
                         batch_size=batch_size, seed=gate_seed(seed, name), drop_remainder=True,
                         payload_bytes=train.costs if method == "enforce_bytes" else None)
    if strategy.num_replicas_in_sync > 1:  # the global batch, split over the replicas
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = \
            tf.data.experimental.AutoShardPolicy.DATA
        data = data.with_options(options)
    float_dir = os.path.join(directory, "float_gate")
    if quantization_aware and os.path.exists(os.path.join(directory, "float_gate.json")):
        gate = load_artefact(float_dir, qa.load_gate_model, rebuild=directory)
        history = read_json(os.path.join(directory, "float_gate.json"))
    else:
        with strategy.scope():
            mixture = BiasedMixture(build_gate(), experts, bias, method=method,
                                    **mixture_args)
            mixture.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
        with distribute.writable_dir(os.path.join(directory, "logs"), strategy) as logs:
            history = resumable_fit(mixture, data, epochs=epochs,
                                    checkpoint_dir=os.path.join(directory, "backup"),
                                    tensorboard_dir=logs, name=f"gate {name}", verbose=verbose)
        gate = mixture.gate
        if quantization_aware:  # kept, so that an interrupted fine-tuning resumes after it
            history.pop("seconds", None)
            with atomic_dir(float_dir) as tmp:
                gate.save(tmp, include_optimizer=False)
            write_json(os.path.join(directory, "float_gate.json"), history)
    if quantization_aware:
        qat_epochs, qat_lr = qat_schedule(epochs, learning_rate)
        sample = np.asarray(train.gate_inputs[:512], np.float32)
        if gate_preprocess is not None:
            sample = np.asarray(gate_preprocess(tf.constant(sample)), np.float32)
        keras.utils.set_random_seed(seed)
        mixture = BiasedMixture(qa.quantization_aware_model(gate, sample), experts, bias,
                                method=method, **mixture_args)
        mixture.compile(optimizer=keras.optimizers.Adam(qat_lr), loss="mse")
        with distribute.writable_dir(os.path.join(directory, "logs", "qat"), strategy) as logs:
            qat_history = resumable_fit(mixture, data, epochs=qat_epochs,
                                        checkpoint_dir=os.path.join(directory, "backup_qat"),
                                        tensorboard_dir=logs, name=f"gate {name} (int8-aware)",
                                        verbose=verbose)
        qat_history.pop("seconds", None)
        history = dict(history, quantization_aware=dict(epochs=qat_epochs,
                                                        learning_rate=qat_lr,
                                                        history=qat_history))
    history.pop("seconds", None)  # gate.json holds what is reproducible
    if int8_weights:  # deterministic, after training: a resumed fit snaps the same weights
        int8.snap_gate_weights(mixture.gate)
    info = dict(method=method, bias=[float(v) for v in np.asarray(bias)],
                bias_weight=float(bias_weight), combine=combine, training_loss=training_loss,
                epochs=int(epochs), batch_size=int(batch_size),
                learning_rate=float(learning_rate), data_seed=gate_seed(seed, name),
                history=history)
    if byte_target is not None:
        info["byte_target"] = float(byte_target)
    if int8_weights:
        info["int8_weights"] = True
    if not chief:  # every worker saves (collective reads), only the chief keeps it
        with distribute.writable_dir(os.path.join(directory, "gate"), strategy) as tmp:
            mixture.gate.save(tmp, include_optimizer=False)
        return mixture.gate, info
    write_json(os.path.join(directory, "gate.json"), info)
    with atomic_dir(os.path.join(directory, "gate")) as tmp:  # last: its presence means done
        mixture.gate.save(tmp, include_optimizer=False)
    return load_gate(directory)
