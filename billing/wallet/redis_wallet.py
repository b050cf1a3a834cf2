"""The wallet on Redis: each money move is one Lua script on one account's keys.

Key layout (every key of one account carries the hash tag `{acct:ID}`, so a script touches one
slot and also runs on Redis Cluster):

- `{acct:ID}`            hash: `total`, `held` (millicredits), `seq` (last entry number),
                         `hseq` (last hold number)
- `{acct:ID}:ledger`     stream: entry N has stream id `N-0` and one field `entry`, the entry as
                         JSON (`id`, `ts` in microseconds since the epoch, `key`, `account`,
                         `kind`, `amount`, `reason`, `ref`, `meta`)
- `{acct:ID}:keys`       hash: idempotency keys, `e:KEY` -> entry number, `h:KEY` -> hold number
- `{acct:ID}:holds`      sorted set: open hold numbers scored by expiry (microseconds)
- `{acct:ID}:hold:N`     hash: `amount`, `key`, `status`, `created`, `expires`, `captured`,
                         `entry`, `reason`
- `creditbot:accounts`   set of every account ever credited (the one key outside an account;
                         written beside the credit, never inside a script)

Ids carry their account so a call finds the right slot: entry N of account ID is `ID~N`, hold N is
`ID~hN`. Idempotency keys are scoped to their account (as in the SQL wallet, UNIQUE(account,
key)): the same key on another account is another operation; on one account, a replay of a
different operation (kind or amount) raises IdempotencyConflict. A hold's key and an entry's
key share the account's namespace. A capture's entry has the key `capture:` + the hold's key,
recorded in `{acct:ID}:keys` like any entry key, as in the SQL wallet. Timestamps come from the
server's clock (`TIME` inside the scripts), so every process agrees on when a hold expires.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from billing.storage.redis_client import AutoPipeline, connect
from billing.wallet.base import (
    CAPTURE,
    CREDIT,
    DEBIT,
    HELD,
    MAX_TOTAL,
    Balance,
    BalanceLimitExceeded,
    Entry,
    Hold,
    HoldNotActive,
    HoldNotFound,
    IdempotencyConflict,
    InsufficientCredits,
    InvalidAmount,
)

ACCOUNTS_KEY = "creditbot:accounts"
# Lua numbers are doubles, exact up to 2**53: every total stays within MAX_TOTAL (credit.lua).
MAX_AMOUNT = MAX_TOTAL
CAPTURE_KEY_PREFIX = "capture:"  # a capture's entry key: this + the hold's key
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SCRIPTS = ("credit", "hold", "capture", "void", "sweep")
_SWEEP_BATCH = 500  # holds one sweep script looks at, so no script blocks the server for long
_PAGE = 500


def account_tag(account: str) -> str:
    """The account's main key; every other key of the account starts with it."""
    return f"{{acct:{account}}}"


def _time(us: int | str) -> datetime:
    return _EPOCH + timedelta(microseconds=int(us))


def _us(when: datetime) -> int:
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _split(item_id: str, marker: str = "") -> tuple[str, int] | None:
    """`ID~N` (entries) or `ID~hN` (holds) -> (ID, N); None if it is not such an id."""
    account, sep, number = item_id.strip().rpartition("~")
    if not sep or not account or not number.startswith(marker):
        return None
    number = number[len(marker) :]
    if not (number.isascii() and number.isdigit()) or len(number) > 18:
        return None
    return account, int(number)


def _entry(raw: str) -> Entry:
    d = json.loads(raw)
    return Entry(
        id=d["id"],
        account=d["account"],
        kind=d["kind"],
        amount=d["amount"],
        key=d["key"],
        reason=d["reason"],
        created_at=_time(d["ts"]),
        ref=d.get("ref"),
        meta=d.get("meta") or {},
    )


