"""WeChat Pay top-ups on the payment inbox: orders, notifications, and reconciliation.

1 CNY = 10,000 credits, so 1 fen = 100 credits = 100,000 millicredits (billing.money).

An order is a payment recorded in the inbox before it is paid (`wxpay:order:<out_trade_no>`,
listed in `wxpay:open`). The order's "paid" state and the credit are one step: the wallet
credit with the idempotency key `wxpay:<out_trade_no>` *is* the payment's record. WeChat Pay
repeats a notification until it is acknowledged, so a crash after the credit and before the
answer only leads to a replay, and a replay finds the same key and credits nothing more. The
store's order record is the operator's view; its `wxpay:paid:<out_trade_no>` marker (the
inbox's confirmation) is written after the credit.

A notification credits only if it verifies (bot.providers.wechatpay: v2 MD5 or HMAC-SHA256 with
the API key, pinned to the configured sign type; v3 RSA-SHA256 with the platform certificate,
then AES-256-GCM with the APIv3 key), it says SUCCESS, its mchid and appid are ours, the order
exists, and the amount in fen and the currency (CNY) match the order. Anything else credits
nothing and is answered FAIL.

Unpaid orders expire after `order_ttl` seconds: the order carries `time_expire`, so WeChat Pay
itself refuses a late payment. A payment that WeChat Pay confirms for an order we have already
marked expired was accepted before the deadline and is credited.

A notification can be lost (the bot down past WeChat Pay's retries, the network, a wrong notify
URL), so `reconcile` (the inbox's retry for WeChat Pay, run by the scheduler) asks WeChat Pay
about open orders itself: once an order is a minute old, then as it ages, and always before it
is marked expired. A SUCCESS answer goes through the same checks and the same idempotent credit
as a notification; an unpaid order is closed at WeChat Pay before it is marked expired, so it
cannot be paid afterwards. An answer that fails (network, 5xx, 429) or does not verify changes
nothing: the next pass asks again.

An order is marked expired only on a verified answer that names it: a query saying CLOSED (or
REVOKED) with our out_trade_no, mchid and appid in the signed body. The close's own answer names
no order, and neither does "order not found" (see bot.providers.wechatpay.client), so neither
expires an order by itself: after a close the order is queried again, and an order WeChat Pay
says it does not know stays open until it has said so on every answer for NOT_FOUND_GRACE past
the deadline (an order WeChat Pay never knew cannot have been paid, and it refuses payment
after time_expire anyway).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from billing.money import fen_to_milli
from bot.payments.inbox import WECHAT_PAY, WECHAT_PAY_NOT_FOUND, CreditFn, PaymentInbox
from bot.providers.wechatpay import (
    NotifyAnswer,
    NotifyRejected,
    PayConfig,
    PaymentError,
    TradeState,
    WeChatPayClient,
    accepted,
    is_v3_notification,
    refused,
)
from bot.store.base import Store

log = logging.getLogger(__name__)

RECONCILE_SECONDS = 60  # how often the scheduler runs `reconcile`
RECONCILE_JOB = "wechatpay-reconcile"  # its name on the scheduler


@dataclass(slots=True)
class Order:
    """One top-up order, as kept in the store."""

    out_trade_no: str
    platform: str
    user_id: str
    fen: int
    trade_type: str  # "NATIVE" or "JSAPI"
    created_at: str
    expires_at: str
    status: str = "unpaid"  # "unpaid", "paid", "expired"
    code_url: str | None = None
    prepay_id: str | None = None
    openid: str | None = None
    transaction_id: str | None = None
    paid_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def amount_milli(self) -> int:
        return fen_to_milli(self.fen)

    @property
    def key(self) -> str:
        """The wallet idempotency key of this order's credit."""
        return WECHAT_PAY.key(self.out_trade_no)


@dataclass(slots=True)
class Sweep:
    """What one `reconcile` pass did (counts, for the log)."""

    credited: int = 0
    expired: int = 0
    failed: int = 0  # queries or closes that failed, or answers that did not match: ask again


