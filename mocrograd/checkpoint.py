"""Checkpoints: a model's parameters, an optimizer's state and a training run's progress in one file.

    model.save("normal.npz")                 # Module.save / Module.load: the parameters alone
    model.load("normal.npz")
    save_training("run.npz", model, opt, progress)     # what ``python -m mocrograd.train --checkpoint`` writes
    progress = load_training("run.npz", model, opt)

The file is a NumPy ``.npz`` (a zip of ``.npy`` arrays) that ``np.load(path,
allow_pickle=False)`` reads, with named arrays:

    meta                    uint8, 1-D: UTF-8 JSON (format, version, kind, model class,
                            optimizer hyperparameters, epoch, RNG states, settings, history)
    model/<name>            each parameter, 2-D float32/float64, under its state_dict name
    optim/<field>/<name>    optimizer buffers per parameter: velocity (SGD with momentum),
                            m and v (Adam); a parameter the optimizer has not touched yet
                            has no entry

Guarantees:

* Writes are atomic: the file is written to a temporary file in the same directory,
  flushed and fsync'ed, then renamed over the target with ``os.replace`` (and the
  directory fsync'ed). A process killed at any moment leaves either the old file
  or the new one, never a mix. A killed writer can leave a ``.<name>.*.tmp`` file
  behind; it is never read and may be deleted.
* Reads validate before assigning: every array is read (the zip's CRC-32 catches
  flipped bits), then names, shapes and dtypes are checked against the model (and
  optimizer) and only then is anything copied in. Missing, truncated, corrupted or
  mismatched files raise ``CheckpointError`` naming the file and the problem, and
  leave the model and optimizer untouched.
"""
import contextlib
import json
import math
import os
import tempfile

import numpy as np

FORMAT = "mocrograd-checkpoint"
VERSION = 1

