"""How the demo speaks: one module, so that `python -m gpuops_cli.demo` and the parts it imports raise and
catch the same DemoFailed (run as __main__, demo.py's own classes would be a second copy)."""
from __future__ import annotations


class DemoFailed(RuntimeError):
    """A step of the demo did not do what it says."""


def say(text: str = "") -> None:
    print(text, flush=True)


def step(title: str) -> None:
    say(f"\n== {title}")


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailed(what)
    say(f"   ok: {what}")
