"""The simulator's server: one aiohttp app serving both upstreams, fault arming and stats."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientSession, web

from simulator.midjourney import MJ_FAULTS, MidjourneyRoutes, Task
from simulator.openai import DEFAULT_MODELS, OPENAI_FAULTS, OpenAIRoutes


@dataclass
class Simulator(OpenAIRoutes, MidjourneyRoutes):
    """A running simulated upstream. Use `start_simulator` to make one."""

    latency: float = 0.0
    mj_duration: float = 0.3
    api_key: str | None = None
    mj_secret: str | None = None
    models: frozenset[str] = frozenset(DEFAULT_MODELS)
    slow_seconds: float = 3600.0
    clock: Callable[[], float] = time.time
    url: str = ""
    stats: Counter = field(default_factory=Counter)
    requests: list[tuple[str, Any]] = field(default_factory=list)
    tasks: dict[str, Task] = field(default_factory=dict)
    _armed: list[list[Any]] = field(default_factory=list)
    _children: dict[tuple[str, str, int], str] = field(default_factory=dict)
    _next_id: int = 0
    _runner: web.AppRunner | None = None
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    _background: set[asyncio.Task] = field(default_factory=set)
    _hooks: ClientSession | None = None

    @property
    def openai_url(self) -> str:
        """The OPENAI_BASE_URL to give a client."""
        return self.url + "/v1"

    @property
    def mj_url(self) -> str:
        """The MJ_BASE_URL to give a client (the server root; paths start with /mj)."""
        return self.url

    def arm(self, fault: str, count: int = 1, target: str | None = None) -> None:
        """Make the next `count` requests of `target` ("openai"/"mj") fail with `fault`."""
        fault = fault.removeprefix("[[fault:").removesuffix("]]")
        if target is None:
            target = "openai" if fault in OPENAI_FAULTS else "mj"
        known = OPENAI_FAULTS if target == "openai" else MJ_FAULTS
        if fault not in known:
            raise ValueError(f"unknown {target} fault {fault!r}")
        self._armed.append([target, fault, max(1, count)])

    def _take_armed(self, target: str) -> str | None:
        for entry in self._armed:
            if entry[0] == target:
                entry[2] -= 1
                if entry[2] <= 0:
                    self._armed.remove(entry)
                return entry[1]
        return None

    def build_app(self) -> web.Application:
        """The aiohttp application (also usable inside another server or a test client)."""
        app = web.Application(middlewares=[self._count])
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/mj/submit/imagine", self._mj_imagine)
        app.router.add_post("/mj/submit/change", self._mj_change)
        app.router.add_post("/mj/submit/action", self._mj_action)
        app.router.add_get("/mj/task/{id}/fetch", self._mj_fetch)
        app.router.add_post("/mj/task/list-by-condition", self._mj_list)
        app.router.add_get("/mj/image/{id}.png", self._mj_image)
        app.router.add_post("/_sim/fault", self._sim_fault)
        app.router.add_get("/_sim/stats", self._sim_stats)
        return app

    async def close(self) -> None:
        """Stop serving; hanging streams and slow tasks end at once."""
        self._closing.set()
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._hooks is not None:
            await self._hooks.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Simulator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- plumbing ---

    @web.middleware
    async def _count(self, request: web.Request, handler):
        route = request.match_info.route.resource
        path = route.canonical if route is not None else request.path
        self.stats["total"] += 1
        self.stats[f"{request.method} {path}"] += 1
        return await handler(request)

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up when the simulator closes."""
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise web.HTTPBadRequest(text="invalid JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="expected a JSON object")
        self.requests.append((request.path, body))
        return body

    # --- test controls ---

    async def _sim_fault(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        try:
            self.arm(str(body.get("fault") or ""), int(body.get("count") or 1), body.get("target"))
        except ValueError as exc:
            return web.json_response({"ok": False, "error": str(exc)}, status=400)
        return web.json_response({"ok": True, "armed": [list(a) for a in self._armed]})

    async def _sim_stats(self, request: web.Request) -> web.Response:
        paths = {k: v for k, v in self.stats.items() if k != "total"}
        return web.json_response(
            {"total": self.stats["total"], "paths": paths, "tasks": len(self.tasks)}
        )


async def start_simulator(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    latency: float = 0.0,
    mj_duration: float = 0.3,
    api_key: str | None = None,
    mj_secret: str | None = None,
    models: tuple[str, ...] | None = None,
    slow_seconds: float = 3600.0,
    clock: Callable[[], float] = time.time,
) -> Simulator:
    """Serve the simulated OpenAI and midjourney-proxy APIs; `port=0` picks a free port.

    `latency` is the pause before each streamed chunk; `mj_duration` how long a Midjourney
    task takes to finish; `api_key`/`mj_secret`, when given, are required of clients.
    `clock` (seconds, like `time.time`) times the Midjourney tasks: a test can move it forward
    to finish a task instead of waiting for it.
    """
    sim = Simulator(
        latency=latency,
        mj_duration=mj_duration,
        api_key=api_key or None,
        mj_secret=mj_secret or None,
        models=frozenset(models or DEFAULT_MODELS),
        slow_seconds=slow_seconds,
        clock=clock,
    )
    runner = web.AppRunner(sim.build_app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sim._runner = runner
    sockets = runner.addresses
    bound_port = sockets[0][1] if sockets else port
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    sim.url = f"http://{shown}:{bound_port}"
    return sim
