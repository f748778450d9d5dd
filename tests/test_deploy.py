"""The Dockerfile, deploy/compose.yaml and the dependency lock, checked without a container
engine (none runs here): the structure, that every command and setting they name exists, that
the lock pins exactly what these tests run with, and that it installs with --require-hashes."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import sys
import tempfile
import tomllib
from asyncio.subprocess import PIPE, STDOUT
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from notifier.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = {"migrate", "api", "worker-1", "worker-2"}
REQUIRED_ENV = {
    "NOTIFIER_DATABASE_URL",
    "NOTIFIER_REDIS_URL",
    "NOTIFIER_PUBLIC_URL",
    "NOTIFIER_WEBHOOK_SECRET",
    "NOTIFIER_LINK_SECRET",
}
# An image reference pinned to an exact release (x.y.z) or a digest.
PINNED = re.compile(r"^[a-z0-9./-]+(:\d+\.\d+(\.\d+)?[A-Za-z0-9.-]*)?(@sha256:[0-9a-f]{64})?$")


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    return data


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) per Dockerfile instruction, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "deploy" / "requirements.lock").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)", line)
        if m:
            pins[_norm(m.group(1))] = m.group(2)
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def setting_exists(env_name: str) -> bool:
    """Whether ``NOTIFIER_A__B`` names a field of Settings (nested through ``__``)."""
    path = env_name.removeprefix("NOTIFIER_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if i < len(path) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


async def cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "notifier", *args, stdout=PIPE, stderr=STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def test_compose_has_the_services_images_volumes_and_health_checks() -> None:
    c = compose()
    services = c["services"]
    assert set(services) == {"postgres", "redis"} | APP_SERVICES
    for name in ("postgres", "redis"):
        image = services[name]["image"]
        assert PINNED.match(image) and ":" in image and "latest" not in image, image
        assert services[name]["healthcheck"]["test"][0] == "CMD"
        [volume] = services[name]["volumes"]
        assert volume.split(":")[0] in c["volumes"]
    assert "noeviction" in services["redis"]["command"]
    for name in APP_SERVICES:
        s = services[name]
        assert s["build"]["dockerfile"] == "Dockerfile"
        assert (
            ROOT / "deploy" / s["build"]["context"] / s["build"]["dockerfile"]
        ).resolve() == ROOT / "Dockerfile"
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in APP_SERVICES - {"migrate"}:
        s = services[name]
        assert s["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert s["depends_on"]["redis"] == {"condition": "service_healthy"}
        probe = " ".join(s["healthcheck"]["test"])
        port = s["environment"].get("NOTIFIER_WORKER_METRICS_PORT") or s["environment"]["NOTIFIER_PORT"]
        path = "/readyz" if name == "api" else "/healthz"
        assert f"http://127.0.0.1:{port}{path}" in probe, (name, probe)


async def test_compose_commands_are_real_cli_commands() -> None:
    services = compose()["services"]
    commands = {tuple(services[name]["command"]) for name in APP_SERVICES}
    assert commands == {("migrate",), ("serve",), ("worker", "--processes", "1")}
    for command in commands:
        code, out = await cli(*command, "--help")
        assert code == 0, out
    code, _ = await cli("no-such-command", "--help")
    assert code == 2  # the check above can fail


def test_compose_environment_names_real_settings_and_the_required_secrets() -> None:
    services = compose()["services"]
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert REQUIRED_ENV <= set(env), name
        for key, value in env.items():
            assert key.startswith("NOTIFIER_") and setting_exists(key), key
            # Secrets come from the operator's environment, required, never written here.
            if any(word in key for word in ("SECRET", "TOKEN", "PASSWORD")):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), (key, value)
    assert not setting_exists("NOTIFIER_NO_SUCH_SETTING")
    assert setting_exists("NOTIFIER_TWILIO__AUTH_TOKEN") and not setting_exists("NOTIFIER_TWILIO__NOPE")
    # The worker health check reaches its metrics server: bound to all interfaces in the container.
    for name in ("worker-1", "worker-2"):
        assert services[name]["environment"]["NOTIFIER_WORKER_METRICS_HOST"] == "0.0.0.0"


def test_compose_runs_two_single_process_workers_and_prometheus_scrapes_each() -> None:
    """Issue 14's "the API and two workers": two worker services of one process each (a worker
    alone starts one per CPU, on ports nothing scrapes), each one's metrics port a target."""
    services = compose()["services"]
    workers = sorted(name for name, s in services.items() if s.get("command", [None])[0] == "worker")
    assert workers == ["worker-1", "worker-2"]
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    [job] = [j for j in scrape["scrape_configs"] if j["job_name"] == "notifier-worker"]
    targets = {t for c in job["static_configs"] for t in c["targets"]}
    for name in workers:
        s = services[name]
        assert s["command"] == ["worker", "--processes", "1"], name
        port = s["environment"]["NOTIFIER_WORKER_METRICS_PORT"]
        assert s["expose"] == [port] and f"{name}:{port}" in targets, (name, targets)
    assert len(targets) == len(workers)


async def test_the_dockerfile_is_pinned_locked_non_root_and_checks_readyz() -> None:
    steps = dockerfile()
    [base] = [args for word, args in steps if word == "FROM"]
    assert PINNED.match(base) and re.search(r":\d+\.\d+\.\d+", base), base
    assert base.startswith(
        f"python:{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}-"
    )
    run = " ".join(args for word, args in steps if word == "RUN")
    assert "--require-hashes" in run and "-r deploy/requirements.lock" in run
    assert "pip install -e" not in run
    copied = [shlex.split(args)[0] for word, args in steps if word == "COPY"]
    for source in copied:
        assert (ROOT / source).exists(), source
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    words = [word for word, _ in steps]
    assert words.index("USER") < words.index("CMD")
    [health] = [args for word, args in steps if word == "HEALTHCHECK"]
    assert "/readyz" in health and "NOTIFIER_PORT" in health
    for word, args in steps:
        if word in ("ENV", "ARG"):
            assert not re.search(r"(SECRET|TOKEN|PASSWORD)", args), args
    entry = json.loads(next(args for word, args in steps if word == "ENTRYPOINT"))
    assert entry == ["python", "-m", "notifier"]
    cmd = json.loads(next(args for word, args in steps if word == "CMD"))
    code, out = await cli(*cmd, "--help")
    assert code == 0, out
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_the_lock_pins_what_the_tests_run_with() -> None:
    pins = lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        name = _norm(re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0])
        assert name in pins, name
    for name, pinned in pins.items():
        assert version(name) == pinned, (name, pinned, version(name))
    text = (ROOT / "deploy" / "requirements.lock").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text[text.index("\n" + min(pins)) + 1 :])
    assert all("--hash=sha256:" in e for e in entries if "==" in e)


@pytest.mark.timeout(300)
async def test_the_lock_installs_with_hashes_required() -> None:
    """pip resolves and hash-checks every pinned wheel for this platform (no install)."""
    with tempfile.TemporaryDirectory() as target:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--no-deps",
            "--require-hashes",
            "--target",
            target,
            "-r",
            str(ROOT / "deploy" / "requirements.lock"),
            stdout=PIPE,
            stderr=STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 280)
    text = out.decode()
    assert proc.returncode == 0, text[-3000:]
    assert "Would install" in text
