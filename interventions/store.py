"""Activation datasets: capture sites over a corpus into a folder of sharded safetensors files,
and read them back, memory-mapped, as a torch ``Dataset`` of per-token rows (probes, SAEs).

>>> from interventions import store
>>> store.write(model, texts, ["layers.3.resid_post"], "acts", tokenizer=tokenizer,
...             max_tokens=1_000_000, skip_first_token=True)
>>> data = store.read("acts")                  # later, in any process
>>> data[0]  # {"layers.3.resid_post": tensor [d_model], "example": tensor(0), "position": ...}

``write`` streams: each forward stops after the last site, only the selected real tokens are
kept, and a shard is written as soon as it holds ``shard_tokens`` rows, so memory holds at most
one shard (and the batch in flight). After each shard a manifest is replaced atomically; a
rerun with the same model, inputs and options skips the finished shards without running the
model on them, and a folder written with other options is refused.
"""

import bisect
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Bool, Int
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from interventions import text
from interventions.adapters import adapter
from interventions.attach import capture
from interventions.checks import integer
from interventions.distributed import World
from interventions.distributed import shard as shard_of
from interventions.distributed import world as distributed_world
from interventions.files import save_tensors
from interventions.sites import SiteLike, expand
from interventions.stats import fingerprints, hash_tensor

MANIFEST = "manifest.json"
_FORMAT = "interventions.ActivationStore/1"  # the manifest's
_SHARD_FORMAT = "interventions.ActivationShard/1"
_INDEX = "index"  # [rows, 2]: (example, position) of each row


def write(
    model: nn.Module,
    data: Iterable[Any],
    sites: SiteLike | Iterable[SiteLike],
    folder: str | os.PathLike,
    *,
    tokenizer: Any = None,
    batch_size: int = 8,
    max_length: int = 128,
    max_tokens: int | None = None,
    padding: Literal["left", "right"] = "right",
    positions: int | Literal["all"] = "all",
    skip_first_token: bool = False,
    shard_tokens: int = 65_536,
    progress: bool = True,
    distributed: "bool | World | None" = None,
) -> "ActivationDataset":
    """Capture ``sites`` over ``data`` into ``folder``; returns ``read(folder)``.

    ``data``: ``text.Batch`` values (anything with ``input_ids`` and ``attention_mask``
    ``[batch, tokens]``), or texts with ``tokenizer``: cut into rows of at most ``max_length``
    tokens until ``max_tokens`` in all (``text.chunks``), ``batch_size`` rows a batch, padded on
    ``padding``'s side. Rows are the real tokens only (the attention mask), less each row's first
    with ``skip_first_token``; ``positions`` an int keeps one token of each row, counted among
    its real tokens (``-1``: the last). Each row keeps its ``(example, position)``: the row of
    the input stream it comes from and its position id.

    A shard of ``shard_tokens`` rows is written as soon as it is full; after each one the
    manifest is replaced atomically. Interrupted, the folder keeps the finished shards: the same
    call again checks the model (``stats.fingerprint``), the token ids of every batch and the
    options against the manifest, runs no forward for the finished shards and writes the rest,
    giving the same files as an uninterrupted write. A folder written with other options, another
    model or other inputs is refused.

    ``distributed`` (as in ``stats.tally``): under ``torchrun`` every rank calls ``write`` with
    the same data; each captures a contiguous block of the batches into its own store
    ``folder/part-RRRRR-of-NNNNN`` (resumable alone), and rank 0 then writes the manifest that
    lists every part's shards in order: ``read(folder)`` gives the rows one process gives, with
    the same ``example`` and ``position`` (the shards are cut per part).
    """
    folder = _checked_folder(folder)
    table = adapter(model)
    n_layers = table.geometry(model.config).n_layers
    expanded = expand(sites, n_layers)
    for site in expanded:  # before any forward: a site this architecture has no meaning for
        table.refuse(site.kind, model.config)
    names = [str(site) for site in expanded]
    if not names:
        raise ValueError("store.write got no sites: name at least one, e.g. 'layers.3.resid_post'")
    for name in names:
        if name.endswith("attn.pattern"):
            raise ValueError(
                f"store.write: {name} has a row per query whose length (the keys) changes from "
                "batch to batch, so it has no per-token rows: capture it with iv.capture"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"store.write: sites {names} name a site twice; give each once")
    positions = _checked_positions(positions)
    for flag, value in (("skip_first_token", skip_first_token), ("progress", progress)):
        if not isinstance(value, bool):
            raise TypeError(f"store.write: {flag} must be True or False, got {value!r}")
    shard_tokens = integer("shard_tokens", shard_tokens)
    options: dict[str, Any] = {
        "sites": names,
        "positions": positions,
        "skip_first_token": skip_first_token,
        "shard_tokens": shard_tokens,
        "text": None,
    }
    if tokenizer is not None:
        if max_tokens is None:
            raise ValueError(
                "store.write(tokenizer=...) needs max_tokens: how many tokens of the texts to "
                "capture in all (e.g. max_tokens=1_000_000)"
            )
        if padding not in text.SIDES:
            raise ValueError(f"store.write: padding must be one of {text.SIDES}, got {padding!r}")
        rows = text.chunks(tokenizer, data, max_length, max_tokens)
        batch_size = integer("batch_size", batch_size)
        options["text"] = {"batch_size": batch_size, "max_length": max_length, "padding": padding}
        total = sum(_count(length, positions, skip_first_token) for length in map(len, rows))
        batches: Iterable[Any] = _padded(rows, batch_size, text.pad_id(tokenizer), padding)
    else:
        batches = _checked_batches(data)
        total = None
        if isinstance(batches, Sequence):  # a list: checked, and counted for the bar, up front
            masks = [_rows(batch, i)[1] for i, batch in enumerate(batches)]
            total = sum(int(_selection(m, positions, skip_first_token).sum()) for m in masks)
    try:
        options["fingerprints"] = fingerprints(model, expanded)  # keyed by the names
    except ValueError as error:  # offloaded weights: nothing to hash
        raise ValueError(
            f"store.write: the model cannot be fingerprinted for the manifest ({error}); load "
            "its weights in memory (no offloading to the meta device)"
        ) from None
    world = distributed_world(distributed)
    if world.size > 1:
        batches = list(batches)
        _write_parts(
            model, batches, names, folder, options, positions, skip_first_token, progress, world
        )
        return read(folder)
    manifest = _resumed(folder, options)
    bar = tqdm(total=total, unit="tok", desc="store", disable=not progress)
    with bar:
        _fill(model, batches, names, folder, manifest, positions, skip_first_token, bar)
    return read(folder)


