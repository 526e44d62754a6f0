"""The site's model cache: the last good versions, downloads in progress, and what was refused.

``<root>/<version>/`` holds a version that passed every check; ``<root>/.incoming/<version>/``
a download in progress (a broken one resumes there); ``state.json`` the good versions in the
order they served (the newest is what the gateway boots on, without the network) and the
versions refused for good, with why.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import orjson

from .scoring import Scorer

__all__ = ["ModelCache"]

log = logging.getLogger(__name__)

_STATE = "state.json"
_INCOMING = ".incoming"


class ModelCache:
    """``<root>/<version>/`` holds good versions; ``<root>/.incoming/<version>/`` downloads in
    progress (they resume there); ``state.json`` the good versions in the order they served and
    the versions refused for good, with why."""

    def __init__(self, root: Path, keep: int) -> None:
        self.root = root
        self.keep = keep
        self.good: list[str] = []
        self.bad: dict[str, str] = {}

    def open(self) -> ModelCache:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            state = orjson.loads((self.root / _STATE).read_bytes())
            self.good = [v for v in state.get("good", []) if (self.root / v).is_dir()]
            self.bad = dict(state.get("bad", {}))
        except FileNotFoundError:
            pass
        except (orjson.JSONDecodeError, AttributeError, TypeError) as exc:
            log.warning(
                "model cache state unreadable, starting afresh file=%s error=%s", _STATE, exc
            )
        return self

    def incoming(self, version: str) -> Path:
        path = self.root / _INCOMING / version
        path.mkdir(parents=True, exist_ok=True)
        return path

    def path(self, version: str) -> Path:
        return self.root / version

    def admit(self, version: str) -> Path:
        """Move a validated download into the cache; it counts as good once it has served."""
        final = self.path(version)
        incoming = self.root / _INCOMING / version
        if incoming.is_dir():
            if final.exists():
                shutil.rmtree(final)
            incoming.replace(final)
        return final

    def holds(self, scorer: Scorer) -> bool:
        """Whether ``scorer`` was loaded from this cache (not the bundled default)."""
        return scorer.path.parent.parent == self.root

    def mark_good(self, version: str) -> None:
        if version in self.good:
            self.good.remove(version)
        self.good.append(version)
        self.bad.pop(version, None)
        self._prune()
        self.save()

    def mark_bad(self, version: str, reason: str) -> None:
        self.bad[version] = reason
        if version in self.good:
            self.good.remove(version)
        shutil.rmtree(self.path(version), ignore_errors=True)
        self.save()

    def discard_incoming(self, version: str) -> None:
        shutil.rmtree(self.root / _INCOMING / version, ignore_errors=True)

    def discard(self, version: str) -> None:
        """Remove a version that was admitted but never judged (a superseded candidate)."""
        shutil.rmtree(self.path(version), ignore_errors=True)

    def save(self) -> None:
        # Written, synced, renamed, and the rename synced: after a power cut the gateway boots
        # on the old state or the new one, never on an empty file.
        tmp = self.root / (_STATE + ".tmp")
        with tmp.open("wb") as f:
            f.write(orjson.dumps({"good": self.good, "bad": self.bad}, option=orjson.OPT_INDENT_2))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.root / _STATE)
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _prune(self) -> None:
        """Keep the last ``keep`` good versions; a candidate not yet judged stays."""
        for version in [*self.good[: -self.keep], *self.bad]:
            if version not in self.good[-self.keep :]:
                shutil.rmtree(self.path(version), ignore_errors=True)
        self.good = self.good[-self.keep :]
