"""deploy/: the container image recipe, compose file, systemd unit and example settings.

Static checks that need no container engine; the image itself is built and run by
deploy/build-image.sh (see deploy/README.md).
"""

from __future__ import annotations

import configparser
import hashlib
import http.server
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import Settings, load_settings
from gateway.manifest import load_bundle

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("EDGEGW_"):
            monkeypatch.delenv(key)


# -- Containerfile --------------------------------------------------------------------------------
def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, args = line.partition(" ")
        out.append((word.upper(), args.strip()))
    assert not pending, "Containerfile ends inside a continued line"
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for ins in _instructions(DEPLOY / "Containerfile"):
        if ins[0] == "FROM":
            stages.append([])
        assert stages, f"{ins[0]} before the first FROM"
        stages[-1].append(ins)
    return stages


def _commands() -> str:
    """The Containerfile without its comments."""
    return "\n".join(f"{ins} {args}" for ins, args in _instructions(DEPLOY / "Containerfile"))


def _final(name: str) -> str:
    values = [args for ins, args in _stages()[-1] if ins == name]
    assert values, f"the final stage has no {name}"
    return values[-1]


def test_containerfile_bases_on_debian_slim_only() -> None:
    names: set[str] = set()
    for stage in _stages():
        base, *alias = stage[0][1].split()
        assert base == "debian:bookworm-slim" or base in names, f"unexpected base {base}"
        if alias:
            assert alias[0].upper() == "AS"
            names.add(alias[1])
    text = _commands()
    for arch_specific in ("amd64", "x86_64", "x86-64", "aarch64", "arm64", "--platform"):
        assert arch_specific not in text, f"Containerfile names {arch_specific}: multi-arch only"


def test_containerfile_installs_runtime_dependencies_only() -> None:
    text = _commands()
    assert "[dev]" not in text
    assert "[train]" not in text
    assert "optional-dependencies" not in text
    # This host's build workarounds belong to deploy/build-image.sh, never to the image.
    assert "/usr/local/share/ca-certificates" not in text
    assert "pip.conf" not in text


def test_containerfile_copies_only_paths_that_exist() -> None:
    for stage in _stages():
        for ins, args in stage:
            if ins == "COPY" and not args.startswith("--from"):
                *sources, _dest = args.split()
                for src in sources:
                    assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"


def test_container_runs_as_a_fixed_non_root_user() -> None:
    user = _final("USER").split(":")[0]
    assert user not in ("root", "0", "")
    text = _commands()
    uid = re.search(rf"useradd\b[^\n]*--uid (\d+)[^\n]*\b{user}\b", text)
    assert uid is not None, f"the user {user} is not created with a fixed --uid"
    assert int(uid.group(1)) >= 1000


def test_container_entrypoint_volume_port_and_stop_signal() -> None:
    assert json.loads(_final("ENTRYPOINT")) == ["edge-gateway"]
    assert json.loads(_final("CMD")) == ["run"]
    assert _final("STOPSIGNAL") == "SIGTERM"
    assert "9108" in _final("EXPOSE").split()
    assert "/var/lib/edge-gateway" in json.loads(_final("VOLUME"))
    assert not [args for ins, args in _stages()[-1] if ins == "ENV" and "EDGEGW_" in args], (
        "an EDGEGW_ variable in the image would override the operator's config file"
    )


def test_onnx_runtime_telemetry_is_off_in_the_image_and_the_unit() -> None:
    env = " ".join(args for ins, args in _stages()[-1] if ins == "ENV")
    assert re.search(r"\bORT_DISABLE_TELEMETRY=1\b", env)
    assert "ORT_DISABLE_TELEMETRY=1" in _unit_values("Service", "Environment")


def _healthcheck_command() -> list[str]:
    args = _final("HEALTHCHECK")
    options, sep, command = args.partition(" CMD ")
    assert sep, "HEALTHCHECK has no CMD"
    assert "--interval" in options
    argv = json.loads(command)
    assert isinstance(argv, list)
    assert argv[0] == "python3", "the image has no curl: the health check runs python"
    return [str(a) for a in argv]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[http.server.HTTPServer, type[_Health]]]:
    handler = type("Handler", (_Health,), {})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_passes_on_200_and_fails_on_503(
    health_server: tuple[http.server.HTTPServer, type[_Health]], status: int, healthy: bool
) -> None:
    server, handler = health_server
    handler.status = status
    argv = _healthcheck_command()
    env = {**os.environ, "EDGEGW_HTTP__PORT": str(server.server_address[1])}
    done = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=30)
    assert (done.returncode == 0) is healthy, done.stderr.decode()


def test_healthcheck_defaults_to_the_default_http_port() -> None:
    assert "'9108'" in " ".join(_healthcheck_command())
    assert Settings().http.port == 9108


# -- systemd unit ---------------------------------------------------------------------------------
def _unit() -> configparser.RawConfigParser:
    unit = configparser.RawConfigParser(strict=False)  # systemd allows repeated keys
    unit.optionxform = str  # systemd keys are case-sensitive
    unit.read_string((DEPLOY / "edge-gateway.service").read_text())
    return unit


def _unit_values(section: str, key: str) -> list[str]:
    """Every value of a key that systemd accumulates (Environment=), in order."""
    values: list[str] = []
    current = ""
    for line in (DEPLOY / "edge-gateway.service").read_text().splitlines():
        if m := re.fullmatch(r"\[(\w+)\]", line.strip()):
            current = m.group(1)
        elif current == section and line.startswith(f"{key}="):
            values.extend(shlex.split(line.partition("=")[2]))
    return values


