"""midjourney-proxy's HTTP API, in both dialects the wild runs.

novicezk/midjourney-proxy: `/mj/submit/imagine`, `/mj/submit/change` {taskId, action, index},
`/mj/task/{id}/fetch`. trueai-org/midjourney-proxy adds `/mj/submit/action` {taskId, customId},
the customId coming from the finished task's `buttons`. Both answer a submit with
`{code, description, result, properties}`; the core holds credits on submit and settles on the
task's final status, so this module only reports, it never decides money.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from bot.health import Status
from bot.providers.errors import UpstreamError, UpstreamUnavailable

if TYPE_CHECKING:
    from bot.settings import Settings

__all__ = [
    "ACTIONS",
    "BANNED",
    "CANCEL",
    "EXISTS",
    "FAILURE",
    "FINAL_STATUSES",
    "IN_PROGRESS",
    "MODAL",
    "NOT_FOUND",
    "NOT_START",
    "OK",
    "QUEUED",
    "QUEUE_FULL",
    "SUBMITTED",
    "SUCCESS",
    "VALIDATION_ERROR",
    "MidjourneyClient",
    "MjTask",
    "SubmitResult",
    "TaskNotFound",
]

log = logging.getLogger(__name__)

NOT_START = "NOT_START"
SUBMITTED = "SUBMITTED"
IN_PROGRESS = "IN_PROGRESS"
FAILURE = "FAILURE"
SUCCESS = "SUCCESS"
MODAL = "MODAL"  # trueai: the action needs a form (zoom, inpaint); we treat it as not done
CANCEL = "CANCEL"  # trueai
FINAL_STATUSES = frozenset({FAILURE, SUCCESS, CANCEL})

# Submit result codes.
OK = 1
NOT_FOUND = 3
VALIDATION_ERROR = 4
EXISTS = 21
QUEUED = 22
QUEUE_FULL = 23
BANNED = 24

ACTIONS = ("U1", "U2", "U3", "U4", "V1", "V2", "V3", "V4", "REROLL")

_ACTION = re.compile(r"^(?:([UV])([1-4])|REROLL)$")
_BUTTON = re.compile(r"^MJ::JOB::(upsample|variation|reroll)::(\d+)::")


class TaskNotFound(UpstreamError):
    """The proxy does not know this task id (it lost it, or it never existed)."""

    kind = "not_found"


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """The proxy's answer to a submit. `accepted` for 1, 21 and 22; anything else is refused."""

    code: int
    description: str
    task_id: str | None
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        """A task exists for this submit (new, already existing, or queued)."""
        return self.code in (OK, EXISTS, QUEUED) and bool(self.task_id)

    @property
    def existing(self) -> bool:
        """Code 21: the proxy already has this task; the core must not bill it again."""
        return self.code == EXISTS


@dataclass(frozen=True, slots=True)
class MjTask:
    """A task as `/mj/task/{id}/fetch` reports it."""

    id: str
    action: str
    status: str
    progress: str = ""
    image_url: str | None = None
    fail_reason: str | None = None
    prompt: str = ""
    buttons: list[dict[str, Any]] = field(default_factory=list)
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def done(self) -> bool:
        """SUCCESS, FAILURE or CANCEL: nothing will change any more."""
        return self.status in FINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCESS

    def actions(self) -> list[str]:
        """The actions ("U1".."V4", "REROLL") this finished task offers, in a stable order.

        From the buttons when the proxy lists them (trueai); otherwise novicezk's rule: a
        finished grid (imagine, variation, reroll) can be upscaled, varied and rerolled.
        """
        if self.status != SUCCESS:
            return []
        if self.buttons:
            found = {a for b in self.buttons if (a := _button_action(b))}
            return [a for a in ACTIONS if a in found]
        if self.action.upper() in ("IMAGINE", "VARIATION", "REROLL", "BLEND"):
            return list(ACTIONS)
        return []

    def custom_id(self, action: str) -> str | None:
        """The trueai customId for an action, if the task's buttons offer it."""
        for button in self.buttons:
            if _button_action(button) == action:
                custom = button.get("customId")
                return str(custom) if custom else None
        return None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MjTask:
        """Read a task tolerantly: proxies differ in nulls, number types and extra fields."""
        progress = data.get("progress")
        buttons = data.get("buttons")
        if not isinstance(buttons, list):
            buttons = []
        properties = data.get("properties")
        return cls(
            id=_text(data.get("id")) or "",
            action=(_text(data.get("action")) or "").upper(),
            status=(_text(data.get("status")) or NOT_START).upper(),
            progress="" if progress is None else str(progress),
            image_url=_text(data.get("imageUrl")) or None,
            fail_reason=_text(data.get("failReason")) or None,
            prompt=_text(data.get("prompt")) or _text(data.get("promptEn")) or "",
            buttons=[b for b in buttons if isinstance(b, dict)],
            properties=properties if isinstance(properties, dict) else {},
        )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)


