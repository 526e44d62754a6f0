"""The processes a benchmark starts, each in its own session, measured from /proc.

``Proc`` runs a command and reads its CPU time (utime + stime, all threads, or per thread), its
peak RSS (VmHWM, resettable) and its log; ``Receiver`` drives ``bench/raw.py`` (counts, latency
samples) over its stdin and stdout; ``Cloud`` is the local OCI stand-in
(``python -m tests.ocistandin``) with an API key of its own, for the gateway's uplink.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import IO, Any

import orjson
from latency import log_problems, log_tail, peak_rss, process_cpu_seconds, reset_peak_rss
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
STREAM = "ocid1.stream.oc1.iad.amaaaaaabenchcomparestream"
_REPLY_TIMEOUT = 60.0


class Proc:
    """A process started here (its own session), measured from /proc, stopped on the way out."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        pipes: bool = False,
    ) -> None:
        self.name = name
        self.log_path = log
        with log.open("ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=env,
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else out,
                stderr=out,
                text=pipes,
                start_new_session=True,
            )
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def stdin(self) -> IO[str]:
        assert self._proc.stdin is not None
        return self._proc.stdin

    @property
    def stdout(self) -> IO[str]:
        assert self._proc.stdout is not None
        return self._proc.stdout

    def check_alive(self) -> None:
        if self._proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self._proc.returncode}:\n{self.log_tail()}"
            )

    def read_line(self, timeout: float) -> dict[str, Any]:
        """The next JSON line on the process's stdout."""
        ready, _, _ = select.select([self.stdout], [], [], timeout)
        line = self.stdout.readline() if ready else ""
        if not line:
            self.check_alive()
            raise TimeoutError(f"{self.name} did not answer within {timeout:g} s")
        return orjson.loads(line)

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.pid)

    def threads_cpu(self) -> dict[int, float]:
        """CPU seconds by thread id (Python names its threads only inside the process)."""
        out: dict[int, float] = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out[int(task.name)] = process_cpu_seconds_of(task / "stat")
        return out

    def peak_rss(self) -> int:
        return peak_rss(self.pid)

    def reset_peak_rss(self) -> None:
        reset_peak_rss(self.pid)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (a graceful shutdown), then SIGKILL after ``timeout``."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self.exit_code = self._proc.returncode
        for pipe in (self._proc.stdin, self._proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def log_problems(self) -> list[str]:
        return log_problems(self.log_path, self.name)


def process_cpu_seconds_of(stat: Path) -> float:
    """utime + stime from a /proc stat file (a process's or one thread's)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Receiver(Proc):
    """``bench/raw.py``: counts what arrives on ``topic``; keeps samples for latency."""

    def __init__(self, port: int, topic: str, qos: int, log: Path, name: str) -> None:
        cmd = [sys.executable, str(BENCH / "raw.py"), "--port", str(port)]
        super().__init__(name, [*cmd, "--topic", topic, "--qos", str(qos)], log, pipes=True)

    def wait_ready(self) -> None:
        if self.read_line(15.0).get("event") != "ready":
            raise RuntimeError(f"{self.name} did not subscribe:\n{self.log_tail()}")

    def ask(self, command: str) -> dict[str, Any]:
        self.stdin.write(command + "\n")
        self.stdin.flush()
        return self.read_line(_REPLY_TIMEOUT)

    def readings(self) -> int:
        return int(self.ask("stats")["readings"])

    def stop(self, timeout: float = 20.0) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stdin.write("quit\n")
            self.stdin.flush()
        super().stop(timeout)


class Cloud(Proc):
    """The local OCI stand-in (``python -m tests.ocistandin``) with an API key of its own."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "tests.ocistandin", "--data", str(workdir / "data")]
        cmd += ["--credentials", str(workdir / "oci")]
        super().__init__("ocistandin", cmd, workdir / "ocistandin.log", pipes=True)
        self.endpoint = self.config_file = ""
        self.port = 0

    def wait_listening(self) -> None:
        info = self.read_line(30.0)
        self.endpoint = str(info["endpoint"])
        self.port = int(info["port"])
        self.config_file = str(info["config_file"])

    def gateway_env(self) -> dict[str, str]:
        """The gateway's uplink settings for this stand-in (as ``make demo`` sets them)."""
        return {
            "EDGEGW_UPLINK__ENDPOINT": self.endpoint,
            "EDGEGW_UPLINK__STREAM_ID": STREAM,
            "EDGEGW_UPLINK__OCI_CONFIG": self.config_file,
            "EDGEGW_UPLINK__OCI_PROFILE": "DEFAULT",
        }

    def stats(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/_standin/stats"
        with urllib.request.urlopen(url, timeout=10) as resp:
            return orjson.loads(resp.read())


def scrape(http_port: int) -> dict[str, float]:
    """A gateway's Prometheus samples, summed over labels, by sample name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals
