"""A conversation with a model, one turn at a time: what ``batchchat chat`` drives.

The history is the conversation: each turn sends every earlier message, as in Together's
multi-turn example. A turn is asked as a run asks a request (``unit.Asker``: retries, and a stop
for an endpoint that cannot answer at all); a turn that fails leaves the history as it was, so
the user can ask again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import BAD_RESPONSE, JobError, RequestError
from ..core.records import ChatRequest, ChatResult
from ..execute.unit import Asker, Dialogue, Send
from ..job.spec import Params


class Conversation:
    def __init__(self, send: Send, model: str, params: Params = (), *, system: str | None = None,
                 max_attempts: int = 6, on_retry: Callable[[RequestError], None] | None = None) -> None:  # fmt: skip
        self.model = model
        self.params = params
        self.dialogue = Dialogue([{"role": "system", "content": system}] if system else [])
        self.asker = Asker(send, max_attempts=max_attempts, on_retry=on_retry, stop_unreachable=False)

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.dialogue.messages

    @property
    def started(self) -> bool:
        """Whether any turn was answered."""
        return any(message["role"] == "assistant" for message in self.messages)

    async def ask(self, text: str) -> ChatResult:
        """Send ``text`` after the history; raises the last RequestError if every attempt fails,
        FatalAPIError if no request could succeed (a refused key, nothing answering)."""
        request = ChatRequest(row=0, key="", model=self.model, messages=self.dialogue.asking(text), params=self.params)
        asked = await self.asker.ask(request, checked=False)
        if asked.result is None:
            assert asked.error is not None
            raise asked.error
        if asked.result.problem is not None:  # an answer with nothing to read: paid, and not asked again
            raise RequestError(BAD_RESPONSE, asked.result.problem, status=200)
        self.dialogue.answered(text, asked.result.content)
        return asked.result

    def save(self, path: Path) -> None:
        """Append the conversation as one JSONL row, ``{"messages": [...]}``, which
        ``batchchat run -i FILE --messages-column messages`` reads back."""
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"messages": self.messages}, ensure_ascii=False) + "\n")


def check_save_path(path: Path) -> None:
    if path.suffix.lower() != ".jsonl":
        raise JobError(f"--save {path}: the conversation is saved as JSON Lines; give a .jsonl file")
    if not path.parent.is_dir():
        raise JobError(f"--save {path}: the folder {path.parent} does not exist")