def read(folder: str | os.PathLike) -> "ActivationDataset":
    """The finished activation store in ``folder``, memory-mapped (see ``ActivationDataset``)."""
    return ActivationDataset(folder)


class ActivationDataset(Dataset):
    """The rows of an activation store: ``data[i]`` is ``{site: tensor, "example": tensor(),
    "position": tensor()}``, read from its shard through a memory map (``safetensors``
    ``safe_open``, each shard opened on first use), so a dataset larger than memory reads fine.
    ``shard(k)`` gives a whole shard at once (``{site: [rows, ...], "index": [rows, 2]}``), the
    fast way to train on it. Picklable (DataLoader workers open their own maps)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        manifest = _read_manifest(self.folder)
        if manifest is None:
            raise FileNotFoundError(
                f"{self.folder} holds no activation store ({MANIFEST} missing): write one with "
                "store.write(model, data, sites, folder)"
            )
        if not manifest["complete"]:
            raise ValueError(
                f"the activation store in {self.folder} is unfinished ({len(manifest['shards'])} "
                "shards written): run the same store.write call again to finish it"
            )
        self.sites: list[str] = list(manifest["options"]["sites"])
        self.options: dict[str, Any] = manifest["options"]
        self._shards = manifest["shards"]
        self._ends: list[int] = []
        for shard in self._shards:
            self._ends.append((self._ends[-1] if self._ends else 0) + int(shard["rows"]))
        self._open: dict[int, Any] = {}

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    @property
    def n_shards(self) -> int:
        return len(self._shards)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        n = len(self)
        i = integer("index", i, minimum=None)
        if not -n <= i < n:
            raise IndexError(f"row {i} is outside the store's {n} rows")
        i %= n
        k = bisect.bisect_right(self._ends, i)
        j = i - (self._ends[k - 1] if k else 0)
        f = self._handle(k)
        row = {name: f.get_slice(name)[j : j + 1][0] for name in self.sites}
        example, position = f.get_slice(_INDEX)[j : j + 1][0]
        return {**row, "example": example, "position": position}

    def shard(self, k: int) -> dict[str, Tensor]:
        """Every row of shard ``k``: ``{site: [rows, ...], "index": [rows, 2]}``."""
        k = integer("shard", k, minimum=0)
        if k >= self.n_shards:
            raise IndexError(f"shard {k} does not exist: the store has {self.n_shards} shards")
        f = self._handle(k)
        return {name: f.get_tensor(name) for name in [*self.sites, _INDEX]}

    def _handle(self, k: int) -> Any:
        if k not in self._open:
            self._open[k] = _open_shard(self.folder / self._shards[k]["file"], self, k)
        return self._open[k]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_open": {}}  # memory maps do not pickle: reopened on use


# --- writing ------------------------------------------------------------------------------------


def _write_parts(
    model: nn.Module,
    batches: list[Any],
    names: list[str],
    folder: Path,
    options: dict[str, Any],
    positions: int | str,
    skip_first_token: bool,
    progress: bool,
    world: World,
) -> None:
    """``write`` on every rank: this rank's block of ``batches`` into its part, then rank 0
    writes the manifest of the whole."""
    whole = {**options, "parts": world.size}
    with world.guard("store.write"):
        rows = [_rows(batch, i) for i, batch in enumerate(batches)]
        selected = [int(_selection(mask, positions, skip_first_token).sum()) for _, mask, _ in rows]
        if sum(selected) == 0:
            raise ValueError(_NOTHING_SELECTED)
        block = shard_of(len(batches), world.rank, world.size, [ids.numel() for ids, _, _ in rows])
        first_example = sum(ids.shape[0] for ids, _, _ in rows[: block.start])
        _resumed(folder, whole, parts=world.size)  # a foreign folder is refused
        part = folder / _part_name(world.rank, world.size)
        manifest = _resumed(part, options)
        mine = batches[block.start : block.stop]
        with tqdm(total=sum(selected[block.start : block.stop]), unit="tok", disable=True) as bar:
            _fill(
                model, mine, names, part, manifest, positions, skip_first_token, bar, first_example
            )
    parts = world.exchange(_read_manifest(part), "store.write")
    with world.guard("store.write: the manifest (rank 0)"):
        if world.rank == 0:
            _write_manifest(folder, _joined(whole, parts))


def _part_name(rank: int, size: int) -> str:
    return f"part-{rank:05d}-of-{size:05d}"


def _joined(options: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest of a store made of ``parts`` (each a finished store's manifest, in order)."""
    shards = [
        {**written, "file": f"{_part_name(rank, len(parts))}/{written['file']}"}
        for rank, part in enumerate(parts)
        for written in part["shards"]
    ]
    inputs = hashlib.sha256("".join(part["inputs"] for part in parts).encode()).hexdigest()
    rows = sum(int(part["rows"]) for part in parts)
    return {
        "format": _FORMAT,
        "options": options,
        "shards": shards,
        "complete": True,
        "rows": rows,
        "inputs": inputs,
    }


