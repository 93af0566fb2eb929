"""One resumable Keras training loop, for gates and experts alike.

:func:`resumable_fit` runs ``model.fit`` on a compiled model and adds what every
training of this project needs:

* **Per-epoch checkpoints.** With ``checkpoint_dir``, Keras'
  ``BackupAndRestore`` saves model, optimizer (slots, step count, hence any
  learning-rate schedule) and the epoch count after every epoch
  (``checkpoint_dir/chief/``), and the epochs' logs go to
  ``checkpoint_dir/history.json`` (written before each checkpoint, so they always
  cover it). A later call with the same arguments resumes after the last finished
  epoch: a killed run loses at most one epoch. Both are deleted when training ends
  (the folder too when it is then empty); a run killed after its last checkpoint
  but before that clean-up restores the weights and trains nothing.
* **Exact resumption.** The weights after a resume equal those of an uninterrupted
  run when everything random is a function of the epoch (or saved with the model):
  the data order (``data`` as a function of the first epoch, or a dataset that
  reads its epoch, like :func:`bmoe_tf.cache.cache_dataset`), and random layers
  whose state is a model weight. Keras' ``Dropout`` and ``tf.data``'s
  ``shuffle`` draw from process state and do not resume exactly.
* **Seeds.** ``seed`` (when given) is set with ``keras.utils.set_random_seed``
  before anything else.
* **Progress.** ``verbose=1`` prints one line per epoch (``name epoch e/E: loss
  ... (seconds)``), ``verbose=2`` Keras' progress bars as well.
* Optional validation (Keras' ``validation_data`` / ``validation_freq``) and
  TensorBoard logs (``tensorboard_dir``).

Under a ``tf.distribute`` strategy (the model compiled in its scope) every
worker calls :func:`resumable_fit` with the same arguments; only the chief
(``strategy.extended.should_checkpoint``) writes ``history.json`` and cleans up,
``BackupAndRestore`` resumes every worker at the same epoch.
"""
import json
import os
import time

from bmoe_tf.backend import keras, tf
from bmoe_tf.checks import check_count

__all__ = ["resumable_fit", "saved_epoch", "HISTORY_FILE"]

#: The epochs' logs inside ``checkpoint_dir``.
HISTORY_FILE = "history.json"
# BackupAndRestore's checkpoint folder (of the chief) inside its backup_dir.
_CHIEF = "chief"


def saved_epoch(checkpoint_dir):
    """Epochs finished according to the checkpoint in ``checkpoint_dir`` (0 if none).

    Raises ValueError naming the checkpoint when it is not one of ``BackupAndRestore``.
    """
    latest = tf.train.latest_checkpoint(os.path.join(os.fspath(checkpoint_dir), _CHIEF))
    if not latest:
        return 0
    reader = tf.train.load_checkpoint(latest)
    for key in reader.get_variable_to_shape_map():
        if key.startswith("ckpt_saved_epoch/"):
            return int(reader.get_tensor(key)) + 1
    raise ValueError(f"{latest} is not a BackupAndRestore checkpoint (no saved epoch)")


def _write_json(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(value, fh)
    os.replace(tmp, path)


def _history(records):
    """``{key: [value per epoch]}`` of the per-epoch records (``epoch`` left out)."""
    history = {}
    for record in records:
        for key, value in record.items():
            if key != "epoch":
                history.setdefault(key, []).append(value)
    return history


class _EpochRecords(keras.callbacks.Callback):
    """Checks the resumed epoch, times epochs, keeps (and writes) their logs, prints."""

    def __init__(self, name, epochs, first_epoch, records, path, verbose):
        super().__init__()
        self._name, self._epochs, self._first = name, epochs, first_epoch
        self._records, self._path, self._verbose = records, path, verbose

    def on_epoch_begin(self, epoch, logs=None):
        if self._first is not None:
            if epoch != self._first:  # the data order was drawn for another epoch
                raise RuntimeError(f"{self._name}: Keras resumed at epoch {epoch}, the data "
                                   f"was prepared from epoch {self._first}")
            self._first = None
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        record = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()},
                  "seconds": seconds}
        self._records.append(record)
        if self._path is not None:  # before BackupAndRestore's checkpoint of this epoch
            _write_json(self._path, self._records)
        if self._verbose:
            parts = " ".join(f"{k} {v:.4f}" for k, v in record.items()
                             if k not in ("epoch", "seconds"))
            print(f"{self._name} epoch {epoch + 1}/{self._epochs}: {parts} ({seconds:.1f} s)",
                  flush=True)


