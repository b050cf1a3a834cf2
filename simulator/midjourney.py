"""The simulated midjourney-proxy: submit, change, action, fetch, list, images and notifyHook."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import ClientSession, ClientTimeout, web

from simulator.replies import FAULT_MARKER, png

log = logging.getLogger(__name__)

MJ_FAULTS = frozenset({"fail", "slow", "queue_full", "banned", "exists", "queued"})


@dataclass
class Task:
    id: str
    action: str
    prompt: str
    created: float
    duration: float
    fault: str | None = None
    parent: str | None = None
    index: int | None = None
    notify_hook: str | None = None
    base: str = ""
    start_delay: float = 0.0
    last_status: str = ""
    hash: str = ""

    def view(self, now: float) -> dict[str, Any]:
        """The task as the proxy's fetch returns it, computed from the time elapsed."""
        elapsed = now - self.created - self.start_delay
        status, progress = "IN_PROGRESS", "0%"
        image_url = None
        fail_reason = None
        finish = None
        if elapsed < 0:
            status = "NOT_START"
        elif self.fault == "slow":
            progress = "1%"
        elif self.fault == "fail" and elapsed >= self.duration / 2:
            status, fail_reason = "FAILURE", "[Invalid parameter] simulated failure"
            finish = self.created + self.start_delay + self.duration / 2
        elif elapsed >= self.duration:
            status, progress = "SUCCESS", "100%"
            image_url = f"{self.base}/mj/image/{self.id}.png"
            finish = self.created + self.start_delay + self.duration
        elif elapsed < self.duration * 0.1:
            status = "SUBMITTED"
        else:
            progress = f"{min(99, int(100 * elapsed / self.duration))}%"
            image_url = None
        return {
            "id": self.id,
            "action": self.action,
            "status": status,
            "prompt": self.prompt,
            "promptEn": self.prompt,
            "description": f"/{self.action.lower()} {self.prompt}",
            "state": None,
            "submitTime": int(self.created * 1000),
            "startTime": int((self.created + self.start_delay) * 1000),
            "finishTime": int(finish * 1000) if finish else None,
            "progress": progress,
            "imageUrl": image_url,
            "failReason": fail_reason,
            "properties": {"finalPrompt": self.prompt, "discordInstanceId": "sim"},
            "buttons": self.buttons() if status == "SUCCESS" else [],
        }

    def buttons(self) -> list[dict[str, Any]]:
        def button(custom: str, label: str, emoji: str = "") -> dict[str, Any]:
            return {"customId": custom, "emoji": emoji, "label": label, "type": 2, "style": 2}

        h = self.hash
        if self.action == "UPSCALE":
            return [
                button(f"MJ::JOB::high_variation::1::{h}::SOLO", "Vary (Strong)", "🪄"),
                button(f"MJ::JOB::low_variation::1::{h}::SOLO", "Vary (Subtle)", "🪄"),
            ]
        out = [button(f"MJ::JOB::upsample::{i}::{h}", f"U{i}") for i in range(1, 5)]
        out.append(button(f"MJ::JOB::reroll::0::{h}::SOLO", "", "🔄"))
        out += [button(f"MJ::JOB::variation::{i}::{h}", f"V{i}") for i in range(1, 5)]
        return out


