"""The store in plain Python structures: no SQL, nothing on disk, one process (see .base)."""

from __future__ import annotations

from orch.adapters.store.memory.access import AccessRecords
from orch.adapters.store.memory.board import BoardRecords
from orch.adapters.store.memory.leases import Leases
from orch.adapters.store.memory.metrics import MetricsRecords
from orch.adapters.store.memory.records import Records
from orch.adapters.store.memory.tasks import TaskRecords

__all__ = ["MemoryStore"]

from orch.adapters.store.memory.deliveries import DeliveryRecords


class MemoryStore(
    TaskRecords,
    Leases,
    Records,
    AccessRecords,
    MetricsRecords,
    DeliveryRecords,
    BoardRecords,
):
    """The store, in this process's memory. `clock` replaces the wall clock (a simulated one,
    for tests that move time past leases and timers without waiting)."""