def resumable_fit(model, data, *, epochs, steps_per_epoch=None, validation_data=None,
                  validation_freq=1, checkpoint_dir=None, tensorboard_dir=None, seed=None,
                  name=None, verbose=1, callbacks=()):
    """Trains the compiled ``model`` for ``epochs`` epochs; resumes after a kill.

    Args:
      model: a compiled ``keras.Model`` (any ``train_step``, loss, optimizer and
        learning-rate schedule; compiled in the strategy's scope under one).
      data: the training data, either
        * a callable ``first_epoch -> tf.data.Dataset`` giving the batches of epochs
          ``first_epoch .. epochs - 1`` one after the other, ``steps_per_epoch``
          batches each (``first_epoch`` is 0, or the epoch a resume starts at); or
        * a ``tf.data.Dataset`` of which one pass is one epoch (``steps_per_epoch``
          None), re-iterated by Keras every epoch.
      epochs: total number of epochs (those done before a resume included).
      steps_per_epoch: batches per epoch; required when ``data`` is a callable.
      validation_data, validation_freq: Keras' (validation after epoch e, counted
        from 1, when ``e % validation_freq == 0``).
      checkpoint_dir: folder of the per-epoch checkpoint and ``history.json`` (see
        the module docstring); None trains without checkpoints.
      tensorboard_dir: when given, TensorBoard logs (per epoch, no graph) go there.
      seed: when not None, ``keras.utils.set_random_seed(seed)`` first.
      name: the name in progress lines and errors (default ``model.name``).
      verbose: 0 silent, 1 one line per epoch, 2 Keras' progress bars too.
      callbacks: extra Keras callbacks (run after the epoch's checkpoint).

    Returns:
      The history of all epochs, also those run before a resume: ``{key: [value
      per epoch]}`` with Keras' logs (``loss``, metrics; ``val_*`` per validation)
      and ``seconds`` (wall time of each epoch).

    Raises:
      ValueError: the model is not compiled, ``data`` is neither a dataset nor a
        callable (or a callable without ``steps_per_epoch``), or a count is not a
        positive integer, or ``verbose`` not 0, 1 or 2.
      RuntimeError: Keras resumed at another epoch than ``data`` was built for.
    """
    if not isinstance(model, keras.Model) or getattr(model, "optimizer", None) is None:
        raise ValueError(f"resumable_fit needs a compiled keras.Model, got "
                         f"{type(model).__name__}" + (" (not compiled)"
                                                      if isinstance(model, keras.Model) else ""))
    epochs = check_count(epochs, "epochs", minimum=1)
    validation_freq = check_count(validation_freq, "validation_freq", minimum=1)
    if steps_per_epoch is not None:
        steps_per_epoch = check_count(steps_per_epoch, "steps_per_epoch", minimum=1)
    if isinstance(data, tf.data.Dataset):
        if steps_per_epoch is not None:
            raise ValueError("steps_per_epoch goes with data given as a callable of the first "
                             "epoch; a dataset is one epoch per pass")
    elif callable(data):
        if steps_per_epoch is None:
            raise ValueError("data given as a callable of the first epoch needs "
                             "steps_per_epoch")
    else:
        raise ValueError(f"data must be a tf.data.Dataset or a callable first_epoch -> "
                         f"dataset, got {type(data).__name__}")
    if verbose not in (0, 1, 2) or isinstance(verbose, bool):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    name = name or model.name
    if seed is not None:
        keras.utils.set_random_seed(int(seed))
    chief = model.distribute_strategy.extended.should_checkpoint

    initial_epoch, records, history_path, backup = 0, [], None, []
    if checkpoint_dir is not None:
        checkpoint_dir = os.fspath(checkpoint_dir)
        os.makedirs(checkpoint_dir, exist_ok=True)
        history_path = os.path.join(checkpoint_dir, HISTORY_FILE)
        initial_epoch = saved_epoch(checkpoint_dir)
        if initial_epoch and os.path.exists(history_path):
            with open(history_path) as fh:
                records = [r for r in json.load(fh) if r["epoch"] <= initial_epoch]
        if initial_epoch and verbose:
            print(f"{name}: resuming after epoch {initial_epoch} from {checkpoint_dir}",
                  flush=True)
        backup = [keras.callbacks.BackupAndRestore(checkpoint_dir, delete_checkpoint=True)]
    log = _EpochRecords(name, epochs, initial_epoch, records, history_path if chief else None,
                        verbose)

    if initial_epoch >= epochs:  # every epoch done, only the clean-up was missing
        latest = tf.train.latest_checkpoint(os.path.join(checkpoint_dir, _CHIEF))
        tf.train.Checkpoint(model=model).restore(latest).expect_partial()
    else:
        board = []
        if tensorboard_dir is not None:
            board = [keras.callbacks.TensorBoard(os.fspath(tensorboard_dir),
                                                 update_freq="epoch", write_graph=False,
                                                 profile_batch=0)]
        train = data if isinstance(data, tf.data.Dataset) else data(initial_epoch)
        model.fit(train, validation_data=validation_data, epochs=epochs,
                  initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
                  validation_freq=validation_freq,
                  callbacks=[log] + backup + board + list(callbacks),
                  verbose=2 if verbose == 2 else 0)
    if checkpoint_dir is not None and chief:  # BackupAndRestore removed chief/ after fit
        if tf.io.gfile.exists(os.path.join(checkpoint_dir, _CHIEF)):
            tf.io.gfile.rmtree(os.path.join(checkpoint_dir, _CHIEF))
        if os.path.exists(history_path):
            os.remove(history_path)
        try:
            os.rmdir(checkpoint_dir)
        except OSError:
            pass
    return _history(records)
