"""Tensor files: the package's one file format (safetensors with a ``format`` tag).

``save_tensors`` writes atomically (a temporary file in the same folder, then ``os.replace``: a
failed or interrupted save leaves any file at the path as it was) and ``load_tensors`` checks the
format before reading a tensor. WeightDelta, KeyStats, AlphaEdit's Editor, reptune's Direction,
DressFit, ``stats.tally``'s cache, ``iv.Cache`` and activation stores all go through them.
"""

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor


def save_tensors(
    path: str | os.PathLike,
    tensors: Mapping[str, Tensor],
    *,
    format: str,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``tensors`` to one safetensors file at ``path``, tagged with ``format``; returns it.

    Atomic: the file is written to a temporary file in the same folder, then moved over
    ``path``, so a failed or interrupted save (KeyboardInterrupt included) leaves any existing
    file byte for byte as it was, and no temporary file or newly made folder behind.
    ``metadata`` holds strings (JSON-encode anything else); ``"format"`` is reserved for
    ``format``, which ``load_tensors`` checks. Tensors are stored detached, on the CPU.
    """
    path = Path(path)
    _check_format(format)
    metadata = _checked_metadata(metadata, path)
    stored = _storable(tensors, path)
    new_folders = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        save_file(stored, tmp, metadata={**metadata, "format": format})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        for folder in new_folders:  # deepest first
            folder.rmdir()
        raise
    return path


def load_tensors(
    path: str | os.PathLike, *, format: str
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a file ``save_tensors`` wrote with this ``format``.

    ``metadata`` is what was saved (without ``"format"``); tensors are on the CPU. A missing
    file raises FileNotFoundError; a folder, a file that is not safetensors (or is truncated)
    and a file of another format raise ValueError naming the path and what was found.
    """
    path = Path(path)
    _check_format(format)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (expected a {format!r} file)")
    if not path.is_file():
        raise ValueError(f"{path} is not a file; pass the .safetensors file a {format} save wrote")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            found = metadata.pop("format", None)
            if found != format:  # before reading the tensors: the file may be large
                raise ValueError(_format_mismatch(path, format, found))
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - not a dict
    except SafetensorError as error:
        raise ValueError(
            f"{path} is not a readable safetensors file ({error}): it is truncated or in another "
            f"format; save the {format} file again"
        ) from None
    return tensors, metadata


def _check_format(format: object) -> None:
    if not isinstance(format, str) or not format.strip():
        raise TypeError(
            "format must be a non-empty string naming the file's kind and version, such as "
            f"'interventions.WeightDelta/1', got {format!r} ({type(format).__name__})"
        )


def _format_mismatch(path: Path, expected: str, found: str | None) -> str:
    if found is None:
        return (
            f"{path} is a safetensors file without a 'format' entry, not a {expected!r} file: it "
            "was not written by interventions; pass the file its save wrote"
        )
    return f"{path} is a {found!r} file, not a {expected!r} file: load it with what saved it"


def _checked_metadata(metadata: object, path: Path) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(
            f"save_tensors({path}): metadata must map strings to strings, got "
            f"{type(metadata).__name__}"
        )
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"save_tensors({path}): metadata must map strings to strings (json.dumps other "
                f"values), got {key!r}: {value!r} ({type(value).__name__})"
            )
    if "format" in metadata:
        raise ValueError(
            f"save_tensors({path}): metadata key 'format' is reserved; pass format=... instead"
        )
    return dict(metadata)


def _storable(tensors: object, path: Path) -> dict[str, Tensor]:
    """Detached, contiguous CPU tensors, none sharing memory (safetensors refuses shared
    storage, e.g. two views of one tensor, so a repeated storage is copied)."""
    if not isinstance(tensors, Mapping):
        kind = type(tensors).__name__
        raise TypeError(f"save_tensors({path}): tensors must map names to tensors, got {kind}")
    stored: dict[str, Tensor] = {}
    storages: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not isinstance(tensor, Tensor):
            raise TypeError(
                f"save_tensors({path}): tensors must map names (str) to tensors, got {name!r}: "
                f"{type(tensor).__name__}"
            )
        if tensor.is_meta:
            raise ValueError(
                f"save_tensors({path}): tensor {name!r} is on the meta device (offloaded or "
                "not loaded): it has no values to save"
            )
        value = tensor.detach().cpu().contiguous()
        storage = value.untyped_storage().data_ptr()
        if value.numel() and storage in storages:
            value = value.clone()
            storage = value.untyped_storage().data_ptr()
        storages.add(storage)
        stored[name] = value
    return stored