def test_systemd_unit_has_the_required_settings() -> None:
    unit = _unit()
    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    for key in ("After", "Wants"):
        assert {"mosquitto.service", "network-online.target"} <= set(unit["Unit"][key].split())
    s = unit["Service"]
    assert shlex.split(s["ExecStart"]) == [
        "/opt/edge-gateway/bin/edge-gateway",
        "run",
        "-c",
        "/etc/edge-gateway/gateway.toml",
    ]
    assert s["Restart"] == "always"
    assert 1 <= int(s["RestartSec"]) <= 60
    assert s["User"] not in ("root", "0")
    assert s["StateDirectory"] == "edge-gateway"
    assert s["KillSignal"] == "SIGTERM"
    assert 5 <= int(s["TimeoutStopSec"]) <= 120
    hardening = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
    }
    assert {k: s.get(k) for k in hardening} == hardening
    assert s["CapabilityBoundingSet"] == ""
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_unit_state_directory_is_the_default_data_dir() -> None:
    state = Path("/var/lib") / _unit()["Service"]["StateDirectory"]
    assert state == Settings().gateway.data_dir


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    # verify insists that ExecStart exists: point it at this environment's entry point.
    exe = Path(sys.executable).parent / "edge-gateway"
    assert exe.exists(), f"{exe} missing: install the package (pip install -e .)"
    text = (DEPLOY / "edge-gateway.service").read_text()
    unit = tmp_path / "edge-gateway.service"
    unit.write_text(text.replace("/opt/edge-gateway/bin/edge-gateway", str(exe)))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    ours = [line for line in done.stderr.splitlines() if "edge-gateway.service" in line]
    assert done.returncode == 0, done.stderr
    assert not ours, "\n".join(ours)


# -- example settings -----------------------------------------------------------------------------
EXAMPLE = DEPLOY / "gateway.toml.example"
# Values the example sets on purpose to something other than the default (none today).
DELIBERATE: dict[str, dict[str, object]] = {}


def test_example_settings_load_and_are_the_defaults() -> None:
    example = load_settings(EXAMPLE).model_dump()
    expected = Settings().model_dump()
    for section, values in DELIBERATE.items():
        expected[section].update(values)
    assert example == expected


def test_example_settings_document_every_key() -> None:
    documented: set[tuple[str, str]] = set()
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        if m := re.fullmatch(r"\[(\w+)\]", line):
            section = m.group(1)
        elif m := re.fullmatch(r"(?:# )?(\w+) = .*", line):
            documented.add((section, m.group(1)))
    known = {
        (name, key)
        for name, field in Settings.model_fields.items()
        for key in field.annotation.model_fields
    }
    assert documented == known


# -- compose --------------------------------------------------------------------------------------
def test_compose_opens_the_listener_it_expects_in_mosquitto_conf() -> None:
    compose = (DEPLOY / "compose.yaml").read_text()
    conf = (ROOT / "mosquitto.conf").read_text()
    assert "../mosquitto.conf:/mosquitto/config/mosquitto.conf:ro" in compose
    # compose rewrites these two lines at start; if they change, compose must follow.
    assert len(re.findall(r"(?m)^listener 1883 127\.0\.0\.1$", conf)) == 1
    assert len(re.findall(r"(?m)^persistence_location ", conf)) == 1
    assert "s/^listener 1883 127\\.0\\.0\\.1$$/listener 1883/" in compose
    assert "EDGEGW_MQTT__HOST: mosquitto" in compose
    assert "EDGEGW_GATEWAY__ID:" in compose
    assert compose.count("restart: unless-stopped") == 2
    assert "gateway-data:/var/lib/edge-gateway" in compose


def test_build_script_is_valid_bash() -> None:
    script = DEPLOY / "build-image.sh"
    assert os.access(script, os.X_OK), "deploy/build-image.sh must be executable"
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# -- the wheel carries the bundled model ----------------------------------------------------------
@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out)]
    if importlib.util.find_spec("hatchling") is not None:
        cmd.append("--no-build-isolation")  # offline: the build backend is already here
    # else pip fetches the build backend (hatchling) from the package index.
    cmd.append(str(ROOT))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.fail(
            "cannot build the wheel, so the bundled model in it is unchecked.\n"
            f"$ {shlex.join(cmd)}\n{done.stdout}{done.stderr}\n"
            "Install hatchling in this environment or let pip reach the package index."
        )
    (found,) = out.glob("edge_gateway-*.whl")
    return found


@pytest.mark.slow
def test_wheel_contains_the_bundled_model(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("gateway/_bundled_model/manifest.json"))
        model = zf.read("gateway/_bundled_model/" + manifest["model"]["file"])
        entry_points = zf.read(
            next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        ).decode()
    assert hashlib.sha256(model).hexdigest() == manifest["model"]["sha256"]
    assert len(model) == manifest["model"]["size"]
    assert model == (ROOT / "models/default/model.onnx").read_bytes()
    assert re.search(r"(?m)^edge-gateway = gateway\.cli:main$", entry_points)
    assert not [n for n in names if n.startswith(("tests/", "bench/", "models/", ".venv/"))]


@pytest.mark.slow
def test_installed_wheel_finds_its_bundled_model(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    probe = (
        "import gateway, json\n"
        "from gateway.manifest import default_bundle_dir, load_bundle\n"
        "b = load_bundle(default_bundle_dir())\n"
        "print(json.dumps([gateway.__file__, str(b.directory), b.manifest.label]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    package, directory, label = json.loads(done.stdout)
    assert Path(package).parent == site / "gateway", "imported the checkout, not the wheel"
    assert Path(directory) == site / "gateway" / "_bundled_model"
    assert label == load_bundle(ROOT / "models" / "default").manifest.label