def _button_action(button: dict[str, Any]) -> str | None:
    """Map a trueai button to U1..U4 / V1..V4 / REROLL (other buttons are not sold)."""
    match = _BUTTON.match(str(button.get("customId") or ""))
    if not match:
        return None
    kind, index = match.groups()
    if kind == "reroll":
        return "REROLL"
    if not 1 <= int(index) <= 4:
        return None
    return ("U" if kind == "upsample" else "V") + index


class MidjourneyClient:
    """Submits and fetches midjourney-proxy tasks. `base_url` is the server root (no `/mj`)."""

    def __init__(
        self,
        base_url: str,
        api_secret: str = "",
        *,
        dialect: str = "novicezk",
        http: httpx.AsyncClient | None = None,
        timeout: float = 30.0,
    ) -> None:
        if dialect not in ("novicezk", "trueai"):
            raise ValueError(f"unknown midjourney-proxy dialect {dialect!r}")
        root = base_url.rstrip("/")
        if root.endswith("/mj"):
            root = root[: -len("/mj")]
        self.base_url = root
        self.dialect = dialect
        self._secret = api_secret
        self._timeout = httpx.Timeout(timeout)
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(timeout=self._timeout)
        # How the last request went, for /healthz (bot.health); while down, `ping` now and then.
        self.status = Status("midjourney", ok=True, detail="no request yet", recheck=self.ping)

    @classmethod
    def from_settings(cls, settings: Settings, **kw: Any) -> MidjourneyClient:
        """A client configured from MJ_* settings (MJ_BASE_URL must be set)."""
        return cls(settings.mj_base_url, settings.mj_api_secret, dialect=settings.mj_dialect, **kw)

    def __repr__(self) -> str:
        return f"MidjourneyClient(base_url={self.base_url!r}, dialect={self.dialect!r})"

    async def close(self) -> None:
        self.status.cancel()
        if self._own_http:
            await self._http.aclose()

    async def ping(self) -> None:
        """One cheap request (a task that does not exist): any answer but 401/403/5xx means
        the proxy is there and takes our secret. The outcome goes to `status`."""
        with contextlib.suppress(UpstreamError):
            await self._request("GET", "/mj/task/-/fetch")

    async def __aenter__(self) -> MidjourneyClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def submit_imagine(self, prompt: str, notify_hook: str | None = None) -> SubmitResult:
        """Start an /imagine task."""
        body: dict[str, Any] = {"prompt": prompt}
        if notify_hook:
            body["notifyHook"] = notify_hook
        return await self._submit("/mj/submit/imagine", body)

    async def submit_action(
        self, task: MjTask, action: str, notify_hook: str | None = None
    ) -> SubmitResult:
        """Press a button ("U1".."U4", "V1".."V4", "REROLL") on a finished task.

        A button the task does not offer comes back as a refused SubmitResult (code 4), so the
        core's "refused submit: void the hold" rule covers it without a special case.
        """
        action = action.upper()
        match = _ACTION.match(action)
        if not match:
            raise ValueError(f"unknown Midjourney action {action!r}")
        body: dict[str, Any]
        if self.dialect == "trueai":
            custom_id = task.custom_id(action)
            if custom_id is None:
                return SubmitResult(VALIDATION_ERROR, f"{action} is not offered on this task", None)
            body = {"taskId": task.id, "customId": custom_id}
            path = "/mj/submit/action"
        else:
            letter, index = match.groups()
            if letter is None:
                body = {"taskId": task.id, "action": "REROLL", "index": 1}
            else:
                kind = "UPSCALE" if letter == "U" else "VARIATION"
                body = {"taskId": task.id, "action": kind, "index": int(index)}
            path = "/mj/submit/change"
        if notify_hook:
            body["notifyHook"] = notify_hook
        return await self._submit(path, body)

    async def fetch(self, task_id: str) -> MjTask:
        """The task's current state. Raises TaskNotFound, UpstreamUnavailable, UpstreamError."""
        resp = await self._request("GET", f"/mj/task/{task_id}/fetch")
        if resp.status_code == 404:
            raise TaskNotFound(f"task {task_id} not found", status=404)
        self._check_status(resp)
        data = _json(resp)
        if not isinstance(data, dict) or not data.get("id"):
            raise TaskNotFound(f"task {task_id} not found", status=resp.status_code)
        return MjTask.from_json(data)

    async def list_tasks(self, task_ids: list[str]) -> list[MjTask]:
        """Several tasks in one request (`/mj/task/list-by-condition`), for resuming."""
        resp = await self._request("POST", "/mj/task/list-by-condition", json={"ids": task_ids})
        self._check_status(resp)
        data = _json(resp)
        if not isinstance(data, list):
            return []
        return [MjTask.from_json(item) for item in data if isinstance(item, dict)]

    async def _submit(self, path: str, body: dict[str, Any]) -> SubmitResult:
        # Never retried: a second submit after a lost answer could start (and bill) two tasks.
        resp = await self._request("POST", path, json=body)
        data = _json(resp)
        if isinstance(data, dict) and "code" in data and resp.status_code not in (401, 403):
            properties = data.get("properties")
            result = SubmitResult(
                code=_int(data.get("code")),
                description=str(data.get("description") or ""),
                task_id=_text(data.get("result")) or None,
                properties=properties if isinstance(properties, dict) else {},
            )
            if not result.accepted:
                log.info("midjourney-proxy refused a submit: code %d", result.code)
            return result
        self._check_status(resp)
        raise UpstreamError(
            f"unexpected answer to {path}", kind="protocol", status=resp.status_code
        )

    async def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"mj-api-secret": self._secret} if self._secret else {}
        try:
            resp = await self._http.request(
                method, self.base_url + path, headers=headers, timeout=self._timeout, **kw
            )
        except httpx.TimeoutException as exc:
            self.status.down("midjourney-proxy timed out")
            raise UpstreamUnavailable(f"midjourney-proxy timeout: {type(exc).__name__}") from exc
        except httpx.TransportError as exc:
            self.status.down("midjourney-proxy unreachable")
            raise UpstreamUnavailable(
                f"midjourney-proxy unreachable: {type(exc).__name__}"
            ) from exc
        if resp.status_code in (401, 403):
            self.status.down(f"MJ_API_SECRET refused (HTTP {resp.status_code})")
        elif resp.status_code >= 500:
            self.status.down(f"midjourney-proxy HTTP {resp.status_code}")
        else:
            self.status.up("last request answered")
        return resp

    @staticmethod
    def _check_status(resp: httpx.Response) -> None:
        status = resp.status_code
        if status < 400:
            return
        if status in (401, 403):
            log.warning("midjourney-proxy refused the mj-api-secret (HTTP %d)", status)
            raise UpstreamError("midjourney-proxy refused the secret", kind="auth", status=status)
        if status >= 500:
            raise UpstreamUnavailable(f"midjourney-proxy HTTP {status}", status=status)
        raise UpstreamError(f"midjourney-proxy HTTP {status}", kind="rejected", status=status)


def _json(resp: httpx.Response) -> Any:
    if not resp.content:
        return None
    try:
        return resp.json()
    except ValueError:
        return None


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1
