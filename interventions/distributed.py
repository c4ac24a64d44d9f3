"""Data-parallel passes under ``torch.distributed``: each rank runs its shard, the sums merge.

Every streaming pass of the library (``stats.tally`` and so ``alphaedit.key_stats``,
``head_scores.score``, ``dress.head_activations``, ``store.write``) is a sum over batches, so N
processes launched by ``torchrun`` can each run a contiguous shard of the batches and add their
statistics. This module is the one code path they share:

- ``world(distributed)``: this process's ``World`` (rank, size, timeout), from an initialised
  process group, or from the environment ``torchrun`` sets (``RANK``, ``WORLD_SIZE``), in which
  case the group is initialised here (``env://``; gloo for CPU tensors, nccl for CUDA ones). A
  plain single process gets ``World()`` (size 1), and every pass then runs exactly as before.
- ``World.shard(items, weights)``: this rank's contiguous block of the items, balanced by weight.
- ``World.guard(what)``: around a rank's part of a pass. Every rank then tells every other
  whether its part succeeded; a failure raises ``RankFailed`` on every rank, naming the rank that
  failed (or that never answered: killed, or hung past the timeout) instead of leaving the
  others waiting in a collective forever.
- ``all_reduce(states)`` / ``World.exchange(value)`` / ``World.gather_rows(rows)``: the merges
  (sums of tensors on their own device; any picklable value; row blocks in rank order).

Point-to-point messages to rank 0 carry the status, each awaited with the timeout, so a dead rank
is named by the rank that waited for it (collectives alone would only say "connection reset").
"""

import logging
import os
import pickle
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_TIMEOUT = timedelta(minutes=30)  # torch's own default for a process group
_GLOO_GROUPS: dict[float, Any] = {}  # a gloo group for CPU messages where the default is nccl


class RankFailed(RuntimeError):
    """A rank's part of a distributed pass failed, or the rank stopped answering."""


