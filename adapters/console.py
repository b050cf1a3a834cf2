"""`creditbot chat`: the bot in a terminal, with the same core, commands and billing.

The user is the local account "console:local", granted DEMO_CREDITS once. Without an
OPENAI_API_KEY the CLI (cli/run.py) starts the simulated upstream in-process and points both
clients at it before the console starts. Interactive: replies stream as they come and
Ctrl-C stops a reply (billed up to the stop). Piped (stdin not a terminal): one line in, the
whole reply out, so a session can be scripted.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import uuid
from typing import TextIO

from billing.money import MILLI_PER_CREDIT, format_credits
from bot.api import CoreAPI
from bot.assemble import assemble
from bot.events import Delivery, Event, FinalText, ImageResult, Notice, Progress, TextDelta
from bot.settings import Settings

PLATFORM = "console"
USER = "local"
QUIT = ("/quit", "/exit")


class Console:
    """Reads lines, hands them to the core as messages, prints what comes back."""

    def __init__(self, core: CoreAPI, out: TextIO, *, interactive: bool) -> None:
        self.core = core
        self.out = out
        self.interactive = interactive
        self.session = uuid.uuid4().hex[:12]
        self.count = 0
        self.buttons: dict[str, str] = {}  # "U1" -> action data of the last image

    def next_id(self) -> str:
        self.count += 1
        return f"{self.session}-{self.count}"

    def write(self, text: str = "", end: str = "\n") -> None:
        self.out.write(text + end)
        self.out.flush()

    async def sink(self, delivery: Delivery) -> None:
        """Events that arrive on their own (an image resumed after a restart)."""
        self.show(delivery.event, streamed=False)

    async def say(self, line: str) -> None:
        """One line typed by the user: a button label, or a message."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        handler_set = False
        if self.interactive:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signal.SIGINT, stop.set)
                handler_set = True
        try:
            label = line.strip().upper()
            if label in ("R", "REROLL", "🔄"):
                label = "🔄"
            if label in self.buttons:
                events = self.core.press(
                    PLATFORM, USER, USER, self.buttons[label], message_id=self.next_id()
                )
            else:
                from bot.events import Message

                msg = Message(PLATFORM, USER, USER, self.next_id(), line)
                events = self.core.handle(msg, stop=stop)
            streamed = False
            async for event in events:
                if isinstance(event, TextDelta):
                    if self.interactive:
                        self.write(event.text, end="")
                        streamed = True
                    continue
                self.show(event, streamed=streamed)
                streamed = False
        finally:
            if handler_set:
                loop.remove_signal_handler(signal.SIGINT)

    def show(self, event: Event, *, streamed: bool) -> None:
        if isinstance(event, FinalText):
            if streamed:
                self.write(" [stopped]" if event.stopped else "")
            else:
                self.write(event.text + (" [stopped]" if event.stopped else ""))
        elif isinstance(event, Notice):
            self.write(f"[{event.kind}] {event.text}")
        elif isinstance(event, Progress):
            if self.interactive:
                self.write(f"… {event.text}")
        elif isinstance(event, ImageResult):
            self.write(f"[image] {event.url}\n{event.caption}")
            if event.actions:
                self.buttons = {a.label: a.data for a in event.actions}
                labels = " ".join(a.label for a in event.actions)
                self.write(f"Buttons: {labels} (type one, e.g. U1; R for reroll)")


async def run_console(
    settings: Settings,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """The console chat until EOF or /quit."""
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    interactive = stdin.isatty()
    core = await assemble(settings)
    try:
        await core.start()
        console = Console(core, stdout, interactive=interactive)
        core.set_sink(PLATFORM, console.sink)
        if await core.grant_trial(PLATFORM, USER, settings.demo_credits * MILLI_PER_CREDIT):
            credits = format_credits(settings.demo_credits * MILLI_PER_CREDIT)
            print(f"{credits} demo credits granted to the console account.", file=stderr)
        if interactive:
            print("Type a message, /help for commands, /quit to leave.", file=stderr, flush=True)
        loop = asyncio.get_running_loop()
        while True:
            if interactive:
                stdout.write("> ")
                stdout.flush()
            line = await loop.run_in_executor(None, stdin.readline)
            if not line:
                break
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if line.strip().lower() in QUIT:
                break
            await console.say(line)
        return 0
    finally:
        await core.close()
