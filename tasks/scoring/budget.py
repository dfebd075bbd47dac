"""Per-virtual-key EUR budget in Redis, shared by every process that uses the key.

Before a call, its worst-case cost is reserved atomically (Lua); after it, the actual cost
is settled and the reservation released. Amounts are integer nano-euros so the ledger is
exact. The ledger is keyed by a hash of the virtual key, never by the key itself.
litellm's BudgetManager is file-based and not concurrency-safe, hence this module.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from enum import Enum

import redis

from tasks.errors import BudgetExhausted

NANO = 1_000_000_000
KEY_PREFIX = "tailcal:budget"
SETTLED_PREFIX = "tailcal:settled"  # settlement tokens (1 h), apart from the ledgers

# Returns 1 when reserved; 0 when the cap is reached for good (settled spend alone leaves
# no room); -1 when only in-flight reservations block it (the caller may wait and retry).
_RESERVE = """
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local amount = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
if spent + amount > cap then return 0 end
if spent + reserved + amount > cap then return -1 end
redis.call('HINCRBY', KEYS[1], 'reserved', amount)
return 1
"""

# Releases the reservation, books the actual cost, and fires the alert exactly once. KEYS[2]
# is the settlement's token: a retry after a lost reply (Redis restarting) books nothing twice.
_SETTLE = """
if not redis.call('SET', KEYS[2], 1, 'NX', 'EX', 3600) then
  return {tonumber(redis.call('HGET', KEYS[1], 'spent') or '0'), 0}
end
redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(ARGV[1]))
local spent = redis.call('HINCRBY', KEYS[1], 'spent', tonumber(ARGV[2]))
redis.call('HINCRBY', KEYS[1], 'calls', 1)
local fired = 0
if spent >= tonumber(ARGV[3]) and redis.call('HSETNX', KEYS[1], 'alerted', 1) == 1 then fired = 1 end
return {spent, fired}
"""


class Reservation(Enum):
    GRANTED = 1
    EXHAUSTED = 0
    WAIT = -1


@dataclass(frozen=True)
class Settlement:
    spent_eur: float
    alert_fired: bool


@dataclass(frozen=True)
class LedgerState:
    spent_eur: float
    reserved_eur: float
    calls: int
    alerted: bool


def ledger_id(virtual_key: str) -> str:
    """A stable, non-reversible id for a virtual key (the key itself is never stored)."""
    return hashlib.sha256(virtual_key.encode()).hexdigest()[:16]


def to_nano(eur: float) -> int:
    return round(eur * NANO)


class BudgetLedger:
    """Reserve/settle against one virtual key's cap."""

    def __init__(self, client: redis.Redis, virtual_key: str, cap_eur: float, alert_fraction: float) -> None:
        self._client = client
        self._id = ledger_id(virtual_key)
        self.key = f"{KEY_PREFIX}:{self._id}"
        self.cap_eur = cap_eur
        self._cap = to_nano(cap_eur)
        self._alert_at = to_nano(cap_eur * alert_fraction)
        self._reserve = client.register_script(_RESERVE)
        self._settle = client.register_script(_SETTLE)

    def reserve(self, worst_case_eur: float) -> Reservation:
        """Try to reserve a call's worst-case cost."""
        return Reservation(int(self._reserve(keys=[self.key], args=[to_nano(worst_case_eur), self._cap])))

    def reserve_or_raise(self, worst_case_eur: float) -> None:
        if self.reserve(worst_case_eur) is not Reservation.GRANTED:
            raise BudgetExhausted(
                f"budget cap €{self.cap_eur:.2f} reached for this virtual key: raise budget.cap_eur, "
                "or set budget.on_exhausted to cached_only / fallback_model"
            )

    def settle(self, reserved_eur: float, actual_eur: float, token: str | None = None) -> Settlement:
        """Release the reservation and book the actual cost (0 for a call that failed unpaid).

        Calls with the same `token` book once: pass one when the settlement may be retried."""
        token_key = f"{SETTLED_PREFIX}:{self._id}:{token or uuid.uuid4().hex}"
        spent, fired = self._settle(
            keys=[self.key, token_key], args=[to_nano(reserved_eur), to_nano(actual_eur), self._alert_at]
        )
        return Settlement(spent_eur=int(spent) / NANO, alert_fired=bool(fired))

    def state(self) -> LedgerState:
        raw = self._client.hgetall(self.key)
        return LedgerState(
            spent_eur=int(raw.get(b"spent", 0)) / NANO,
            reserved_eur=int(raw.get(b"reserved", 0)) / NANO,
            calls=int(raw.get(b"calls", 0)),
            alerted=raw.get(b"alerted") == b"1",
        )