class MidjourneyRoutes:
    """The midjourney-proxy half of `Simulator` (a mixin: its state is the simulator's)."""

    mj_duration: float
    mj_secret: str | None
    clock: Callable[[], float]  # a task's progress is read from it
    tasks: dict[str, Task]
    _children: dict[tuple[str, str, int], str]
    _next_id: int
    _closing: asyncio.Event
    _background: set[asyncio.Task]
    _hooks: ClientSession | None

    if TYPE_CHECKING:

        async def _pause(self, seconds: float) -> None: ...

        async def _json_body(self, request: web.Request) -> dict[str, Any]: ...

        def _take_armed(self, target: str) -> str | None: ...

    def _check_secret(self, request: web.Request) -> None:
        if self.mj_secret and request.headers.get("mj-api-secret") != self.mj_secret:
            raise web.HTTPUnauthorized(
                text=json.dumps({"code": 401, "description": "invalid mj-api-secret"}),
                content_type="application/json",
            )

    def _new_id(self) -> str:
        self._next_id += 1
        return str(int(time.time() * 1000) * 1000 + self._next_id)

    def _base(self, request: web.Request) -> str:
        return f"{request.scheme}://{request.host}"

    def _new_task(
        self,
        request: web.Request,
        action: str,
        prompt: str,
        fault: str | None,
        notify_hook: Any,
        parent: str | None = None,
        index: int | None = None,
    ) -> Task:
        task_id = self._new_id()
        task = Task(
            id=task_id,
            action=action,
            prompt=prompt,
            created=self.clock(),
            duration=self.mj_duration,
            fault=fault,
            parent=parent,
            index=index,
            notify_hook=notify_hook if isinstance(notify_hook, str) and notify_hook else None,
            base=self._base(request),
            start_delay=self.mj_duration / 3 if fault == "queued" else 0.0,
            hash=hashlib.sha256(task_id.encode()).hexdigest()[:8]
            + "-sim-"
            + hashlib.sha256(prompt.encode()).hexdigest()[:12],
        )
        self.tasks[task_id] = task
        if task.notify_hook:
            self._spawn(self._notify_loop(task))
        return task

    def _submit_answer(self, task: Task, fault: str | None) -> web.Response:
        if fault == "queued":
            return web.json_response(
                {
                    "code": 22,
                    "description": "In queue, there are 1 tasks ahead",
                    "result": task.id,
                    "properties": {"numberOfQueues": 1, "discordInstanceId": "sim"},
                }
            )
        return web.json_response(
            {
                "code": 1,
                "description": "Submit success",
                "result": task.id,
                "properties": {"discordInstanceId": "sim"},
            }
        )

    def _refusal(self, fault: str | None, prompt: str) -> web.Response | None:
        if fault == "queue_full":
            return web.json_response(
                {"code": 23, "description": "Queue is full, please try again later", "result": None}
            )
        if fault == "banned":
            return web.json_response(
                {
                    "code": 24,
                    "description": "May contain sensitive words",
                    "properties": {"promptEn": prompt, "bannedWord": "fault"},
                }
            )
        return None

    async def _mj_imagine(self, request: web.Request) -> web.Response:
        self._check_secret(request)
        body = await self._json_body(request)
        prompt = str(body.get("prompt") or "").strip()
        if not prompt:
            return web.json_response({"code": 4, "description": "prompt cannot be empty"})
        markers = [m for m in FAULT_MARKER.findall(prompt) if m in MJ_FAULTS]
        fault = self._take_armed("mj") or (markers[0] if markers else None)
        refused = self._refusal(fault, prompt)
        if refused is not None:
            return refused
        if fault == "exists":
            for old in self.tasks.values():
                if old.action == "IMAGINE" and old.prompt == prompt:
                    return self._exists(old)
            task = self._new_task(request, "IMAGINE", prompt, None, body.get("notifyHook"))
            return self._exists(task)
        task = self._new_task(request, "IMAGINE", prompt, fault, body.get("notifyHook"))
        return self._submit_answer(task, fault)

    def _exists(self, task: Task) -> web.Response:
        view = task.view(self.clock())
        return web.json_response(
            {
                "code": 21,
                "description": "Task already exists",
                "result": task.id,
                "properties": {"status": view["status"], "imageUrl": view["imageUrl"]},
            }
        )

    async def _child(
        self, request: web.Request, body: dict[str, Any], parent_id: str, action: str, index: int
    ) -> web.Response:
        parent = self.tasks.get(parent_id)
        if parent is None:
            return web.json_response({"code": 3, "description": "Related task does not exist"})
        if parent.view(self.clock())["status"] != "SUCCESS":
            return web.json_response(
                {"code": 4, "description": "Related task status error: not finished"}
            )
        if parent.action == "UPSCALE":
            return web.json_response(
                {"code": 4, "description": "An upscaled image cannot be changed this way"}
            )
        fault = self._take_armed("mj")
        refused = self._refusal(fault, parent.prompt)
        if refused is not None:
            return refused
        key = (parent_id, action, index)
        if action == "UPSCALE" or fault == "exists":
            existing = self._children.get(key)
            if existing is not None:
                return self._exists(self.tasks[existing])
        task = self._new_task(
            request, action, parent.prompt, fault, body.get("notifyHook"), parent_id, index
        )
        self._children[key] = task.id
        return self._submit_answer(task, fault)

    async def _mj_change(self, request: web.Request) -> web.Response:
        self._check_secret(request)
        body = await self._json_body(request)
        action = str(body.get("action") or "").upper()
        if action not in ("UPSCALE", "VARIATION", "REROLL"):
            return web.json_response({"code": 4, "description": "action is invalid"})
        try:
            index = int(body.get("index") or 0)
        except (TypeError, ValueError):
            index = 0
        if action == "REROLL":
            index = 0
        elif not 1 <= index <= 4:
            return web.json_response({"code": 4, "description": "index must be 1 to 4"})
        return await self._child(request, body, str(body.get("taskId") or ""), action, index)

    async def _mj_action(self, request: web.Request) -> web.Response:
        self._check_secret(request)
        body = await self._json_body(request)
        custom = str(body.get("customId") or "")
        match = re.match(r"^MJ::JOB::(upsample|variation|reroll)::(\d+)::", custom)
        if not match:
            return web.json_response({"code": 4, "description": "customId is not supported"})
        kind, index = match.groups()
        action = {"upsample": "UPSCALE", "variation": "VARIATION", "reroll": "REROLL"}[kind]
        parent_id = str(body.get("taskId") or "")
        parent = self.tasks.get(parent_id)
        if parent is not None and parent.hash not in custom:
            return web.json_response({"code": 4, "description": "customId does not match task"})
        return await self._child(request, body, parent_id, action, int(index))

    async def _mj_fetch(self, request: web.Request) -> web.Response:
        self._check_secret(request)
        task = self.tasks.get(request.match_info["id"])
        if task is None:
            return web.Response(status=404, text="")
        return web.json_response(task.view(self.clock()))

    async def _mj_list(self, request: web.Request) -> web.Response:
        self._check_secret(request)
        body = await self._json_body(request)
        ids = body.get("ids") or []
        now = self.clock()
        out = [self.tasks[i].view(now) for i in ids if isinstance(i, str) and i in self.tasks]
        return web.json_response(out)

    async def _mj_image(self, request: web.Request) -> web.Response:
        task_id = request.match_info["id"]
        if task_id not in self.tasks:
            raise web.HTTPNotFound()
        return web.Response(body=png(task_id), content_type="image/png")

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _notify_loop(self, task: Task) -> None:
        """POST the task to its notifyHook on every status change: best effort, no retries."""
        step = max(0.02, task.duration / 10)
        while not self._closing.is_set():
            view = task.view(self.clock())
            if view["status"] != task.last_status:
                task.last_status = view["status"]
                await self._post_hook(task.notify_hook or "", view)
            if view["status"] in ("SUCCESS", "FAILURE", "CANCEL"):
                return
            await self._pause(step)

    async def _post_hook(self, url: str, payload: dict[str, Any]) -> None:
        if self._hooks is None:
            self._hooks = ClientSession(timeout=ClientTimeout(total=5))
        try:
            async with self._hooks.post(url, json=payload) as resp:
                await resp.read()
        except Exception as exc:  # best effort, like the real proxy
            log.debug("notifyHook %s failed: %s", url, exc)