def _fill(
    model: nn.Module,
    batches: Iterable[Any],
    names: list[str],
    folder: Path,
    manifest: dict[str, Any],
    positions: int | str,
    skip_first_token: bool,
    bar: tqdm,
    first_example: int | None = None,
) -> None:
    """Run the batches whose rows are not stored yet, checking those that are against the
    manifest (their inputs' running digest where each finished shard ended). Rows count their
    ``example`` from ``first_example``; a part of a distributed store may hold no row."""
    done = manifest["shards"]
    ends = [sum(int(s["rows"]) for s in done[: k + 1]) for k in range(len(done))]
    stored = ends[-1] if ends else 0
    shards = _Shards(folder, names, manifest)
    inputs = hashlib.sha256()
    seen = checked = 0
    examples = first_example or 0
    device = text.device_of(model)
    for index, batch in enumerate(batches):
        ids, mask, position_ids = _rows(batch, index)
        for t in (ids, mask, position_ids):
            hash_tensor(inputs, t)
        selected = _selection(mask, positions, skip_first_token)
        n = int(selected.sum())
        where = selected.nonzero(as_tuple=True)
        rows = torch.stack([where[0] + examples, position_ids[where]], dim=1)
        examples += ids.shape[0]
        while checked < len(ends) and seen + n >= ends[checked]:
            if done[checked]["inputs"] != inputs.hexdigest():
                raise ValueError(_other_inputs(folder, checked))
            checked += 1
        if seen + n <= stored:  # every row in a finished shard: no forward
            seen += n
            bar.update(n)
            continue
        if manifest["complete"]:
            raise ValueError(_other_inputs(folder, len(done)))
        skip = max(stored - seen, 0)
        acts = _forward(model, batch, names, selected, device)
        shards.add({k: v[skip:] for k, v in acts.items()}, rows[skip:], inputs.hexdigest())
        seen += n
        bar.update(n)
    if manifest["complete"]:
        if seen != stored or manifest["inputs"] != inputs.hexdigest():
            raise ValueError(_other_inputs(folder, len(done)))
        return
    if seen == 0 and first_example is None:
        raise ValueError(_NOTHING_SELECTED)
    shards.finish(inputs.hexdigest(), seen)


