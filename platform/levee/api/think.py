"""Split a reasoner's `<think>…</think>` out of its output as it streams.

Deltas arrive in arbitrary pieces, so a tag may be cut anywhere; text that could still become a tag
is held back until it cannot. A reasoning template opens `<think>` in the prompt itself (`opened`):
the output then starts inside the reasoning (a repeated `<think>` at its start is dropped).
"""
from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"


class ThinkSplitter:
    def __init__(self, *, opened: bool = False) -> None:
        self._pending = ""
        self._opened = opened
        self._state = "start"  # start → (thinking →) answer
        self._strip = False  # drop newlines that directly follow a tag, however they are cut

    def push(self, text: str) -> tuple[str, str]:
        """Feed a delta; returns (reasoning, content) that are now certain."""
        self._pending += text
        reasoning = content = ""
        while True:
            if self._state == "start":
                stripped = self._pending.lstrip()
                if stripped.startswith(OPEN):
                    self._pending = stripped[len(OPEN):]
                    self._state, self._strip = "thinking", True
                    continue
                if OPEN.startswith(stripped):  # could still become <think>
                    return reasoning, content
                if self._opened:
                    self._state, self._strip = "thinking", True
                    continue
                self._state = "answer"
                continue
            if self._strip:
                self._pending = self._pending.lstrip("\n")
                if not self._pending:
                    return reasoning, content
                self._strip = False
            if self._state == "thinking":
                at = self._pending.find(CLOSE)
                if at >= 0:
                    reasoning += self._pending[:at]
                    self._pending = self._pending[at + len(CLOSE):]
                    self._state, self._strip = "answer", True
                    continue
                keep = _partial_suffix(self._pending, CLOSE)
                reasoning += self._pending[: len(self._pending) - keep]
                self._pending = self._pending[len(self._pending) - keep:]
                return reasoning, content
            content += self._pending
            self._pending = ""
            return reasoning, content

    def flush(self) -> tuple[str, str]:
        rest, self._pending = self._pending, ""
        thinking = self._state == "thinking" or (self._state == "start" and self._opened)
        return (rest, "") if thinking else ("", rest)


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of tag."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
