"""A private Mosquitto from the project's own ``mosquitto.conf``, on a free port.

Used by ``make demo``, the tests and the benchmarks: the same broker configuration the product
ships, with only the listener port and the persistence folder rewritten.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

__all__ = ["LocalBroker", "find_mosquitto", "free_port", "repo_config"]

_INSTALL_HINT = "mosquitto is not installed: install it with `apt-get install mosquitto`"


def find_mosquitto() -> str:
    """Path of the mosquitto binary (Debian puts it in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto") or shutil.which(
        "mosquitto", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    )
    if not found:
        raise FileNotFoundError(_INSTALL_HINT)
    return found


def repo_config() -> Path:
    """The project's mosquitto.conf (beside the package in a checkout)."""
    return Path(__file__).resolve().parent.parent / "mosquitto.conf"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalBroker:
    """Start (and restart) Mosquitto with the repo's config in ``workdir`` on ``port``."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        config: Path | None = None,
        extra: str = "",
    ) -> None:
        """``extra`` lines are appended to the config (tests that need a setting of their own)."""
        self.workdir = workdir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        text = (config or repo_config()).read_text()
        text, n = re.subn(r"(?m)^listener\s+\d+.*$", f"listener {self.port} 127.0.0.1", text)
        if n != 1:
            raise ValueError("mosquitto.conf must have exactly one `listener` line")
        text = re.sub(
            r"(?m)^persistence_location\s+.*$", f"persistence_location {workdir / 'data'}/", text
        )
        if os.geteuid() == 0:
            # Started as root, mosquitto becomes user `mosquitto`, who cannot write our folder:
            # persistence would fail silently ("Permission denied" at each save).
            text += "\n# Added by LocalBroker: stay the user who owns the data folder.\nuser root\n"
        if extra:
            text += "\n# Added by LocalBroker for this run.\n" + extra + "\n"
        self.config_path.write_text(text)

    def start(self, timeout: float = 10.0) -> LocalBroker:
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [find_mosquitto(), "-c", str(self.config_path)],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log_path.read_text()[-2000:]}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop(signal.SIGKILL)  # nobody will call stop() on a broker that never started
        raise TimeoutError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the broker (SIGTERM saves its persistence file; SIGKILL loses the unsaved)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(sig)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