__all__ = ["CheckpointError", "FORMAT", "VERSION", "atomic_write", "load_model", "load_training",
           "read_checkpoint", "read_metadata", "save_model", "save_training"]


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model/optimizer it is loaded into."""


# --------------------------------------------------------------- writing

def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open(path, "w") would give; mkstemp makes 0600 files


def _fsync_directory(directory):
    """Make a rename in ``directory`` durable (where the platform allows opening directories)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write):
    """Call ``write(binary_file)`` on a temporary file next to ``path``, then move it onto ``path``.

    The data is flushed and fsync'ed before ``os.replace`` and the directory is
    fsync'ed after it, so after a crash ``path`` holds either its old contents or
    the new ones. On any error (or KeyboardInterrupt) the temporary file is removed
    and ``path`` is left as it was."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(OSError):
            os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _encode_meta(meta):
    text = json.dumps(meta, allow_nan=True, sort_keys=True)
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def _write_npz(path, meta, arrays):
    named = {"meta": _encode_meta(meta)}
    for name, value in arrays.items():
        if name == "meta" or name in named:
            raise ValueError(f"array name {name!r} is reserved or repeated")
        named[name] = np.ascontiguousarray(value)
    atomic_write(path, lambda f: np.savez(f, **named))


# --------------------------------------------------------------- reading

def _describe(path):
    return os.fspath(path)


def read_checkpoint(path, names=None):
    """(metadata dict, {name: array}) of a checkpoint file; CheckpointError when it is unreadable.

    Every array is read in full (so the zip's CRC-32 of each member is verified),
    with ``allow_pickle=False``. ``names``: read only these arrays (and the metadata)."""
    where = _describe(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise CheckpointError(f"{where}: no such checkpoint file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{where}: is a directory, not a checkpoint file") from None
    except PermissionError:
        raise CheckpointError(f"{where}: permission denied") from None
    except EOFError:
        raise CheckpointError(f"{where}: the file is empty (not a mocrograd checkpoint)") from None
    except Exception as error:   # BadZipFile, ValueError, OSError, tokenize errors of a bad .npy header, ...
        raise CheckpointError(f"{where}: not a readable mocrograd checkpoint, the file is truncated or "
                              f"corrupted ({type(error).__name__}: {error})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{where}: not a mocrograd checkpoint (a single .npy array, not an .npz archive)")
    with archive:
        try:
            files = list(archive.files)
            if "meta" not in files:
                raise CheckpointError(f"{where}: not a mocrograd checkpoint (no 'meta' entry)")
            meta = _decode_meta(archive["meta"], where)
            wanted = files if names is None else [name for name in files if name in set(names)]
            arrays = {name: archive[name] for name in wanted if name != "meta"}
        except CheckpointError:
            raise
        except Exception as error:   # any damage to the zip or .npy structure, not only BadZipFile
            raise CheckpointError(f"{where}: the file is truncated or corrupted "
                                  f"({type(error).__name__}: {error})") from None
    return meta, arrays


def _decode_meta(array, where):
    if array.dtype != np.uint8 or array.ndim != 1:
        raise CheckpointError(f"{where}: the 'meta' entry is not UTF-8 JSON bytes")
    try:
        meta = json.loads(array.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{where}: the metadata is corrupted ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a mocrograd checkpoint (metadata format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{where}: checkpoint format version {meta.get('version')!r} is not supported "
                              f"(this mocrograd reads version {VERSION})")
    return meta


def read_metadata(path):
    """The metadata of a checkpoint (settings, epoch, ...) without reading its parameters."""
    return read_checkpoint(path, names=())[0]


# ------------------------------------------------------------ validation

def _check_model(model, arrays, meta, where):
    """{name: array} for model.load_state_dict, after checking names, shapes and dtypes exactly."""
    params = dict(model.named_tensors())
    stored = {name[len("model/"):]: value for name, value in arrays.items() if name.startswith("model/")}
    saved_class = meta.get("model_class", "?")
    this_class = type(model).__name__
    missing = [name for name in params if name not in stored]
    unexpected = [name for name in stored if name not in params]
    if missing or unexpected:
        def listing(names):
            return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        details = []
        if missing:
            details.append(f"missing {listing(missing)}")
        if unexpected:
            details.append(f"unexpected {listing(unexpected)}")
        raise CheckpointError(f"{where}: the checkpoint holds a {saved_class} with {len(stored)} parameters, "
                              f"the model is a {this_class} with {len(params)}: {'; '.join(details)}")
    for name, param in params.items():
        value = stored[name]
        if value.shape != tuple(param.shape):
            raise CheckpointError(f"{where}: parameter {name} has shape {value.shape} in the checkpoint "
                                  f"({saved_class}), the model ({this_class}) needs {tuple(param.shape)}")
        if value.dtype != param.dtype:
            raise CheckpointError(f"{where}: parameter {name} has dtype {value.dtype} in the checkpoint, "
                                  f"the model needs {param.dtype}")
    return stored


def _assign_model(model, stored):
    """Copy validated values in (validation already done: this cannot fail half-way)."""
    model.load_state_dict(stored, strict=True)


# -------------------------------------------------------------- models

def _model_arrays(model):
    return {f"model/{name}": value for name, value in model.state_dict().items()}


def _base_meta(kind, model):
    return {"format": FORMAT, "version": VERSION, "kind": kind, "model_class": type(model).__name__,
            "parameters": {name: [list(p.shape), str(p.dtype)] for name, p in model.named_tensors()}}


def save_model(model, path):
    """Write the model's parameters to ``path`` atomically (what ``Module.save`` does)."""
    _write_npz(path, _base_meta("model", model), _model_arrays(model))


def load_model(model, path):
    """Read parameters written by ``save_model`` (or a training checkpoint) into ``model``.

    Everything is validated first; on CheckpointError the model is unchanged."""
    where = _describe(path)
    meta, arrays = read_checkpoint(path)
    _assign_model(model, _check_model(model, arrays, meta, where))
    return model


# ------------------------------------------------------------- training

def _optimizer_names(model, optimizer):
    """Each optimizer parameter's name in the model, in the optimizer's order."""
    by_id = {id(p): name for name, p in model.named_tensors()}
    names = []
    for i, p in enumerate(optimizer.params):
        if id(p) not in by_id:
            raise ValueError(f"optimizer parameter {i} (shape {p.shape}) is not a parameter of the model")
        names.append(by_id[id(p)])
    return names


def _all_finite(array):
    """True when every element is finite (a float64 sum of finite float32 values cannot overflow)."""
    return math.isfinite(float(np.sum(array, dtype=np.float64)))


def save_training(path, model, optimizer, progress):
    """Write model, optimizer state and ``progress`` (a JSON-ready dict: epoch, RNG states,
    settings, history, ...) to ``path`` atomically.

    Non-finite parameters or optimizer state raise ValueError and nothing is written,
    so a run that diverged never replaces the last good checkpoint."""
    arrays = _model_arrays(model)
    for name, value in arrays.items():
        if not _all_finite(value):
            raise ValueError(f"not saving a checkpoint: parameter {name[len('model/'):]} is not finite")
    state = optimizer.state_dict()
    names = _optimizer_names(model, optimizer)
    hyper = {}
    for key, value in state.items():
        if isinstance(value, list) and len(value) == len(names) and all(
                v is None or isinstance(v, np.ndarray) for v in value):
            for name, buffer in zip(names, value):
                if buffer is None:
                    continue
                if not _all_finite(buffer):
                    raise ValueError(f"not saving a checkpoint: optimizer state {key} of {name} is not finite")
                arrays[f"optim/{key}/{name}"] = buffer
        else:
            hyper[key] = value
    meta = _base_meta("training", model)
    meta["optimizer"] = hyper
    meta["optimizer_buffers"] = sorted({key for key, value in state.items() if key not in hyper})
    meta["progress"] = progress
    _write_npz(path, meta, arrays)


def load_training(path, model, optimizer):
    """Load a training checkpoint into ``model`` and ``optimizer``; return its ``progress`` dict.

    Names, shapes and dtypes of the parameters and of the optimizer buffers and the
    optimizer type are all checked before anything is assigned."""
    where = _describe(path)
    meta, arrays = read_checkpoint(path)
    if meta.get("kind") != "training":
        raise CheckpointError(f"{where}: holds model parameters only (saved with Module.save), "
                              "not a training checkpoint with optimizer state")
    stored = _check_model(model, arrays, meta, where)
    names = _optimizer_names(model, optimizer)
    state = dict(meta.get("optimizer", {}))
    buffers = meta.get("optimizer_buffers", [])
    known = {f"optim/{key}/" for key in buffers}
    for name in arrays:
        if name.startswith("optim/") and not any(name.startswith(prefix) for prefix in known):
            raise CheckpointError(f"{where}: unexpected optimizer entry {name}")
    for key in buffers:
        state[key] = [arrays.get(f"optim/{key}/{name}") for name in names]
    try:
        optimizer.load_state_dict(state)    # validates everything, then assigns
    except (ValueError, TypeError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        raise CheckpointError(f"{where}: the optimizer state does not fit: {message}") from None
    _assign_model(model, stored)
    return meta.get("progress", {})
