"""Run every benchmark module in bench/ that has a `main`, or the one named on the command line."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
from collections.abc import Callable
from typing import Any

import bench
from bot import runtime  # the product's event loop (uvloop where installed)


def _modules() -> list[str]:
    found = pkgutil.iter_modules(bench.__path__)
    return sorted(m.name for m in found if not m.ispkg and not m.name.startswith("_"))


def _call(main: Callable[..., Any], argv: list[str] | None) -> None:
    takes_args = bool(inspect.signature(main).parameters)
    result = main(argv) if takes_args else main()
    if inspect.iscoroutine(result):
        runtime.run(result)


def run(args: list[str]) -> int:
    names = _modules()
    if args and args[0] in ("-h", "--help"):
        print(
            "usage: python -m bench [NAME [ARGS...]]\nbenchmarks: "
            + ", ".join(n for n in names if hasattr(importlib.import_module(f"bench.{n}"), "main"))
        )
        return 0
    if args:
        name, rest = args[0], args[1:]
        if name not in names:
            print(f"no benchmark {name!r}; have: {', '.join(names)}", file=sys.stderr)
            return 2
        _call(importlib.import_module(f"bench.{name}").main, rest)
        return 0
    for name in names:
        main = getattr(importlib.import_module(f"bench.{name}"), "main", None)
        if callable(main):
            print(f"\n== bench.{name} ==", flush=True)
            _call(main, [] if inspect.signature(main).parameters else None)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