_NOTHING_SELECTED = (
    "store.write: no token was selected (no batches, or every token is padding, or skipped by "
    "positions / skip_first_token): give batches with real tokens"
)


def _forward(
    model: nn.Module, batch: Any, names: list[str], selected: Tensor, device: torch.device
) -> dict[str, Tensor]:
    inputs = {k: v.to(device) for k, v in text.model_inputs(model, batch).items()}
    with torch.no_grad(), capture(model, names, positions=selected, device="cpu", stop=True) as c:
        model(**inputs, use_cache=False)
    return {name: c[name] for name in names}


class _Shards:
    """Rows waiting for their shard: never more than ``shard_tokens`` (``buffered``); a full
    shard is written at once, then the manifest that lists it."""

    def __init__(self, folder: Path, names: list[str], manifest: dict[str, Any]):
        self.folder, self.names, self.manifest = folder, names, manifest
        self.size = int(manifest["options"]["shard_tokens"])
        self.parts: dict[str, list[Tensor]] = {name: [] for name in [*names, _INDEX]}
        self.buffered = 0

    def add(self, acts: Mapping[str, Tensor], rows: Int[Tensor, "n 2"], inputs: str) -> None:
        start, n = 0, rows.shape[0]
        while start < n:
            take = min(n - start, self.size - self.buffered)
            for name in self.names:
                self.parts[name].append(acts[name][start : start + take])
            self.parts[_INDEX].append(rows[start : start + take])
            self.buffered += take
            start += take
            if self.buffered == self.size:
                self._flush(inputs)

    def finish(self, inputs: str, rows: int) -> None:
        if self.buffered:
            self._flush(inputs, last=True)
        self.manifest.update(complete=True, rows=rows, inputs=inputs)
        _write_manifest(self.folder, self.manifest)

    def _flush(self, inputs: str, *, last: bool = False) -> None:
        k = len(self.manifest["shards"])
        file = f"shard-{k:05d}.safetensors"
        tensors = {name: torch.cat(parts) for name, parts in self.parts.items()}
        # format only, no other metadata: safetensors writes several entries in a random order,
        # and a resumed write must give the same bytes
        save_tensors(self.folder / file, tensors, format=_SHARD_FORMAT)
        self.manifest["shards"].append({"file": file, "rows": self.buffered, "inputs": inputs})
        if not last:  # the last shard's manifest is written once, complete, by finish
            _write_manifest(self.folder, self.manifest)
        self.parts = {name: [] for name in self.parts}
        self.buffered = 0


def _padded(
    rows: Sequence[list[int]], size: int, pad_id: int, side: Literal["left", "right"]
) -> Iterator[text.Batch]:
    for chunk in text.batches(rows, size):
        yield text.pad(chunk, pad_id, side)


# --- what a row is -------------------------------------------------------------------------------


def _checked_positions(positions: object) -> int | str:
    if positions == "all" and isinstance(positions, str):
        return "all"
    if isinstance(positions, bool) or not isinstance(positions, int):
        raise TypeError(
            f"store.write: positions must be 'all' (every real token) or an int (one token per "
            f"row among its real tokens, -1 the last), got {positions!r}"
        )
    return int(positions)