def _hold(account: str, n: int | str, fields: list[Any]) -> Hold:
    amount, key, status, created, expires, captured, entry = fields
    return Hold(
        id=f"{account}~h{n}",
        account=account,
        amount=int(amount),
        key=key,
        status=status,
        created_at=_time(created),
        expires_at=_time(expires),
        captured=int(captured or 0),
        entry_id=f"{account}~{entry}" if entry else None,
    )


def _positive(amount: int) -> None:
    if type(amount) is not int or not 0 < amount <= MAX_AMOUNT:
        raise InvalidAmount(f"amount must be a positive integer of millicredits, got {amount!r}")


def _body(
    account: str,
    kind: str,
    amount: int,
    reason: str,
    ref: str | None,
    meta: dict[str, Any] | None,
    key: str | None = None,
) -> str:
    """The entry's JSON without its opening brace; the script puts id and time in front."""
    fields: dict[str, Any] = {} if key is None else {"key": key}
    fields.update(
        account=account, kind=kind, amount=amount, reason=reason, ref=ref, meta=meta or {}
    )
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))[1:]


class RedisWallet:
    """The Wallet protocol on Redis (see the module docstring for the key layout)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._redis = client
        self._pipe = AutoPipeline(client)
        self._sha: dict[str, str] = {}
        self._source = {
            name: resources.files("billing.wallet").joinpath(f"lua/{name}.lua").read_text()
            for name in _SCRIPTS
        }

    @classmethod
    async def open(cls, url: str) -> RedisWallet:
        """Connect to `url` (redis://, rediss://, unix://) and load the scripts once."""
        wallet = cls(connect(url))
        await wallet._load()
        return wallet

    async def _load(self) -> None:
        for name, source in self._source.items():
            self._sha[name] = await self._redis.script_load(source)

    async def _run(self, name: str, keys: tuple[str, ...], *args: Any) -> Any:
        """EVALSHA; after a SCRIPT FLUSH or a failover the scripts are loaded again."""
        try:
            return await self._pipe.call(
                "execute_command", "EVALSHA", self._sha[name], len(keys), *keys, *args
            )
        except NoScriptError:
            await self._load()
            return await self._redis.execute_command(
                "EVALSHA", self._sha[name], len(keys), *keys, *args
            )

    # --- money in and out ------------------------------------------------------------------

    async def credit(
        self,
        account: str,
        amount: int,
        key: str,
        reason: str,
        *,
        ref: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Entry:
        if type(amount) is int and amount > MAX_TOTAL:
            raise BalanceLimitExceeded(account, amount)
        _positive(amount)
        await self._redis.sadd(ACCOUNTS_KEY, account)
        return await self._move(account, amount, key, reason, CREDIT, ref, meta)

    async def debit(
        self,
        account: str,
        amount: int,
        key: str,
        reason: str,
        *,
        ref: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Entry:
        _positive(amount)
        return await self._move(account, -amount, key, reason, DEBIT, ref, meta)

    async def _move(
        self,
        account: str,
        signed: int,
        key: str,
        reason: str,
        kind: str,
        ref: str | None,
        meta: dict[str, Any] | None,
    ) -> Entry:
        tag = account_tag(account)
        reply = await self._run(
            "credit",
            (tag, f"{tag}:keys", f"{tag}:ledger"),
            signed,
            key,
            f"{account}~",
            _body(account, kind, signed, reason, ref, meta, key=key),
            "1" if signed < 0 else "0",
            MAX_TOTAL,
        )
        if type(reply) is str:  # "N:ts": the script sends back only what Python does not know
            n, ts = reply.split(":")
            return Entry(
                id=f"{account}~{n}",
                account=account,
                kind=kind,
                amount=signed,
                key=key,
                reason=reason,
                created_at=_time(ts),
                ref=ref,
                meta=dict(meta) if meta else {},
            )
        if reply[0] == "short":
            raise InsufficientCredits(account, -signed, int(reply[1]))
        if reply[0] == "limit":
            raise BalanceLimitExceeded(account, signed, int(reply[1]))
        if reply[0] == "conflict":
            raise IdempotencyConflict(account, key)
        first = _entry(reply[1])
        if first.kind != kind or first.amount != signed:
            raise IdempotencyConflict(account, key, first)
        return first

    # --- holds -------------------------------------------------------------------------------

    async def hold(self, account: str, amount: int, key: str, ttl: float) -> Hold:
        _positive(amount)
        if ttl <= 0:
            raise ValueError("a hold needs a positive time to live")
        tag = account_tag(account)
        reply = await self._run(
            "hold",
            (tag, f"{tag}:keys", f"{tag}:holds"),
            amount,
            key,
            int(ttl * 1_000_000),
        )
        if type(reply) is str:  # "N:created:expires"
            n, created, expires = reply.split(":")
            return Hold(
                id=f"{account}~h{n}",
                account=account,
                amount=amount,
                key=key,
                status=HELD,
                created_at=_time(created),
                expires_at=_time(expires),
            )
        if reply[0] == "short":
            raise InsufficientCredits(account, amount, int(reply[1]))
        if reply[0] == "conflict":
            raise IdempotencyConflict(account, key)
        first = _hold(account, reply[1], reply[2:])
        if first.amount != amount:
            raise IdempotencyConflict(account, key, first)
        return first

    def _hold_keys(self, hold_id: str) -> tuple[str, int, str]:
        parts = _split(hold_id, "h")
        if parts is None:
            raise HoldNotFound(f"no hold {hold_id}")
        account, n = parts
        return account, n, account_tag(account)

    async def capture(
        self,
        hold_id: str,
        amount: int,
        *,
        reason: str = "",
        meta: dict[str, Any] | None = None,
    ) -> Entry:
        if type(amount) is not int or not 0 <= amount <= MAX_AMOUNT:
            raise InvalidAmount(f"a capture is a non-negative integer, got {amount!r}")
        account, n, tag = self._hold_keys(hold_id)
        reply = await self._run(
            "capture",
            (tag, f"{tag}:hold:{n}", f"{tag}:holds", f"{tag}:ledger", f"{tag}:keys"),
            amount,
            n,
            f"{account}~",
            _body(account, CAPTURE, -amount, reason, hold_id, meta),
        )
        if type(reply) is str:  # "N:ts:hold key"
            number, ts, hold_key = reply.split(":", 2)
            return Entry(
                id=f"{account}~{number}",
                account=account,
                kind=CAPTURE,
                amount=-amount,
                key=CAPTURE_KEY_PREFIX + hold_key,
                reason=reason,
                created_at=_time(ts),
                ref=hold_id,
                meta=dict(meta) if meta else {},
            )
        status = reply[0]
        if status == "dup":
            return _entry(reply[1])
        if status == "missing":
            raise HoldNotFound(f"no hold {hold_id}")
        if status == "inactive":
            raise HoldNotActive(hold_id, reply[1])
        if status == "used":
            raise IdempotencyConflict(account, CAPTURE_KEY_PREFIX + reply[1])
        raise InvalidAmount(f"capture of {amount} exceeds hold {hold_id} of {reply[1]}")

    async def void(self, hold_id: str, reason: str = "") -> Hold:
        account, n, tag = self._hold_keys(hold_id)
        reply = await self._run("void", (tag, f"{tag}:hold:{n}", f"{tag}:holds"), n, reason)
        if reply[0] == "missing":
            raise HoldNotFound(f"no hold {hold_id}")
        if reply[0] == "inactive":
            raise HoldNotActive(hold_id, reply[1])
        return _hold(account, n, reply[1:])

    async def get_hold(self, hold_id: str) -> Hold:
        account, n, tag = self._hold_keys(hold_id)
        fields = await self._redis.hmget(
            f"{tag}:hold:{n}", "amount", "key", "status", "created", "expires", "captured", "entry"
        )
        if fields[0] is None:
            raise HoldNotFound(f"no hold {hold_id}")
        return _hold(account, n, fields)

    async def sweep(self, now: datetime | None = None) -> int:
        """Expire every due hold. Walks the accounts (cluster-friendly), a batch per pipeline."""
        at = "" if now is None else str(_us(now))
        accounts = await self.accounts()
        expired = 0
        while accounts:
            batch, accounts = accounts[:_PAGE], accounts[_PAGE:]
            again: list[str] = []
            async with self._redis.pipeline(transaction=False) as pipe:
                for account in batch:
                    tag = account_tag(account)
                    pipe.execute_command(
                        "EVALSHA", self._sha["sweep"], 2, tag, f"{tag}:holds", at, _SWEEP_BATCH
                    )
                try:
                    results = await pipe.execute()
                except NoScriptError:
                    await self._load()
                    accounts = batch + accounts
                    continue
            for account, (count, seen) in zip(batch, results, strict=True):
                expired += int(count)
                if int(seen) >= _SWEEP_BATCH:
                    again.append(account)
            accounts = again + accounts
        return expired

    async def open_holds(self) -> list[Hold]:
        holds: list[Hold] = []
        for account in await self.accounts():
            tag = account_tag(account)
            numbers = await self._redis.zrange(f"{tag}:holds", 0, -1)
            if not numbers:
                continue
            async with self._redis.pipeline(transaction=False) as pipe:
                for n in numbers:
                    pipe.hmget(
                        f"{tag}:hold:{n}",
                        "amount",
                        "key",
                        "status",
                        "created",
                        "expires",
                        "captured",
                        "entry",
                    )
                rows = await pipe.execute()
            holds.extend(
                _hold(account, n, row)
                for n, row in zip(numbers, rows, strict=True)
                if row[2] == HELD
            )
        return holds

    # --- reading -------------------------------------------------------------------------------

    async def balance(self, account: str) -> Balance:
        total, held = await self._redis.hmget(account_tag(account), "total", "held")
        return Balance(account=account, total=int(total or 0), held=int(held or 0))

    async def entries(
        self, account: str, *, limit: int = 50, before: datetime | None = None
    ) -> list[Entry]:
        stream = f"{account_tag(account)}:ledger"
        if before is None:
            rows = await self._redis.xrevrange(stream, "+", "-", count=limit)
            return [_entry(fields["entry"]) for _, fields in rows]
        found: list[Entry] = []
        top = "+"
        while len(found) < limit:
            rows = await self._redis.xrevrange(stream, top, "-", count=_PAGE)
            for _, fields in rows:
                entry = _entry(fields["entry"])
                if entry.created_at < before:
                    found.append(entry)
                    if len(found) == limit:
                        break
            if len(rows) < _PAGE:
                break
            top = "(" + rows[-1][0]
        return found

    async def get_entry(self, entry_id: str) -> Entry | None:
        parts = _split(entry_id)
        if parts is None:
            return None
        account, n = parts
        rows = await self._redis.xrange(f"{account_tag(account)}:ledger", n, n)
        return _entry(rows[0][1]["entry"]) if rows else None

    async def export_ledger(self, account: str) -> list[Entry]:
        """Every entry of the account, oldest first: the operator's export.

        The same data is in Redis as JSON, readable without Python:
        `redis-cli XRANGE '{acct:ID}:ledger' - +`.
        """
        stream = f"{account_tag(account)}:ledger"
        out: list[Entry] = []
        start = "-"
        while True:
            rows = await self._redis.xrange(stream, start, "+", count=_PAGE)
            out.extend(_entry(fields["entry"]) for _, fields in rows)
            if len(rows) < _PAGE:
                return out
            start = "(" + rows[-1][0]

    async def accounts(self) -> list[str]:
        return sorted(await self._redis.smembers(ACCOUNTS_KEY))

    async def close(self) -> None:
        await self._pipe.drain()
        await self._redis.aclose()
