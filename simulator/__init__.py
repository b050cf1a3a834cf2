"""A simulated upstream: OpenAI chat completions and midjourney-proxy on one local port.

Tests, demos and operators' dry runs talk to it instead of the real services. Replies are
deterministic (derived from a hash of the prompt), usage is counted with `billing.tokens` (the
same counts the bot bills), and faults come on request: a marker such as `[[fault:cut]]` in the
last user message or the Midjourney prompt, or `POST /_sim/fault {"fault": "500", "count": 2}`
to arm one for the next requests. `GET /_sim/stats` tells tests what was asked.

Markers: `[[fault:500]]`, `[[fault:429]]` (rate_limit_exceeded, Retry-After 0),
`[[fault:quota]]`, `[[fault:cut]]` (connection dropped after some deltas, no usage),
`[[fault:nousage]]`, `[[fault:stream_error]]`, `[[fault:context]]`, `[[fault:slow]]` (one delta,
then silence), `[[tokens:N]]` (a reply of exactly N tokens); Midjourney: `[[fault:fail]]`,
`[[fault:slow]]` (never finishes), `[[fault:queue_full]]` (23), `[[fault:banned]]` (24),
`[[fault:exists]]` (21), `[[fault:queued]]` (22).
"""

from simulator.midjourney import MJ_FAULTS
from simulator.openai import DEFAULT_MODELS, OPENAI_FAULTS
from simulator.replies import reply_text
from simulator.server import Simulator, start_simulator

__all__ = [
    "DEFAULT_MODELS",
    "MJ_FAULTS",
    "OPENAI_FAULTS",
    "Simulator",
    "reply_text",
    "start_simulator",
]