# A pending order is first asked about at QUERY_AFTER seconds old, then again after a quarter
# of its age has passed (at least QUERY_GAP_MIN, at most QUERY_GAP_MAX), and always at expiry.
# An order still open past its deadline (a close not yet confirmed, USERPAYING, REFUND, not
# found) is asked again after a quarter of its time past the deadline, at most PAST_GAP_MAX.
QUERY_AFTER = 60
QUERY_GAP_MIN = 60
QUERY_GAP_MAX = 180
PAST_GAP_MAX = 3600
# WeChat Pay must have said "not found" on every answer for this long past the deadline before
# an order is marked expired on that ground (see the module docstring).
NOT_FOUND_GRACE = 24 * 3600
# A stuck order is named in the log at most once per WARN_EVERY per kind of warning.
WARN_EVERY = 3600
PAYABLE = ("NOTPAY", "PAYERROR")  # states in which WeChat Pay would still take the payment


def _now() -> datetime:
    return datetime.now(UTC)


def _not_found_key(out_trade_no: str) -> str:
    """When WeChat Pay first said, in an unbroken run of answers, that it has no such order."""
    return f"{WECHAT_PAY_NOT_FOUND}{out_trade_no}"


class WeChatPay:
    """Orders and notifications for one merchant account, on the payment inbox.

    `credit` is the core's `credit_payment(platform, user_id, amount_milli, *, key, reason,
    meta)`, so the core resolves the user's account; `store` keeps the orders.
    """

    def __init__(
        self,
        config: PayConfig,
        store: Store,
        credit: CreditFn,
        *,
        http: httpx.AsyncClient | None = None,
        on_paid: Callable[[Order], Awaitable[None]] | None = None,
    ) -> None:
        self.client = WeChatPayClient(config, http)
        self.inbox = PaymentInbox(store, credit)
        self.on_paid = on_paid
        # Both only for open orders: `reconcile` drops the others at the start of each pass.
        self._asked: dict[str, datetime] = {}  # order -> when reconcile last asked about it
        self._warned: dict[tuple[str, str], datetime] = {}  # (order, warning) -> when logged

    @property
    def config(self) -> PayConfig:
        return self.client.config

    async def close(self) -> None:
        await self.client.close()

    # -- orders --

    async def get_order(self, out_trade_no: str) -> Order | None:
        record = await self.inbox.record_of(WECHAT_PAY, out_trade_no)
        if record is None:
            return None
        return await self._with_marker(Order(**record))

    async def _with_marker(self, order: Order) -> Order:
        """The order as the operator sees it: paid once its paid marker is written."""
        paid = await self.inbox.paid_marker(WECHAT_PAY, order.out_trade_no)
        if paid:
            order.status = "paid"
            order.transaction_id = paid.get("transaction_id")
            order.paid_at = paid.get("paid_at")
        return order

    async def _save(self, order: Order) -> None:
        await self.inbox.update(WECHAT_PAY, order.out_trade_no, asdict(order))

    async def create_order(
        self,
        platform: str,
        user_id: str,
        fen: int,
        *,
        trade_type: str = "NATIVE",
        openid: str | None = None,
        description: str = "creditbot credits",
        client_ip: str = "127.0.0.1",
        chat_id: str | None = None,
    ) -> Order:
        """Ask WeChat Pay for a NATIVE (QR code) or JSAPI (in-WeChat) order of `fen` fen."""
        if not isinstance(fen, int) or fen <= 0:
            raise ValueError("the amount is a positive number of fen")
        if trade_type not in ("NATIVE", "JSAPI"):
            raise ValueError("trade_type is NATIVE or JSAPI")
        if trade_type == "JSAPI" and not openid:
            raise ValueError("JSAPI orders need the payer's openid")
        now = _now()
        expires = now + timedelta(seconds=self.config.order_ttl)
        otn = now.strftime("cb%Y%m%d%H%M%S") + secrets.token_hex(6)
        prepay = await self.client.create_order(
            otn,
            fen,
            trade_type=trade_type,
            openid=openid,
            description=description,
            expires=expires,
            client_ip=client_ip,
        )
        order = Order(
            out_trade_no=otn,
            platform=platform,
            user_id=str(user_id),
            fen=fen,
            trade_type=trade_type,
            created_at=now.isoformat(),
            expires_at=expires.isoformat(),
            code_url=prepay.code_url,
            prepay_id=prepay.prepay_id,
            openid=openid,
            extra={"chat_id": chat_id} if chat_id else {},
        )
        await self.inbox.record(WECHAT_PAY, otn, asdict(order))
        log.info("wechatpay order created", extra={"order": otn, "fen": fen, "type": trade_type})
        return order

    async def query_order(self, out_trade_no: str) -> TradeState:
        """WeChat Pay's verified answer about an order (WeChatPayClient.query_order)."""
        return await self.client.query_order(out_trade_no)

    async def close_order(self, out_trade_no: str) -> None:
        """Close an unpaid order at WeChat Pay (WeChatPayClient.close_order)."""
        await self.client.close_order(out_trade_no)

    def jsapi_params(self, order: Order) -> dict[str, str]:
        """What the pay page passes to WeixinJSBridge.invoke('getBrandWCPayRequest', ...)."""
        if not order.prepay_id:
            raise ValueError("the order has no prepay_id")
        return self.client.jsapi_params(order.prepay_id)

    async def expire_orders(self, now: datetime | None = None) -> int:
        """A `reconcile` pass; returns how many orders it marked expired."""
        return (await self.reconcile(now)).expired

    async def reconcile(self, now: datetime | None = None) -> Sweep:
        """Ask WeChat Pay about open orders that are due (see QUERY_AFTER) and act on the answer.

        SUCCESS credits as a notification would (same checks, same key). Past its deadline an
        order still payable (NOTPAY, PAYERROR) is closed at WeChat Pay and queried again; it is
        marked expired only when a verified answer names it (out_trade_no, mchid, appid) as
        CLOSED or REVOKED, or when WeChat Pay has said "not found" on every answer for
        NOT_FOUND_GRACE past the deadline. Anything else (a failed or unverified query, a
        failed close, a close not yet in effect, USERPAYING, REFUND, an answer that does not
        match the order, not found for a shorter time) leaves the order open, uncredited, for
        a later pass, with at most one warning per order and kind per WARN_EVERY.
        """
        now = now or _now()
        sweep = Sweep()
        open_orders = await self.inbox.open(WECHAT_PAY)
        # Orders settled or expired elsewhere (a notification, another process, the operator)
        # are no longer asked about: drop what we remembered of them.
        self._asked = {otn: t for otn, t in self._asked.items() if otn in open_orders}
        self._warned = {k: t for k, t in self._warned.items() if k[0] in open_orders}

        async def settle(otn: str, record: dict[str, Any]) -> None:
            await self._reconcile_one(await self._with_marker(Order(**record)), now, sweep)

        # An order whose record is gone is struck off; one whose pass fails (the store or the
        # wallet failing) is logged and counted, and the next pass tries again.
        retried = await self.inbox.retry(WECHAT_PAY, settle, among=open_orders)
        sweep.failed += retried.failed
        if sweep.credited or sweep.expired or sweep.failed:
            log.info(
                "wechatpay orders reconciled",
                extra={
                    "credited": sweep.credited,
                    "expired": sweep.expired,
                    "failed": sweep.failed,
                },
            )
        return sweep

    async def _reconcile_one(self, order: Order, now: datetime, sweep: Sweep) -> None:
        otn = order.out_trade_no
        if order.status != "unpaid":
            await self.inbox.discard(WECHAT_PAY, otn)
            self._asked.pop(otn, None)
            return
        if not self._query_due(order, now):
            return
        state = await self._ask(otn, now, sweep)
        if state is None:
            return
        past_deadline = datetime.fromisoformat(order.expires_at) <= now
        if past_deadline and state.state in PAYABLE and self._names(state, otn):
            # Still payable at its deadline: close it so nobody can pay it afterwards. The
            # close's answer names no order, so only a fresh query can say what became of it.
            try:
                await self.close_order(otn)
            except PaymentError as exc:
                sweep.failed += 1
                self._warn(otn, now, "wechatpay close failed", reason=str(exc))
                return
            state = await self._ask(otn, now, sweep)
            if state is None:
                return
        await self._act(order, state, now, sweep)

    async def _ask(self, otn: str, now: datetime, sweep: Sweep) -> TradeState | None:
        """WeChat Pay's verified answer about the order, or None (counted, warned) if none."""
        try:
            state = await self.query_order(otn)
        except PaymentError as exc:
            sweep.failed += 1
            self._warn(otn, now, "wechatpay order query failed", reason=str(exc))
            return None
        self._asked[otn] = now
        return state

    async def _act(self, order: Order, state: TradeState, now: datetime, sweep: Sweep) -> None:
        """What a verified query answer means for an open order (see `reconcile`)."""
        otn = order.out_trade_no
        if state.state == "SUCCESS":
            try:
                if await self.settle_queried(state):
                    sweep.credited += 1
                    log.info("wechatpay order settled by query", extra={"order": otn})
            except NotifyRejected as exc:
                sweep.failed += 1
                self._warn(otn, now, "wechatpay query answer does not match the order", exc.reason)
            return
        if state.state == "NOT_FOUND":
            await self._not_found(order, now, sweep)
            return
        if not self._names(state, otn):
            sweep.failed += 1
            self._warn(otn, now, "wechatpay query answer does not match the order", "mchid/appid")
            return
        # WeChat Pay knows the order: a "not found" streak (if any) is over.
        await self.inbox.store.delete(_not_found_key(otn))
        if datetime.fromisoformat(order.expires_at) > now:
            return
        if state.state in ("CLOSED", "REVOKED"):
            await self._mark_expired(order)
            sweep.expired += 1
        elif state.state in PAYABLE:
            # Closed just now but the query still says payable: the next pass asks again.
            sweep.failed += 1
            self._warn(otn, now, "wechatpay order still payable after its close", state.state)
        else:
            # USERPAYING (the payer is confirming right now), REFUND, or a state we do not
            # know: nothing to credit or close on our own; ask again, and the operator can look.
            self._warn(otn, now, "wechatpay order past its deadline and not settled", state.state)

    def _names(self, state: TradeState, otn: str) -> bool:
        """Whether a verified answer is about this order of ours (number, merchant, app)."""
        cfg = self.config
        return (state.out_trade_no, state.mchid, state.appid) == (otn, cfg.mchid, cfg.appid)

    async def _not_found(self, order: Order, now: datetime, sweep: Sweep) -> None:
        """WeChat Pay says it has no such order. That answer names no order, so on its own it
        expires nothing: the order stays open until WeChat Pay has said so on every answer for
        NOT_FOUND_GRACE past the deadline (the streak starts at the first such answer, kept in
        the store so a restart does not lose it, and ends at any answer that names the order).
        """
        otn = order.out_trade_no
        key = _not_found_key(otn)
        raw = await self.inbox.store.get(key)
        if raw is None:
            raw = now.isoformat()
            ttl = self.config.order_ttl + 2 * NOT_FOUND_GRACE  # gone if nobody asks for long
            if not await self.inbox.store.add(key, raw, ttl=ttl):
                raw = await self.inbox.store.get(key) or raw
        deadline = datetime.fromisoformat(order.expires_at)
        since = max(datetime.fromisoformat(raw), deadline)
        if (now - since).total_seconds() >= NOT_FOUND_GRACE:
            log.warning(
                "wechatpay has not known the order since %s; marked expired",
                raw,
                extra={"order": otn},
            )
            await self._mark_expired(order)
            await self.inbox.store.delete(key)
            sweep.expired += 1
        elif deadline <= now:
            self._warn(otn, now, "wechatpay does not know the order; kept open", f"since {raw}")

    def _warn(self, otn: str, now: datetime, message: str, reason: str) -> None:
        """Log a warning about an order, at most once per WARN_EVERY for this order and
        message: a stuck order is asked about on many passes, and the log names it, not floods."""
        last = self._warned.get((otn, message))
        if last is not None and (now - last).total_seconds() < WARN_EVERY:
            return
        self._warned[(otn, message)] = now
        log.warning(message, extra={"order": otn, "reason": reason})

    def _query_due(self, order: Order, now: datetime) -> bool:
        """Whether an open order is old enough, and long enough since we last asked."""
        last = self._asked.get(order.out_trade_no)
        deadline = datetime.fromisoformat(order.expires_at)
        if deadline <= now:
            if last is None or last < deadline:
                return True  # always at the deadline
            gap = min((now - deadline).total_seconds() / 4, PAST_GAP_MAX)
            return (now - last).total_seconds() >= gap
        age = (now - datetime.fromisoformat(order.created_at)).total_seconds()
        if age < QUERY_AFTER:
            return False
        if last is None:
            return True
        gap = min(max(age / 4, QUERY_GAP_MIN), QUERY_GAP_MAX)
        return (now - last).total_seconds() >= gap

    async def _mark_expired(self, order: Order) -> None:
        # Only on a verified answer naming the order CLOSED/REVOKED, or a long "not found"
        # streak (see `reconcile`). A notification of a payment WeChat Pay accepted before the
        # deadline still credits it (`_settle` does not look at "expired"), and get_order reads
        # the paid marker first.
        order.status = "expired"
        await self._save(order)
        await self.inbox.discard(WECHAT_PAY, order.out_trade_no)
        self._asked.pop(order.out_trade_no, None)

    async def settle_queried(self, state: TradeState) -> bool:
        """Credit an order WeChat Pay's query answer says is paid, exactly as a notification
        would (same checks, same key); True if this call credited it. NotifyRejected if the
        answer does not match the order. `reconcile` and `creditbot admin order` use it."""
        if state.state != "SUCCESS":
            raise NotifyRejected(f"WeChat Pay says {state.state}, not SUCCESS")
        return await self._settle(state)

    # -- notifications --

    async def handle_v2(self, body: bytes) -> NotifyAnswer:
        """A v2 (XML) payment notification: verify, check, credit once; the XML answer."""
        return await self._handle(False, lambda: self.client.read_v2(body))

    async def handle_v3(self, headers: Mapping[str, str], body: bytes) -> NotifyAnswer:
        """A v3 (JSON) payment notification: verify, decrypt, check, credit once."""
        return await self._handle(True, lambda: self.client.read_v3(headers, body))

    async def handle(self, headers: Mapping[str, str], body: bytes) -> NotifyAnswer:
        """Either version: v3 notifications carry Wechatpay-Signature and a JSON body."""
        if is_v3_notification(headers, body):
            return await self.handle_v3(headers, body)
        return await self.handle_v2(body)

    async def _handle(self, v3: bool, read: Callable[[], TradeState | None]) -> NotifyAnswer:
        try:
            trade = read()
            if trade is None:
                # Not a successful payment: nothing to credit, nothing wrong with the message.
                return accepted(v3)
            credited = await self._settle(trade)
        except NotifyRejected as exc:
            log.warning("wechatpay notification rejected", extra={"reason": exc.reason})
            return refused(v3, exc.reason)
        return accepted(v3, credited)

    async def _settle(self, trade: TradeState) -> bool:
        """Check a verified payment against our order and credit it (once). True if credited."""
        out_trade_no, fen, currency = trade.out_trade_no, trade.fen, trade.currency
        mchid, appid, transaction_id = trade.mchid, trade.appid, trade.transaction_id
        if mchid != self.config.mchid:
            raise NotifyRejected("mchid mismatch")
        if appid != self.config.appid:
            raise NotifyRejected("appid mismatch")
        if currency != "CNY":
            raise NotifyRejected("currency is not CNY")
        order = await self.get_order(out_trade_no)
        if order is None:
            raise NotifyRejected("unknown order")
        try:
            paid_fen = int(fen)
        except (TypeError, ValueError) as exc:
            raise NotifyRejected("amount is not a number") from exc
        if paid_fen != order.fen:
            raise NotifyRejected("amount mismatch")
        if order.status == "paid":
            return False  # a replay: already credited and recorded
        await self.inbox.credit(
            WECHAT_PAY,
            out_trade_no,
            order.platform,
            order.user_id,
            order.amount_milli,
            reason="WeChat Pay top-up",
            meta={"out_trade_no": out_trade_no, "transaction_id": transaction_id, "fen": order.fen},
        )
        marker = {"transaction_id": transaction_id, "paid_at": _now().isoformat()}
        first = await self.inbox.confirm(WECHAT_PAY, out_trade_no, marker)
        self._asked.pop(out_trade_no, None)
        if first:
            log.info("wechatpay order paid", extra={"order": out_trade_no, "fen": order.fen})
            order.status = "paid"
            order.transaction_id = transaction_id
            if self.on_paid is not None:
                try:
                    await self.on_paid(order)
                except Exception:
                    log.exception("wechatpay on_paid hook failed")
        return first
