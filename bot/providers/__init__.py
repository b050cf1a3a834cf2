"""Clients for the upstreams the bot resells: OpenAI chat and midjourney-proxy.

They report what happened (text, usage, task status, typed errors); the core decides what it
costs. `simulator/` (the development server) speaks both protocols locally for tests and dry
runs. Beside them, `wechatpay` speaks WeChat Pay's protocol, the payment provider (imported on
its own).
"""

from bot.providers.errors import (
    ContextLengthExceeded,
    QuotaExceeded,
    RateLimited,
    StreamCut,
    UpstreamError,
    UpstreamUnavailable,
)
from bot.providers.midjourney import MidjourneyClient, MjTask, SubmitResult, TaskNotFound
from bot.providers.openai import Delta, OpenAIClient, Usage

__all__ = [
    "ContextLengthExceeded",
    "Delta",
    "MidjourneyClient",
    "MjTask",
    "OpenAIClient",
    "QuotaExceeded",
    "RateLimited",
    "StreamCut",
    "SubmitResult",
    "TaskNotFound",
    "UpstreamError",
    "UpstreamUnavailable",
    "Usage",
]
