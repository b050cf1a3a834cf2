"""The billed Midjourney flow: hold on submit, capture once on SUCCESS, void otherwise.

- `/imagine PROMPT` holds the imagine price under a key derived from the platform message,
  submits, and keeps the hold for code 1 (submitted) and 22 (queued). Code 21 (the task
  already exists) attaches to the task we already track and voids the new hold, so one task is
  never held or charged twice. 23 (queue full), 24 (banned prompt) and anything else: void.
- Each task is persisted in the Store (`mj:task:<id>`, listed in the `mj:open` set until
  settled) and tracked by one poller per task, polling with backoff; a notifyHook call only
  wakes the poller up early, it never settles anything by itself.
- Settlement is claimed first (`mj:settle:<id>` = capture or void, add-if-absent), then done
  with idempotent wallet calls, so a crash at any point and a resume after a restart settle the
  task exactly once. Trackers take a lease (`mj:track:<id>`) so two processes never both poll.
- Results go to whoever follows the task (the `handle` call that submitted it); if nobody does
  (the adapter stopped listening, or the process restarted), to the platform's sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field

from billing.money import format_credits
from billing.pricing import UnknownModel
from billing.wallet.base import HELD, Hold, HoldNotActive, IdempotencyConflict, InsufficientCredits
from bot.context import Request, Services
from bot.events import Action, Delivery, Event, ImageResult, Notice, Progress
from bot.holds import hold_or_void, void_shielded
from bot.i18n import t
from bot.providers.errors import UpstreamError
from bot.providers.midjourney import (
    ACTIONS,
    BANNED,
    CANCEL,
    FAILURE,
    MODAL,
    QUEUE_FULL,
    QUEUED,
    SUCCESS,
    MjTask,
    SubmitResult,
    TaskNotFound,
)
from bot.store.keys import MJ_OPEN, mj_settle_key, mj_task_key, mj_track_key

log = logging.getLogger(__name__)

DONE_TTL_SECONDS = 7 * 86400  # how long a finished image's buttons keep working
TRACK_LEASE_SECONDS = 60.0
LOST_AFTER = 3  # consecutive "task not found" answers before a task counts as failed
_PERCENT = re.compile(r"(\d{1,3})\s*%")

Deliver = Callable[[Delivery], Awaitable[None]]


def price_action(action: str) -> str:
    """The price-list action for a Midjourney action: U* upscale, V* variation, ..."""
    action = action.upper()
    if action.startswith("U"):
        return "upscale"
    if action.startswith("V"):
        return "variation"
    if action == "REROLL":
        return "reroll"
    return "imagine"


def is_grid(action: str) -> bool:
    """Imagine, variations and rerolls give a 4-image grid that can be upscaled or varied."""
    return action in ("IMAGINE", "REROLL") or action.startswith("V")


def button_label(action: str) -> str:
    return "🔄" if action == "REROLL" else action


@dataclass(slots=True)
class TaskRecord:
    """A task we hold credit for: enough to settle it and to reach its owner after a restart."""

    task_id: str
    hold_id: str
    amount: int
    account: str
    platform: str
    chat_id: str
    user_id: str
    action: str  # IMAGINE, U1..U4, V1..V4, REROLL
    prompt: str = ""
    lang: str = "en"
    status: str = "pending"  # pending, success, failed, timeout
    created_at: float = field(default_factory=time.time)
    image_url: str | None = None
    parent: str | None = None

    def dumps(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def loads(cls, raw: str) -> TaskRecord:
        data = json.loads(raw)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(slots=True)
class _Tracker:
    record: TaskRecord
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    listeners: list[asyncio.Queue[Event | None]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    lease_key: str = ""
    lease_token: str = ""


class ImageFlow:
    """Submits, tracks and settles Midjourney tasks."""

    def __init__(self, services: Services, deliver: Deliver) -> None:
        self.s = services
        self.deliver = deliver
        self._trackers: dict[str, _Tracker] = {}
        self._closed = False

    # --- entry points ----------------------------------------------------------------------

    async def imagine(self, req: Request, prompt: str) -> AsyncIterator[Event]:
        """`/imagine PROMPT`: hold, submit, then follow the task to its result."""
        if self.s.mj is None:
            yield Notice(t("imagine_disabled", req.lang), kind="error")
            return
        prompt = prompt.strip()
        if not prompt:
            yield Notice(t("imagine_usage", req.lang))
            return
        async with contextlib.aclosing(self._run(req, "IMAGINE", prompt, None)) as events:
            async for event in events:
                yield event

    async def press(self, req: Request, data: str) -> AsyncIterator[Event]:
        """A button under an image: checks it is live and the presser's, then runs it."""
        parts = data.split(":")
        if len(parts) != 3 or parts[0] != "mj" or parts[2].upper() not in ACTIONS:
            yield Notice(t("press_bad", req.lang), kind="error")
            return
        task_id, action = parts[1], parts[2].upper()
        record = await self.load(task_id)
        if record is None or record.status != "success":
            yield Notice(t("press_stale", req.lang), kind="error")
            return
        if record.account != req.account:
            yield Notice(t("press_foreign", req.lang), kind="error")
            return
        if self.s.mj is None:
            yield Notice(t("imagine_disabled", req.lang), kind="error")
            return
        async with contextlib.aclosing(self._run(req, action, record.prompt, record)) as events:
            async for event in events:
                yield event

    def poke(self, task_id: str) -> bool:
        """notifyHook: re-fetch this task now. True if we track it here."""
        tracker = self._trackers.get(task_id)
        if tracker is None:
            return False
        tracker.wake.set()
        return True

    async def resume(self) -> int:
        """Track every unsettled task that no live process is tracking; returns how many."""
        started = 0
        for task_id in await self.s.store.smembers(MJ_OPEN):
            if task_id in self._trackers or self._closed:
                continue
            record = await self.load(task_id)
            if record is None or record.status != "pending":
                claimed = await self.s.store.get(mj_settle_key(task_id))
                if record is not None and claimed:
                    await self._settle(record, claimed, None)  # finish an interrupted settle
                else:
                    await self.s.store.srem(MJ_OPEN, task_id)
                continue
            if await self._start(record):
                started += 1
        return started

    async def close(self) -> None:
        """Stop polling (unsettled tasks stay open in the Store for the next start)."""
        self._closed = True
        trackers = list(self._trackers.values())
        for tracker in trackers:
            if tracker.task is not None:
                tracker.task.cancel()
        for tracker in trackers:
            if tracker.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await tracker.task
            with contextlib.suppress(Exception):
                await self._release_lease(tracker)
        self._trackers.clear()

    async def load(self, task_id: str) -> TaskRecord | None:
        raw = await self.s.store.get(mj_task_key(task_id))
        if not raw:
            return None
        try:
            return TaskRecord.loads(raw)
        except (ValueError, TypeError):
            log.error("unreadable Midjourney task record %s", task_id)
            return None

    # --- submit ------------------------------------------------------------------------------

    async def _run(
        self, req: Request, action: str, prompt: str, parent: TaskRecord | None
    ) -> AsyncIterator[Event]:
        s = self.s
        assert s.mj is not None
        lease = await s.limiter.acquire(req.account)
        if lease is None:
            yield Notice(t("wait", req.lang), kind="wait")
            return
        record: TaskRecord | None = None
        try:
            parent_task: MjTask | None = None
            if parent is not None:
                try:
                    parent_task = await s.mj.fetch(parent.task_id)
                except TaskNotFound:
                    yield Notice(t("press_stale", req.lang), kind="error")
                    return
                except UpstreamError:
                    yield Notice(t("imagine_error", req.lang), kind="error")
                    return
            try:
                price = s.prices.image_cost(price_action(action))
            except UnknownModel:  # the operator's price file has no Midjourney price
                yield Notice(t("imagine_disabled", req.lang), kind="error")
                return
            try:
                hold = await hold_or_void(
                    s.wallet,
                    req.account,
                    price,
                    f"mj:{req.platform}:{req.message_id}",
                    ttl=s.settings.mj_task_timeout_seconds + s.settings.hold_ttl_seconds,
                    reason="cancelled before submit",
                )
            except InsufficientCredits as exc:
                yield Notice(
                    t(
                        "insufficient_image",
                        req.lang,
                        price=format_credits(price),
                        available=format_credits(max(exc.available, 0)),
                    ),
                    kind="insufficient",
                )
                return
            except IdempotencyConflict:
                # An earlier delivery of this message held another price (the operator changed
                # prices in between): that delivery owns the task; do not submit it twice.
                log.info("image request %s:%s already handled", req.platform, req.message_id)
                return
            if hold.status != HELD:
                return  # a replayed message whose task was already submitted and settled
            notify = s.settings.mj_notify_url or None
            # From here until a task record is stored, the hold is ours alone to settle:
            # anything else (a cancellation, a store error) voids it, never leaving it live.
            try:
                try:
                    if parent_task is None:
                        result = await s.mj.submit_imagine(prompt, notify_hook=notify)
                    else:
                        result = await s.mj.submit_action(parent_task, action, notify_hook=notify)
                except (UpstreamError, ValueError) as exc:
                    log.warning("midjourney submit failed: %s", exc)
                    await self._void(hold.id, "submit failed")
                    notice = Notice(t("imagine_error", req.lang), kind="error")
                else:
                    record, notice = await self._register(req, result, hold, action, prompt, parent)
            except BaseException:
                await void_shielded(s.wallet, hold.id, "interrupted before the task was stored")
                raise
            yield notice
        finally:
            await lease.release()
        if record is not None:
            async with contextlib.aclosing(self._follow(record)) as events:
                async for event in events:
                    yield event

    async def _register(
        self,
        req: Request,
        result: SubmitResult,
        hold: Hold,
        action: str,
        prompt: str,
        parent: TaskRecord | None,
    ) -> tuple[TaskRecord | None, Notice]:
        """Keep or void the hold by the submit's code; the record to follow, and what to say."""
        price = format_credits(hold.amount)
        if not result.accepted or not result.task_id:
            await self._void(hold.id, f"submit refused ({result.code})")
            if result.code == BANNED:
                key, kw = "imagine_banned", {}
            elif result.code == QUEUE_FULL:
                key, kw = "imagine_queue_full", {}
            else:
                key, kw = "imagine_refused", {"reason": result.description or result.code}
            return None, Notice(t(key, req.lang, **kw), kind="error")
        record = TaskRecord(
            task_id=result.task_id,
            hold_id=hold.id,
            amount=hold.amount,
            account=req.account,
            platform=req.platform,
            chat_id=req.chat_id,
            user_id=req.user_id,
            action=action,
            prompt=prompt[:500],
            lang=req.lang,
            parent=parent.task_id if parent else None,
        )
        key = mj_task_key(record.task_id)
        # Listed as open first: once the record is stored, resume() always finds it (an id
        # listed without a record is dropped by resume()).
        await self.s.store.sadd(MJ_OPEN, record.task_id)
        if not await self.s.store.add(key, record.dumps()):
            # Code 21 for a task we already hold credit for (or a race to register it):
            # follow the existing task and release this second hold.
            await self._void(hold.id, "task already exists")
            existing = await self.load(record.task_id)
            return existing, Notice(t("imagine_exists", req.lang))
        key = "imagine_queued" if result.code == QUEUED else "imagine_submitted"
        return record, Notice(t(key, req.lang, price=price))

    # --- tracking ----------------------------------------------------------------------------

    async def _follow(self, record: TaskRecord) -> AsyncIterator[Event]:
        if record.status != "pending":
            event = self._final_event(record, None)
            if event is not None:
                yield event
            return
        tracker = self._trackers.get(record.task_id)
        if tracker is None:
            await self._start(record)
            tracker = self._trackers.get(record.task_id)
        if tracker is None:  # another process tracks it; it will deliver through the sink
            return
        queue: asyncio.Queue[Event | None] = asyncio.Queue()
        tracker.listeners.append(queue)
        try:
            while True:
                event = await queue.get()
                if event is None:
                    return
                yield event
        finally:
            with contextlib.suppress(ValueError):
                tracker.listeners.remove(queue)

    async def _start(self, record: TaskRecord) -> bool:
        """Start a poller unless one runs here or in another process (the track lease)."""
        if record.task_id in self._trackers or self._closed:
            return record.task_id in self._trackers
        lease_key = mj_track_key(record.task_id)
        token = secrets.token_hex(8)
        if not await self.s.store.add(lease_key, token, ttl=TRACK_LEASE_SECONDS):
            return False
        if record.task_id in self._trackers:  # started meanwhile by another coroutine
            await self.s.store.delete(lease_key)
            return True
        tracker = _Tracker(record=record, lease_key=lease_key, lease_token=token)
        self._trackers[record.task_id] = tracker
        tracker.task = asyncio.create_task(self._track(tracker), name=f"mj:{record.task_id}")
        return True

    async def _release_lease(self, tracker: _Tracker) -> None:
        if await self.s.store.get(tracker.lease_key) == tracker.lease_token:
            await self.s.store.delete(tracker.lease_key)

    async def _track(self, tracker: _Tracker) -> None:
        record = tracker.record
        settings = self.s.settings
        interval = settings.mj_poll_min_seconds
        deadline = record.created_at + settings.mj_task_timeout_seconds
        last_progress: str | None = None
        lost = 0
        try:
            while True:
                await self.s.store.set(
                    tracker.lease_key, tracker.lease_token, ttl=TRACK_LEASE_SECONDS
                )
                task: MjTask | None = None
                try:
                    assert self.s.mj is not None
                    task = await self.s.mj.fetch(record.task_id)
                    lost = 0
                except TaskNotFound:
                    lost += 1
                    if lost >= LOST_AFTER:
                        await self._settle(record, "void", None, status="failed")
                        break
                except UpstreamError as exc:
                    log.info("midjourney fetch %s failed: %s", record.task_id, exc.kind)
                if task is not None:
                    if task.status == SUCCESS:
                        await self._settle(record, "capture", task)
                        break
                    if task.status in (FAILURE, CANCEL, MODAL):
                        await self._settle(record, "void", task, status="failed")
                        break
                # The deadline counts only for a task that has not finished: one that finished
                # near it (or while the bot was down) is delivered and charged as usual.
                if time.time() >= deadline:
                    await self._settle(record, "void", task, status="timeout")
                    break
                if task is not None:
                    if task.progress != last_progress and (task.progress or last_progress):
                        last_progress = task.progress
                        self._publish(tracker, self._progress(record, task))
                wait = max(0.0, min(interval, deadline - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(tracker.wake.wait(), wait)
                tracker.wake.clear()
                interval = min(interval * 1.5, settings.mj_poll_max_seconds)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("tracking Midjourney task %s failed; it stays open", record.task_id)
        finally:
            self._trackers.pop(record.task_id, None)
            for queue in tracker.listeners:
                queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await asyncio.shield(self._release_lease(tracker))

    def _progress(self, record: TaskRecord, task: MjTask) -> Progress:
        match = _PERCENT.search(task.progress or "")
        return Progress(
            task_id=record.task_id,
            text=t("imagine_progress", record.lang, progress=task.progress or ""),
            percent=min(int(match.group(1)), 100) if match else None,
            image_url=task.image_url,
        )

    def _publish(self, tracker: _Tracker, event: Event) -> None:
        for queue in tracker.listeners:
            queue.put_nowait(event)

    # --- settlement --------------------------------------------------------------------------

    async def _settle(
        self, record: TaskRecord, outcome: str, task: MjTask | None, *, status: str = ""
    ) -> None:
        """Claim the outcome once, apply it idempotently, record it, tell the owner."""
        store = self.s.store
        claim = mj_settle_key(record.task_id)
        if not await store.add(claim, outcome, ttl=DONE_TTL_SECONDS):
            outcome = await store.get(claim) or outcome  # finish what was decided first
        if outcome == "capture":
            try:
                await self.s.wallet.capture(
                    record.hold_id,
                    record.amount,
                    reason=f"midjourney {price_action(record.action)}",
                    meta={
                        "model": "midjourney",
                        "action": record.action,
                        "task_id": record.task_id,
                    },
                )
            except HoldNotActive as exc:
                log.error("image %s delivered but its hold was %s", record.task_id, exc.status)
            record.status = "success"
            if task is not None:
                record.image_url = task.image_url
        else:
            await self._void(record.hold_id, status or "failed")
            record.status = status or record.status
            if record.status == "pending":
                record.status = "failed"
        await store.set(mj_task_key(record.task_id), record.dumps(), ttl=DONE_TTL_SECONDS)
        await store.srem(MJ_OPEN, record.task_id)
        event = self._final_event(record, task)
        tracker = self._trackers.get(record.task_id)
        if event is None:
            return
        if tracker is not None and tracker.listeners:
            self._publish(tracker, event)
        else:
            try:
                await self.deliver(Delivery(record.platform, record.user_id, record.chat_id, event))
            except Exception:
                log.exception("delivering the result of task %s failed", record.task_id)

    def _final_event(self, record: TaskRecord, task: MjTask | None) -> Event | None:
        lang = record.lang
        if record.status == "success":
            url = (task.image_url if task else None) or record.image_url or ""
            actions: list[Action] = []
            if is_grid(record.action):
                offered = task.actions() if task is not None else list(ACTIONS)
                for name in offered:
                    data = f"mj:{record.task_id}:{name}"
                    if len(data.encode()) <= 64:
                        actions.append(Action(button_label(name), data))
            caption = t(
                "imagine_done",
                lang,
                prompt=record.prompt[:200],
                action=record.action.lower() if record.action == "IMAGINE" else record.action,
                credits=format_credits(record.amount),
            )
            return ImageResult(record.task_id, url, caption, tuple(actions))
        if record.status == "timeout":
            return Notice(t("imagine_timeout", lang), kind="error")
        reason = (task.fail_reason if task else None) or "failed"
        return Notice(t("imagine_failed", lang, reason=reason), kind="error")

    async def _void(self, hold_id: str, reason: str) -> None:
        try:
            await self.s.wallet.void(hold_id, reason=reason)
        except HoldNotActive as exc:
            log.error("could not void hold %s: it is %s", hold_id, exc.status)
