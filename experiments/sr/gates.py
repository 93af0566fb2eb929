"""Training and loading one gate per (method, target) for the SR experiment.

Each gate lives in ``gates/<method>/<target index>/``:
``gate/`` (the SavedModel, written last, so its presence means done),
``backup/`` (``BackupAndRestore``: an interrupted fit resumes at the last epoch),
``logs/`` (TensorBoard) and ``gate.json`` (b, method, w_bias, history).
"""
import os

import numpy as np

from bmoe_tf import BiasedMixture
from bmoe_tf.backend import keras
from experiments.stages import atomic_dir, read_json, write_json

__all__ = ["train_gate", "load_gate", "gate_files", "gate_done"]


def gate_files(directory):
    """The artefacts whose presence means the gate in ``directory`` is done."""
    return [os.path.join(directory, "gate"), os.path.join(directory, "gate.json")]


def gate_done(directory):
    return all(os.path.exists(p) for p in gate_files(directory))


def load_gate(directory):
    """(keras gate model, its gate.json dict)."""
    return (keras.models.load_model(os.path.join(directory, "gate"), compile=False),
            read_json(os.path.join(directory, "gate.json")))


def train_gate(directory, *, build_gate, experts, bias, method, train_data, validation_data=None,
               epochs, learning_rate, bias_weight=1.0, combine="gate", training_loss="selected",
               seed=0, verbose=1):
    """Trains a gate with the experts frozen and saves it; resumes if interrupted.

    Args:
      directory: ``gates/<method>/<target index>[/candidates/...]``.
      build_gate: ``() -> keras.Model`` mapping parts ``[B, 64, 64, 3]`` to logits.
      experts: the frozen :class:`bmoe_tf.Expert` list.
      bias: ``float[N]``.
      method: ``"enforce"`` or ``"soft"``.
      train_data / validation_data: ``tf.data`` cache datasets
        (:func:`bmoe_tf.cache.cache_dataset`).
    Returns:
      ``(gate, info)`` as :func:`load_gate`.
    """
    if gate_done(directory):
        return load_gate(directory)
    os.makedirs(directory, exist_ok=True)
    keras.utils.set_random_seed(seed)
    mixture = BiasedMixture(build_gate(), experts, bias, method=method, bias_weight=bias_weight,
                            combine=combine, training_loss=training_loss)
    mixture.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse")
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(directory, "backup")),
        keras.callbacks.TensorBoard(os.path.join(directory, "logs"), update_freq="epoch",
                                    write_graph=False, profile_batch=0),
    ]
    history = mixture.fit(train_data, validation_data=validation_data, epochs=epochs,
                          callbacks=callbacks, verbose=verbose)
    info = dict(method=method, bias=[float(v) for v in np.asarray(bias)],
                bias_weight=float(bias_weight), combine=combine, training_loss=training_loss,
                epochs=int(epochs),
                learning_rate=float(learning_rate),
                history={k: [float(x) for x in v] for k, v in history.history.items()})
    write_json(os.path.join(directory, "gate.json"), info)
    with atomic_dir(os.path.join(directory, "gate")) as tmp:  # last: its presence means done
        mixture.gate.save(tmp, include_optimizer=False)
    return load_gate(directory)
