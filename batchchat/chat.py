"""A conversation with a model, one turn at a time: what ``batchchat chat`` drives.

The history is the conversation: each turn sends every earlier message, as in Together's
multi-turn example. A turn that fails leaves the history as it was, so the user can ask again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .client import ChatClient
from .errors import JobError
from .job import Job
from .records import ChatRequest, ChatResult
from .retry import with_retries


class Conversation:
    def __init__(self, job: Job, client: ChatClient) -> None:
        self.job = job
        self.client = client
        self.messages: list[dict[str, Any]] = []
        if job.prompt.system:
            self.messages.append({"role": "system", "content": job.prompt.system})

    async def ask(
        self,
        text: str,
        on_text: Callable[[str], None] | None = None,
        on_retry: Callable[[], None] | None = None,
    ) -> ChatResult:
        """Send ``text`` after the history; raises the last RequestError if every attempt fails."""
        turn = {"role": "user", "content": text}
        request = ChatRequest(
            row=0, key="", model=self.job.model, messages=(*self.messages, turn), params=self.job.params
        )

        async def attempt() -> ChatResult:
            return await self.client.complete(request, on_text)

        done = await with_retries(attempt, self.job.retry.max_attempts, on_retry=on_retry)
        if done.error is not None:
            raise done.error
        assert done.result is not None
        self.messages += [turn, {"role": "assistant", "content": done.result.content or ""}]
        return done.result

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