def _selection(
    mask: Int[Tensor, "b t"], positions: int | str, skip_first_token: bool
) -> Bool[Tensor, "b t"]:
    nth = None if positions == "all" else int(positions)
    return text.selected_tokens(mask, nth, skip_first_token=skip_first_token)


def _count(length: int, positions: int | str, skip_first_token: bool) -> int:
    return int(
        _selection(torch.ones(1, length, dtype=torch.long), positions, skip_first_token).sum()
    )


# --- inputs --------------------------------------------------------------------------------------


def _checked_batches(data: object) -> Iterable[Any]:
    if isinstance(data, (str, bytes, Mapping, Tensor)) or not isinstance(data, Iterable):
        raise TypeError(
            f"store.write: data must be an iterable of text.Batch values (or of texts, with "
            f"tokenizer=...), got {type(data).__name__}: wrap a single batch in a list"
        )
    return data


def _rows(batch: Any, index: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(input_ids, attention_mask, position_ids)`` of a batch, checked, on the CPU."""
    if isinstance(batch, str):
        raise TypeError(
            f"store.write: item {index} of data is a text ({batch[:40]!r}); give "
            "tokenizer=... to capture texts, or give text.Batch values"
        )
    ids, mask = text.checked_rows(batch, index, "store.write")
    position_ids = getattr(batch, "position_ids", None)
    if position_ids is None:
        position_ids = text.positions(mask)
    return ids.cpu().long(), mask.cpu().long(), position_ids.cpu().long()


# --- the folder ----------------------------------------------------------------------------------


def _checked_folder(folder: object) -> Path:
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"store: folder must be a path, got {folder!r} ({type(folder).__name__})")
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ValueError(f"store.write: {path} is a file, not a folder")
    return path


def _resumed(folder: Path, options: dict[str, Any], parts: int | None = None) -> dict[str, Any]:
    """The manifest to go on from: the folder's (same options), or a new one. With ``parts``,
    the folder of a distributed store: its parts' folders may be there before its manifest."""
    manifest = _read_manifest(folder)
    if manifest is None:
        ours = {_part_name(rank, parts) for rank in range(parts)} if parts else set()
        if folder.exists() and any(entry.name not in ours for entry in folder.iterdir()):
            raise ValueError(
                f"store.write: {folder} is not empty and holds no {MANIFEST}: it is not an "
                "activation store; give a new or empty folder"
            )
        return {"format": _FORMAT, "options": options, "shards": [], "complete": False}
    if manifest["options"] != options:
        old = manifest["options"]
        changed = sorted(k for k in options.keys() | old.keys() if old.get(k) != options.get(k))
        raise ValueError(
            f"store.write: {folder} was written with other options ({', '.join(changed)} "
            f"differ{'s' if len(changed) == 1 else ''}; fingerprints: another model or weights): "
            "use another folder, or delete this one to write it again"
        )
    return manifest


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        ok = manifest.get("format") == _FORMAT and isinstance(manifest.get("shards"), list)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise ValueError(f"{path} is not a readable activation store manifest ({error})") from None
    if not ok:
        raise ValueError(f"{path} is not a {_FORMAT!r} manifest: this folder is not a store")
    return manifest


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically: a reader sees the old one or the new one, whole."""
    folder.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{MANIFEST}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
        os.replace(tmp, folder / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _open_shard(path: Path, data: ActivationDataset, k: int) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} (shard {k} of the store in {data.folder}) is missing")
    try:
        f = safe_open(str(path), framework="pt")
    except SafetensorError as error:
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from None
    found = (f.metadata() or {}).get("format")
    rows = f.get_slice(_INDEX).get_shape()[0] if _INDEX in f.keys() else None  # noqa: SIM118
    if found != _SHARD_FORMAT or set(f.keys()) != {*data.sites, _INDEX}:
        raise ValueError(f"{path} is not a shard of this store (format {found!r}, {f.keys()})")
    if rows != int(data._shards[k]["rows"]):
        raise ValueError(f"{path} holds {rows} rows, the manifest says {data._shards[k]['rows']}")
    return f


def _other_inputs(folder: Path, shard: int) -> str:
    return (
        f"store.write: the inputs differ from those {folder} was written from (by shard "
        f"{shard}): give the same texts or batches in the same order, or another folder"
    )
