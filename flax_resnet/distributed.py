"""Data parallelism by sharding: one code path for 1..N devices on one or many hosts.

A 1-D mesh over every device with a `data` axis; batches are sharded on it, parameters and BatchNorm
statistics replicated. Because batch statistics are means over the *global* batch array, XLA inserts the
cross-device reductions itself: every device count computes the same function (up to float rounding, which the
reductions' order changes and training amplifies over many steps).
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flax_resnet.errors import one_line

DATA_AXIS = "data"
JOIN_TIMEOUT_SECONDS = 300  # jax's default: how long a process waits for the others to join


class DistributedError(Exception):
    """Joining a multi-host run failed; str(e) is one line."""


def initialize(coordinator_address: str | None, num_processes: int, process_id: int) -> None:
    """Join a multi-host run (GPU cluster, TPU pod, or several CPU processes); no-op for one process.

    Errors jax raises become one-line DistributedError, and so do a coordinator name that does not resolve and,
    for processes other than 0, a coordinator that never answers. (Process 0 waiting for peers that never join,
    and two processes with one id, are not: XLA ends the process itself, with its own message.)
    """
    if num_processes <= 1:
        return
    # CPU processes need gloo for their collectives (it only concerns the CPU client, so it is harmless on
    # GPU/TPU). Nothing here may ask for the backend first: jax.distributed.initialize must come before that.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # Said first: until every process has joined, nothing else is printed, for up to jax's 300 s timeout.
    print(f"joining the run at {coordinator_address} as process {process_id} of {num_processes} (waiting up to "
          f"{JOIN_TIMEOUT_SECONDS} s for the others)", file=sys.stderr, flush=True)  # fmt: skip
    if coordinator_address:
        _reach_coordinator(coordinator_address, process_id)
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=JOIN_TIMEOUT_SECONDS,
        )
    except Exception as e:  # jax's own errors (a used port, a second initialize...) vary in type
        raise DistributedError(
            f"cannot join the run at {coordinator_address} as process {process_id} of {num_processes} "
            f"({one_line(e, 300)})"
        ) from None


def _reach_coordinator(address: str, process_id: int, timeout: float = JOIN_TIMEOUT_SECONDS) -> None:
    """Look the coordinator's host up, and from a process other than 0 wait for its port to accept connections,
    so that a mistyped or unreachable address is one line and exit 1: in jax, both end after the timeout in a
    SIGABRT with XLA's stack trace, which says that another task died."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")  # an IPv6 literal, [::1]:1234
    if not port.isdigit():  # not HOST:PORT (scripts/train.py refuses it first): jax's own error says so
        return
    try:
        socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError) as e:
        raise DistributedError(f"--coordinator {address}: cannot look up {host!r} ({one_line(e, 200)})") from None
    if process_id == 0:  # it opens the port itself
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
            return
        except OSError as e:
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"--coordinator {address}: nothing accepted a connection there in {timeout:.0f} s ({one_line(e)}; "
                    "process 0 opens it: is it running, with this --coordinator?)"
                ) from None
            time.sleep(1.0)


def gather_from_processes(values: Sequence[int]) -> np.ndarray:
    """Every process's int32 `values`, as a (processes, len(values)) table (a collective: every process must
    call it); on one process, its own as one row. The trainer's and checkpointer's agreements all use it."""
    row = np.asarray(values, np.int32)
    if jax.process_count() == 1:
        return row[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(row)).reshape(jax.process_count(), len(row))


def check_same_on_every_process(values: Mapping[str, Any], what: str) -> None:
    """Raise DistributedError naming the entries of `values` (name -> JSON value) that differ between the processes
    of a multi-host run; every process raises the same error. Processes started with other settings or data
    would train apart silently (another --seed) or wait in a collective forever (another --batch-size), where
    no signal reaches them."""
    if jax.process_count() == 1:
        return
    names = sorted(values)
    digests = np.array(
        [int.from_bytes(hashlib.blake2b(json.dumps(values[n], sort_keys=True).encode(), digest_size=4).digest())
         for n in names], np.uint32,
    ).view(np.int32)  # fmt: skip
    try:
        table = gather_from_processes(digests)
    except Exception as e:  # a peer that stopped (its own error, a kill) before this comparison
        raise DistributedError(
            f"another process of the run stopped before its {what} could be compared (see its output; "
            f"{one_line(e, 200)})"
        ) from None
    differ = [n for i, n in enumerate(names) if (table[:, i] != table[0, i]).any()]
    if differ:
        odd = [str(p) for p in range(len(table)) if (table[p] != table[0]).any()]
        raise DistributedError(
            f"process {', '.join(odd)} of the run has other {what} than process 0: {', '.join(differ)} (start "
            "every process with the same command)"
        )


def make_mesh(devices: list[Any] | None = None) -> Mesh:
    """A 1-D `data` mesh over the given devices (default: all global devices)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device (parameters, BN statistics, optimizer state)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Sharding that splits the batch axis (`axis`, default the leading one) across the `data` axis."""
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), DATA_AXIS))


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """Place a pytree of host arrays (identical on every process) replicated on the mesh."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: _from_global(np.asarray(x), sharding), tree)


def put_batch(array: np.ndarray, mesh: Mesh, axis: int = 0) -> jax.Array:
    """Place a *global* host array (identical on every process) sharded on its batch axis `axis`.

    `axis=1` places a whole epoch of (steps, batch) example indices at once, each step's row split like a batch.
    """
    if array.shape[axis] % mesh.size:
        raise ValueError(f"batch of {array.shape[axis]} does not split over {mesh.size} devices")
    return _from_global(np.asarray(array), batch_sharded(mesh, axis))


def to_host(x: jax.Array) -> np.ndarray:
    """The whole of a (possibly sharded) array as numpy on every process, also when other processes hold parts."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _from_global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])