@dataclass(frozen=True)
class World:
    """Which of ``size`` processes this is; ``timeout``: how long a rank waits for the others
    at each merge (slower ranks included: make it longer than the imbalance of the shards)."""

    rank: int = 0
    size: int = 1
    timeout: timedelta = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ValueError(f"World: size must be an int >= 1, got {self.size!r}")
        if not isinstance(self.rank, int) or not 0 <= self.rank < self.size:
            raise ValueError(f"World: rank must be an int in [0, {self.size}), got {self.rank!r}")
        if not isinstance(self.timeout, timedelta) or self.timeout.total_seconds() <= 0:
            raise ValueError(f"World: timeout must be a positive timedelta, got {self.timeout!r}")
        if self.size > 1 and not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                f"World(size={self.size}) needs an initialised torch.distributed process group: "
                "launch with torchrun (the passes initialise it), or call "
                "torch.distributed.init_process_group first"
            )
        if self.size > 1 and (dist.get_rank(), dist.get_world_size()) != (self.rank, self.size):
            raise ValueError(
                f"World(rank={self.rank}, size={self.size}) is not this process: the process "
                f"group says rank {dist.get_rank()} of {dist.get_world_size()}"
            )

    def shard(self, items: Sequence[T], weights: Sequence[float] | None = None) -> list[T]:
        """This rank's block of ``items`` (``shard``)."""
        return [items[i] for i in shard(len(items), self.rank, self.size, weights)]

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Run this rank's part of ``what``; then every rank learns whether every part
        succeeded, and if one did not, every rank raises ``RankFailed`` naming it."""
        try:
            yield
        except BaseException as error:
            if self.size > 1:
                self._settle(f"{type(error).__name__}: {error}", what, error)
            raise
        if self.size > 1:
            self._settle(None, what, None)

    def exchange(self, value: Any, what: str) -> list[Any]:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if self.size == 1:
            return [value]
        return [v for _, v in self._gather(value, what)]

    def gather_rows(self, rows: Tensor, what: str) -> Tensor:
        """Every rank's ``rows`` ``[n_rank, ...]`` (CPU) concatenated in rank order."""
        if self.size == 1:
            return rows
        shapes = self.exchange((tuple(rows.shape), str(rows.dtype)), what)
        if len({(s[1:], dtype) for s, dtype in shapes}) != 1:
            raise RankFailed(f"{what}: the ranks' rows differ in shape or dtype: {shapes}")
        longest = max(s[0] for s, _ in shapes)
        padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype)
        padded[: rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        self._wait(dist.all_gather(parts, padded, group=_cpu_group(self), async_op=True), what)
        return torch.cat([part[: s[0]] for part, (s, _) in zip(parts, shapes, strict=True)])

    # --- the status messages --------------------------------------------------------------

    def _settle(self, failure: str | None, what: str, error: BaseException | None) -> None:
        try:
            statuses = self._gather(failure, what)
        except RankFailed as lost:
            if error is None:
                raise
            raise RankFailed(f"{what}: rank {self.rank} failed ({failure}); {lost}") from error
        failed = [(rank, status) for rank, status in statuses if status is not None]
        if not failed:
            return
        named = "; ".join(f"rank {rank} failed: {status}" for rank, status in failed)
        message = f"{what} on {self.size} processes stopped (this is rank {self.rank}): {named}"
        raise RankFailed(message) from error

    def _gather(self, value: Any, what: str) -> list[tuple[int, Any]]:
        """``[(rank, value)]`` of every rank: each sends its value to rank 0, which sends the
        list back (and the ranks that did not answer, named on every rank that did); every
        message is awaited at most ``timeout``."""
        group, seconds = _cpu_group(self), f"{self.timeout.total_seconds():g} s"
        if self.rank == 0:
            values, lost = [(0, value)], {}
            for rank in range(1, self.size):
                try:
                    values.append((rank, pickle.loads(self._receive(rank, group))))
                except RuntimeError as error:  # gloo: "timed out" or "connection reset"
                    lost[rank] = f"killed, or still running; {_first_line(error)}"
            reply = pickle.dumps((values, dict(lost)))
            for rank in range(1, self.size):
                if rank not in lost:
                    try:
                        self._send(reply, rank, group, what)
                    except RuntimeError as error:  # gone since it answered
                        lost[rank] = f"gone after it answered; {_first_line(error)}"
        else:
            try:
                self._send(pickle.dumps(value), 0, group, what)
                values, lost = pickle.loads(self._receive(0, group))
            except RuntimeError as error:
                lost = {0: f"killed, or still running; {_first_line(error)}"}
        if lost:
            named = "; ".join(
                f"rank {rank} did not answer within {seconds} ({why})" for rank, why in lost.items()
            )
            raise RankFailed(f"{what} on {self.size} processes (this is rank {self.rank}): {named}")
        return values

    def _send(self, data: bytes, to: int, group: Any, what: str) -> None:
        payload = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        size = torch.tensor([payload.numel()], dtype=torch.int64)
        self._wait(dist.isend(size, to, group=group), what)
        self._wait(dist.isend(payload, to, group=group), what)

    def _receive(self, source: int, group: Any) -> bytes:
        size = torch.zeros(1, dtype=torch.int64)
        self._wait(dist.irecv(size, source, group=group), "")
        payload = torch.empty(int(size), dtype=torch.uint8)
        self._wait(dist.irecv(payload, source, group=group), "")
        return payload.numpy().tobytes()

    def _wait(self, work: Any, what: str) -> None:
        if not work.wait(timeout=self.timeout):  # gloo raises on timeout; others say False
            raise RuntimeError(f"{what or 'a message'} timed out")


def world(
    distributed: "bool | World | None" = None, *, timeout: timedelta = DEFAULT_TIMEOUT
) -> World:
    """The ``World`` a pass runs in. ``distributed``: None (default), every process of the
    process group, initialised here from torchrun's environment if needed; False, this process
    alone (e.g. per-rank statistics on purpose); True, like None but an error without a group
    or torchrun; a ``World``, that one (e.g. another timeout)."""
    if isinstance(distributed, World):
        return distributed
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(
            f"distributed must be None (every rank of torchrun / the process group), False "
            f"(this process alone), True or a distributed.World, got {distributed!r}"
        )
    if distributed is False or not dist.is_available():
        if distributed:
            raise RuntimeError("distributed=True, but this torch has no torch.distributed")
        return World(timeout=timeout)
    if not dist.is_initialized():
        size = int(os.environ.get("WORLD_SIZE", "1"))
        if size == 1:
            if distributed:
                raise RuntimeError(
                    "distributed=True, but no process group is initialised and WORLD_SIZE is "
                    "not set: launch with torchrun --nproc_per_node=N"
                )
            return World(timeout=timeout)
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        log.info("initialising torch.distributed (%s) for %d processes", backend, size)
        dist.init_process_group(backend, init_method="env://", timeout=timeout)
    return World(dist.get_rank(), dist.get_world_size(), timeout)


def shard(n: int, rank: int, size: int, weights: Sequence[float] | None = None) -> range:
    """Indices of rank ``rank``'s block of ``n`` items: contiguous, in order, every item in
    exactly one block. Each item goes to the rank whose share of the total weight holds the
    item's middle, so blocks hold about equal weight (equal counts without ``weights``; a rank
    gets none when there are fewer items than ranks)."""
    if weights is None:
        weights = [1.0] * n
    if len(weights) != n or any(not w >= 0 for w in weights):
        raise ValueError(f"shard: {n} items need {n} weights >= 0, got {list(weights)[:8]}...")
    total = float(sum(weights)) or 1.0
    owners, before = [], 0.0
    for w in weights:
        owners.append(min(int(size * (before + w / 2) / total), size - 1))
        before += w
    first = next((i for i, owner in enumerate(owners) if owner >= rank), n)
    last = next((i for i, owner in enumerate(owners) if owner > rank), n)
    return range(first, last)


def all_reduce(
    states: Sequence[Mapping[str, Tensor]],
    world: World,
    device: torch.device | str | None = None,
    what: str = "all_reduce",
) -> list[dict[str, Tensor]]:
    """The entry-wise sums over every rank of ``states`` (e.g. reducers' ``state_dict()``, one
    list per rank in the same order). An entry a rank lacks (no samples yet) counts as zeros of
    the others' shape, dtype and kind of device (``device`` if it is of that kind, else the
    current one). Sums run on the tensors' device and dtype (integers exactly): CPU tensors
    through gloo, CUDA ones through the default group (nccl); every rank gets the same result."""
    if world.size == 1:
        return [dict(state) for state in states]
    layout = [{k: (tuple(t.shape), t.dtype, t.device.type) for k, t in s.items()} for s in states]
    layouts = world.exchange(layout, what)
    merged = []
    for i, state in enumerate(states):
        entries: dict[str, tuple[tuple[int, ...], torch.dtype, str]] = {}
        for rank, theirs in enumerate(layouts):
            if len(theirs) != len(states):
                raise RankFailed(
                    f"{what}: rank {rank} merges {len(theirs)} states, rank {world.rank} "
                    f"{len(states)}: every rank must merge the same reducers in the same order"
                )
            for key, spec in theirs[i].items():
                if entries.setdefault(key, spec) != spec:
                    raise RankFailed(
                        f"{what}: state {i} entry {key!r} is {spec} on rank {rank} but "
                        f"{entries[key]} on another: merge reducers of the same site and model"
                    )
        summed = {}
        for key in sorted(entries):
            shape, dtype, kind = entries[key]
            if key in state:
                mine = state[key].detach().clone()  # not in place: the reducer keeps its own
            else:
                mine = torch.zeros(shape, dtype=dtype, device=_device(kind, device))
            group = _cpu_group(world) if mine.device.type == "cpu" else None
            world._wait(dist.all_reduce(mine, group=group, async_op=True), what)
            summed[key] = mine
        merged.append(summed)
    return merged


def _device(kind: str, given: torch.device | str | None) -> torch.device:
    """Where a rank without an entry makes its zeros: the kind of device the others sum on."""
    if given is not None and torch.device(given).type == kind:
        return torch.device(given)
    if kind == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(kind)


def _cpu_group(world: World) -> Any:
    """A group that carries CPU tensors: the default one where it has gloo, else a gloo group
    made once (every rank makes it at the same call: the first merge)."""
    if "gloo" in str(dist.get_backend()):
        return None
    key = world.timeout.total_seconds()
    if key not in _GLOO_GROUPS:
        _GLOO_GROUPS[key] = dist.new_group(backend="gloo", timeout=world.timeout)
    return _GLOO_GROUPS[key]


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
