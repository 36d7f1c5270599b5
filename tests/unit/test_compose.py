"""Static checks of the Docker packaging: docker-compose.yml, docker/, .dockerignore.

CI has no Docker engine, so nothing here builds or runs a container. Instead the compose file
is parsed and checked against the code it runs: every service's `environment:` holds only
settings its settings class reads (and validates with them), ports are those of the README, every build
context / Dockerfile / target exists, every `depends_on` condition is valid and satisfiable,
the topic job runs the code that creates every topic of the contract (`shared.topics`), and every
topic name the code mentions is one of those. `docker compose config` is used too when it is installed.
The profile `cluster` (a 3-broker KRaft cluster, its topic job, PostgreSQL and services) is checked
the same way: one quorum, replication 3 / min ISR 2, every broker in the bootstrap list.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, cast
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import AliasChoices, AliasPath

from infra.postgres import DATABASES, KEYSTORE_DATABASE, KEYSTORE_OWNER, KEYSTORE_READERS, service_role
from infra.services import SERVICES
from shared.settings import ServiceSettings
from shared.topics import topic_specs

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
README = ROOT / "README.md"

# The services and their ports (README: "make up starts").
PORTS = {"order": 8001, "payment": 8002, "shipping": 8003, "query": 8004}
KAFKA_HOST_PORT = 9092
REQUIRED_ENV = {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "HTTP_HOST", "HTTP_PORT"}
TOPIC_JOB = "kafka-topics"
AUTH_JOB = "auth-keys"  # creates the development signing key in the volume the services mount
AUTH_MOUNT = "auth-keys:/auth:ro"
UI_SERVICE = "kafka-ui"
WEB_UI = "ui"  # the project's own web UI (services/ui): no database, no Kafka
WEB_UI_PORT = 8000

DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
TOP_LEVEL_KEYS = {"version", "name", "include", "services", "networks", "volumes", "secrets", "configs", "models"}
# Service keys of the Compose Specification (a subset would do: anything else is a typo).
SERVICE_KEYS = {
    "annotations",
    "attach",
    "build",
    "blkio_config",
    "cap_add",
    "cap_drop",
    "cgroup",
    "cgroup_parent",
    "command",
    "configs",
    "container_name",
    "cpu_count",
    "cpu_percent",
    "cpu_shares",
    "cpu_quota",
    "cpu_period",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpus",
    "cpuset",
    "credential_spec",
    "depends_on",
    "deploy",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "domainname",
    "entrypoint",
    "env_file",
    "environment",
    "expose",
    "extends",
    "external_links",
    "extra_hosts",
    "gpus",
    "group_add",
    "healthcheck",
    "hostname",
    "image",
    "init",
    "ipc",
    "isolation",
    "labels",
    "links",
    "logging",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "mem_swappiness",
    "memswap_limit",
    "network_mode",
    "networks",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "pids_limit",
    "platform",
    "ports",
    "post_start",
    "pre_stop",
    "privileged",
    "profiles",
    "pull_policy",
    "read_only",
    "restart",
    "runtime",
    "scale",
    "secrets",
    "security_opt",
    "shm_size",
    "stdin_open",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "tmpfs",
    "tty",
    "ulimits",
    "user",
    "userns_mode",
    "uts",
    "volumes",
    "volumes_from",
    "working_dir",
}
BUILD_KEYS = {
    "context",
    "dockerfile",
    "dockerfile_inline",
    "args",
    "ssh",
    "labels",
    "cache_from",
    "cache_to",
    "no_cache",
    "additional_contexts",
    "network",
    "pull",
    "target",
    "shm_size",
    "extra_hosts",
    "isolation",
    "privileged",
    "secrets",
    "tags",
    "ulimits",
    "platforms",
    "entitlements",
}
HEALTHCHECK_KEYS = {"test", "interval", "timeout", "retries", "start_period", "start_interval", "disable"}
RESTART_POLICIES = re.compile(r"^(no|always|unless-stopped|on-failure(:\d+)?)$")
DURATION = re.compile(r"^(\d+(\.\d+)?(us|ms|s|m|h))+$")
PORT = re.compile(r"^(?:(?P<ip>[\d.]+|\[[0-9a-fA-F:]+\]):)?(?:(?P<host>\d+):)?(?P<container>\d+)(?:/(?:tcp|udp))?$")
TOPIC_LITERAL = re.compile(r"^[a-z][a-z0-9_-]*\.(events|commands)(\.dlq)?$")


# ---------------------------------------------------------------------------------- helpers --


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "docker-compose.yml must be a mapping"
    return cast(dict[str, Any], data)


def services() -> dict[str, dict[str, Any]]:
    svcs = load_compose().get("services")
    assert isinstance(svcs, dict) and svcs, "docker-compose.yml has no services"
    return cast(dict[str, dict[str, Any]], svcs)


_VAR = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)"
)


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` / `${VAR-default}`, resolved with the defaults only (an unset
    shell), so the checks do not depend on who runs them. A variable without a default fails."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg")
        if op in (":-", "-"):
            return str(arg)
        raise AssertionError(f"${{{name}}} has no default in docker-compose.yml ({value!r})")

    return _VAR.sub(one, value)


def environment(svc: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment:` (mapping or KEY=VALUE list), interpolated."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        pairs = [str(item).split("=", 1) for item in env]
        env = {p[0]: (p[1] if len(p) > 1 else "") for p in pairs}
    assert isinstance(env, dict), f"environment must be a mapping or a list, got {env!r}"
    return {str(k): interpolate("" if v is None else str(v)) for k, v in env.items()}


@dataclass(frozen=True)
class PortMapping:
    host_ip: str | None
    host: int | None
    container: int


def ports(svc: Mapping[str, Any]) -> list[PortMapping]:
    out = []
    for spec in svc.get("ports") or []:
        if isinstance(spec, dict):
            published = spec.get("published")
            out.append(PortMapping(spec.get("host_ip"), int(published) if published else None, int(spec["target"])))
            continue
        m = PORT.match(interpolate(str(spec)))
        assert m, f"port mapping {spec!r} is not [ip:]host:container"
        host = m.group("host")
        out.append(PortMapping(m.group("ip"), int(host) if host else None, int(m.group("container"))))
    return out


def depends_on(svc: Mapping[str, Any]) -> dict[str, str]:
    """`depends_on` as {service: condition}; the short list form means service_started."""
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {str(d): "service_started" for d in deps}
    assert isinstance(deps, dict), f"depends_on must be a list or a mapping, got {deps!r}"
    out = {}
    for name, cond in deps.items():
        assert isinstance(cond, dict) and "condition" in cond, f"depends_on.{name} needs a condition"
        out[str(name)] = str(cond["condition"])
    return out


def settings_class(service: str) -> type[ServiceSettings]:
    """The ServiceSettings subclass defined in services/<service>/settings.py."""
    module = importlib.import_module(f"services.{service}.settings")
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, ServiceSettings) and obj.__module__ == module.__name__
    ]
    assert len(found) == 1, f"services/{service}/settings.py should define one ServiceSettings subclass, found {found}"
    return found[0]


def env_names(cls: type[ServiceSettings]) -> set[str]:
    """Environment variable names a pydantic-settings class reads (upper-cased): the field name
    with env_prefix, or the field's alias(es) when it has any."""
    prefix = str(cls.model_config.get("env_prefix") or "")
    names: set[str] = set()
    for name, info in cls.model_fields.items():
        alias = info.validation_alias if info.validation_alias is not None else info.alias
        choices: list[Any] = list(alias.choices) if isinstance(alias, AliasChoices) else [alias]
        for choice in choices:
            if choice is None:
                names.add(f"{prefix}{name}".upper())
            elif isinstance(choice, str):
                names.add(choice.upper())
            elif isinstance(choice, AliasPath) and isinstance(choice.path[0], str):
                names.add(choice.path[0].upper())
    return names


def settings_from(
    cls: type[ServiceSettings], env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch
) -> ServiceSettings:
    """Instantiate `cls` the way the container would: from exactly `env` (nothing leaks in from
    the environment running the tests)."""
    import os

    known = env_names(cls)
    for key in list(os.environ):
        if key.upper() in known:
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return cls()


def load_script(name: str) -> ModuleType:
    path = ROOT / "docker" / name
    spec = importlib.util.spec_from_file_location(f"docker_{path.stem}", path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def dockerfile_stages(path: Path) -> dict[str, Stage]:
    """Stages of a Dockerfile by name (unnamed stages by index), with their instructions."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, args = line.partition(" ")
        instr, args = instr.upper(), args.strip()
        if instr == "FROM":
            m = re.match(r"^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", args, re.IGNORECASE)
            assert m, f"{path.name}: cannot parse FROM {args}"
            current = Stage(m.group(2) or str(len(stages)), m.group(1))
            stages[current.name] = current
        else:
            assert current is not None or instr == "ARG", f"{path.name}: {instr} before FROM"
            if current is not None:
                current.instructions.append((instr, args))
    return stages


def lineage(stages: Mapping[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built FROM, nearest first."""
    chain = [stages[name]]
    while chain[-1].base in stages:
        chain.append(stages[chain[-1].base])
    return chain


def effective(stages: Mapping[str, Stage], name: str, instr: str) -> str | None:
    """The last `instr` (USER, CMD, HEALTHCHECK, ...) that applies to stage `name`."""
    for stage in lineage(stages, name):
        found = [args for i, args in stage.instructions if i == instr]
        if found:
            return found[-1]
    return None


def exec_form(args: str) -> list[str]:
    """`["python", "-m", "x"]` of CMD / HEALTHCHECK ... CMD [...]."""
    start = args.index("[")
    value = json.loads(args[start:])
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return cast(list[str], value)


def dockerignore_excludes(path: str) -> bool:
    """Docker's .dockerignore semantics: the last matching pattern wins, `!` re-includes, a
    pattern matching a directory applies to everything below it, `*` stays within one level."""
    patterns = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line[1:] if negate else line
        pat = pat.strip().strip("/")
        rx = re.escape(pat).replace(r"\*\*", "\0").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        rx = rx.replace("\0/", "(?:.*/)?").replace("\0", ".*")
        rx = re.sub(r"\\\[([^\]]*)\\\]", r"[\1]", rx)  # character classes stay classes
        patterns.append((re.compile(f"^{rx}$"), negate))
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for compiled, negate in patterns:
        if any(compiled.match(p) for p in prefixes):
            excluded = not negate
    return excluded


APP = sorted(PORTS)


# ------------------------------------------------------------------------ structure (YAML) --


def test_compose_parses_and_has_a_valid_structure() -> None:
    data = load_compose()
    unknown = {k for k in data if k not in TOP_LEVEL_KEYS and not k.startswith("x-")}
    assert not unknown, f"unknown top-level keys: {unknown}"
    svcs = services()
    assert set(APP) | {"kafka", "postgres", TOPIC_JOB} <= set(svcs)
    for name, svc in svcs.items():
        assert re.match(r"^[a-zA-Z0-9._-]+$", name), name
        assert isinstance(svc, dict), f"{name}: a service is a mapping"
        bad = {k for k in svc if k not in SERVICE_KEYS and not k.startswith("x-")}
        assert not bad, f"{name}: unknown keys {bad}"
        assert "image" in svc or "build" in svc, f"{name}: needs an image or a build"
        if "image" in svc and "build" not in svc:
            image = str(svc["image"])
            assert re.match(r"^[\w./-]+:[\w.-]+$", image) and not image.endswith(":latest"), (
                f"{name}: image {image!r} must be pinned to a tag"
            )
        if isinstance(svc.get("build"), dict):
            assert set(svc["build"]) <= BUILD_KEYS, f"{name}: unknown build keys {set(svc['build']) - BUILD_KEYS}"
        if "restart" in svc:
            assert RESTART_POLICIES.match(str(svc["restart"])), f"{name}: restart {svc['restart']!r}"
        if "profiles" in svc:
            assert isinstance(svc["profiles"], list) and all(isinstance(p, str) for p in svc["profiles"])
        if "command" in svc:
            assert isinstance(svc["command"], (str, list))
        environment(svc)  # mapping or list; every ${VAR} has a default
        for p in ports(svc):
            assert p.host is not None, f"{name}: publish ports explicitly (host:container)"
        hc = svc.get("healthcheck")
        if hc is not None:
            assert isinstance(hc, dict) and set(hc) <= HEALTHCHECK_KEYS, f"{name}: healthcheck keys {hc}"
            test = hc.get("test")
            assert isinstance(test, str) or (
                isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL", "NONE")
            ), f"{name}: healthcheck test must be a string or [CMD|CMD-SHELL|NONE, ...]"
            for key in ("interval", "timeout", "start_period", "start_interval"):
                if key in hc:
                    assert DURATION.match(str(hc[key])), f"{name}: healthcheck {key} {hc[key]!r}"
            if "retries" in hc:
                assert isinstance(hc["retries"], int) and hc["retries"] > 0


def test_published_host_ports_are_unique() -> None:
    published = [(svc_name, p.host) for svc_name, svc in services().items() for p in ports(svc)]
    hosts = [h for _, h in published]
    assert len(hosts) == len(set(hosts)), f"a host port is published twice: {published}"


def test_depends_on_conditions_are_valid_and_satisfiable() -> None:
    svcs = services()
    for name, svc in svcs.items():
        for dep, cond in depends_on(svc).items():
            assert dep in svcs, f"{name} depends on unknown service {dep}"
            assert cond in DEPENDS_ON_CONDITIONS, f"{name}: depends_on.{dep} condition {cond!r}"
            target = svcs[dep]
            if cond == "service_healthy":
                assert has_healthcheck(dep, target), f"{name} waits for {dep} healthy, but {dep} has no healthcheck"
            if cond == "service_completed_successfully":
                assert str(target.get("restart", "no")) == "no", f"{dep} is a one-shot job: restart must be 'no'"
            if "profiles" in target:
                assert set(svc.get("profiles") or []) & set(target["profiles"]), (
                    f"{name} depends on {dep}, which only starts with profile {target['profiles']}"
                )
    # No cycles.
    graph = {n: set(depends_on(s)) for n, s in svcs.items()}
    done: set[str] = set()

    def visit(n: str, path: tuple[str, ...]) -> None:
        assert n not in path, f"depends_on cycle: {' -> '.join((*path, n))}"
        if n not in done:
            for d in graph[n]:
                visit(d, (*path, n))
            done.add(n)

    for n in graph:
        visit(n, ())


def has_healthcheck(name: str, svc: Mapping[str, Any]) -> bool:
    hc = svc.get("healthcheck")
    if isinstance(hc, dict):
        return not hc.get("disable") and hc.get("test") not in (None, ["NONE"])
    build = svc.get("build")
    if isinstance(build, dict) and build.get("target"):
        stages = dockerfile_stages(dockerfile_of(svc))
        return effective(stages, str(build["target"]), "HEALTHCHECK") not in (None, "NONE")
    return False


def test_services_wait_for_postgres_kafka_and_the_topic_job() -> None:
    svcs = services()
    for name in APP:
        assert depends_on(svcs[name]) == {
            "postgres": "service_healthy",
            "kafka": "service_healthy",
            TOPIC_JOB: "service_completed_successfully",
            AUTH_JOB: "service_completed_successfully",
        }, name
    assert depends_on(svcs[TOPIC_JOB]) == {"kafka": "service_healthy"}
    assert depends_on(svcs[AUTH_JOB]) == {}


def test_docker_compose_config_accepts_the_file_when_the_cli_is_installed() -> None:
    """Optional: the real parser, where `docker compose` exists (it needs no engine)."""
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("`docker compose` is not installed here; the structural checks above still ran")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "--profile", "ui", "--profile", "cluster", "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------- images and builds --


def dockerfile_of(svc: Mapping[str, Any]) -> Path:
    build = svc["build"]
    context = ROOT / (build if isinstance(build, str) else str(build.get("context", ".")))
    name = "Dockerfile" if isinstance(build, str) else str(build.get("dockerfile", "Dockerfile"))
    return context / name


def test_every_build_context_dockerfile_and_target_exists() -> None:
    builds = {n: s for n, s in services().items() if "build" in s}
    assert set(APP) | {TOPIC_JOB} <= set(builds)
    for name, svc in builds.items():
        build = svc["build"]
        context = ROOT / (build if isinstance(build, str) else str(build.get("context", ".")))
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        dockerfile = dockerfile_of(svc)
        assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
        if isinstance(build, dict) and "target" in build:
            assert build["target"] in dockerfile_stages(dockerfile), (
                f"{name}: no stage {build['target']} in {dockerfile}"
            )


def test_one_image_per_service_running_its_module() -> None:
    svcs = services()
    targets = {}
    for name in APP:
        build = svcs[name]["build"]
        assert isinstance(build, dict) and build.get("target"), f"{name}: build its own target"
        targets[name] = build["target"]
        stages = dockerfile_stages(dockerfile_of(svcs[name]))
        cmd = effective(stages, str(build["target"]), "CMD")
        assert cmd is not None and exec_form(cmd) == ["python", "-m", f"services.{name}"], f"{name}: CMD {cmd}"
        expose = effective(stages, str(build["target"]), "EXPOSE")
        assert expose == str(PORTS[name]), f"{name}: EXPOSE {expose}"
    assert len(set(targets.values())) == len(targets), f"services share an image: {targets}"


def test_images_are_python_311_slim_non_root_with_the_project_installed() -> None:
    svcs = services()
    for name in [*APP, TOPIC_JOB]:
        svc = svcs[name]
        stages = dockerfile_stages(dockerfile_of(svc))
        chain = lineage(stages, str(svc["build"]["target"]))
        assert re.match(r"^python:3\.11(\.\d+)?-slim", chain[-1].base), f"{name}: base image {chain[-1].base}"
        user = effective(stages, str(svc["build"]["target"]), "USER")
        assert user is not None and user.split(":")[0] not in ("root", "0"), f"{name}: runs as {user!r}"
        runs = " && ".join(args for stage in chain for i, args in stage.instructions if i == "RUN")
        assert re.search(r"pip install (\S+ )*\.(\s|$)", runs), f"{name}: the image must `pip install .` the project"


def test_service_images_have_a_healthcheck_on_health_with_the_right_port() -> None:
    svcs = services()
    for name in APP:
        svc = svcs[name]
        stages = dockerfile_stages(dockerfile_of(svc))
        hc = effective(stages, str(svc["build"]["target"]), "HEALTHCHECK")
        assert hc is not None, f"{name}: no HEALTHCHECK"
        assert exec_form(hc) == ["python", "docker/healthcheck.py", name, str(PORTS[name])], f"{name}: {hc}"
        workdir = effective(stages, str(svc["build"]["target"]), "WORKDIR")
        assert workdir == "/app", "the HEALTHCHECK path is relative to WORKDIR /app"
    script = (ROOT / "docker" / "healthcheck.py").read_text()
    assert "urllib.request" in script and "/health" in script


@pytest.mark.parametrize("service", APP)
def test_healthcheck_resolves_the_port_like_the_service(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    health = load_script("healthcheck.py")
    cls = settings_class(service)
    alias = f"{service.upper()}_PORT"
    for env in (
        {},
        {"HTTP_PORT": "9101"},
        {alias: "9102"},
        {"HTTP_PORT": "9103", alias: "9104"},
        {alias.lower(): "9105"},
    ):
        with monkeypatch.context() as m:
            settings = settings_from(cls, env, m)
            port = int(health.resolve_port(service, PORTS[service]))
            assert port == settings.http_port, f"{service} with {env}: healthcheck {port}, service {settings.http_port}"


def test_dockerfile_copies_exist_and_reach_the_build_context() -> None:
    svc = services()["order"]
    dockerfile = dockerfile_of(svc)
    context = ROOT / str(svc["build"].get("context", "."))
    sources: list[str] = []
    for stage in dockerfile_stages(dockerfile).values():
        for instr, args in stage.instructions:
            if instr in ("COPY", "ADD") and "--from" not in args:
                words = [w for w in args.split() if not w.startswith("--")]
                sources += words[:-1]
    assert sources, "the Dockerfile copies nothing"
    for src in sources:
        path = context / src
        assert path.exists(), f"COPY {src}: not in the build context"
        files = (
            [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        )
        for f in files:
            rel = f.relative_to(context).as_posix()
            assert not dockerignore_excludes(rel), f".dockerignore drops {rel}, which the Dockerfile copies"
    # Runtime files next to the code (read with Path(__file__)) are in what is copied.
    for sql in ("shared/schema.sql", "services/order/schema.sql", "services/query/views.sql"):
        if (ROOT / sql).exists():
            assert any(sql == s or sql.startswith(s.rstrip("/") + "/") for s in sources), f"{sql} is not copied"
    # Every project package the services, the job scripts and the copied packages import
    # (transitively) is copied too.
    copied = {s.strip("/").split("/")[0] for s in sources}
    needed = closure_of_project_imports(
        {"services", "shared"} | imports_of_project(ROOT / "docker") | (copied & project_packages())
    )
    assert needed <= copied, f"the services import {sorted(needed - copied)}, which the image lacks"
    for junk in (
        ".venv/bin/python",
        ".git/HEAD",
        ".run/logs/kafka.log",
        "tests/conftest.py",
        "shared/__pycache__/x.cpython-311.pyc",
        "bench/kernel.py",
    ):
        assert dockerignore_excludes(junk), f".dockerignore should keep {junk} out of the build context"


def project_packages() -> set[str]:
    return {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}


def imports_of_project(where: Path) -> set[str]:
    """Top-level project packages imported by the .py files under `where`."""
    local = project_packages()
    found: set[str] = set()
    for path in where.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found |= {n.split(".")[0] for n in names} & local
    return found


def closure_of_project_imports(start: set[str]) -> set[str]:
    needed, todo = set(start), list(start)
    while todo:
        for pkg in imports_of_project(ROOT / todo.pop()) - needed:
            needed.add(pkg)
            todo.append(pkg)
    return needed


# ------------------------------------------------------------------------------ environment --


@pytest.mark.parametrize("service", APP)
def test_service_environment_sets_only_settings_the_code_reads(service: str) -> None:
    env = environment(services()[service])
    known = env_names(settings_class(service))
    unknown = {k for k in env if k.upper() not in known}
    assert not unknown, f"{service}: {sorted(unknown)} are not read by {settings_class(service).__name__}"
    assert REQUIRED_ENV <= set(env), f"{service}: missing {sorted(REQUIRED_ENV - set(env))}"


@pytest.mark.parametrize("service", APP)
def test_service_environment_validates_and_points_at_the_compose_services(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    svcs = services()
    settings = settings_from(settings_class(service), environment(svcs[service]), monkeypatch)
    assert settings.http_host == "0.0.0.0", f"{service} must listen on all interfaces in a container"
    assert settings.http_port == PORTS[service]
    published = ports(svcs[service])
    assert [(p.host, p.container) for p in published] == [(PORTS[service], settings.http_port)], (
        f"{service}: publish {PORTS[service]} -> HTTP_PORT {settings.http_port}, got {published}"
    )
    dsn = urlsplit(settings.database_url)
    own_db = {s.name: s.database for s in SERVICES}[service]
    assert (dsn.hostname, dsn.port or 5432, dsn.path.lstrip("/")) == ("postgres", 5432, own_db), settings.database_url
    role = f"{service}_service"
    assert (dsn.username, dsn.password) == (role, role), "each service logs in with its own role"
    wanted = {s.name: s.keystore for s in SERVICES}[service]
    if wanted:
        keystore = urlsplit(settings.keystore_url or "")
        assert (keystore.hostname, keystore.path.lstrip("/")) == ("postgres", KEYSTORE_DATABASE), settings.keystore_url
        assert (keystore.username, keystore.password) == (role, role)
    else:
        assert settings.keystore_url is None, f"{service} must not reach the key store"
    assert settings.kafka_bootstrap_servers in internal_bootstrap(), settings.kafka_bootstrap_servers


def test_topic_job_environment_sets_only_settings_it_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    env = environment(services()[TOPIC_JOB])
    known = env_names(ServiceSettings)  # docker/create_topics.py reads shared.settings.ServiceSettings
    assert set(env) <= known, f"{TOPIC_JOB}: {sorted(set(env) - known)} are not read"
    settings = settings_from(ServiceSettings, env, monkeypatch)
    assert settings.kafka_bootstrap_servers in internal_bootstrap()
    assert "ServiceSettings()" in (ROOT / "docker" / "create_topics.py").read_text()


# ------------------------------------------------------------------------------------ Kafka --


def kafka_listeners() -> tuple[dict[str, str], dict[str, str]]:
    """(listeners, advertised listeners) of the kafka service, as {listener name: host:port}."""
    env = environment(services()["kafka"])

    def parse(value: str) -> dict[str, str]:
        out = {}
        for item in value.split(","):
            m = re.match(r"^([A-Z_]+)://(.*)$", item.strip())
            assert m, f"listener {item!r}"
            out[m.group(1)] = m.group(2)
        return out

    return parse(env["KAFKA_LISTENERS"]), parse(env["KAFKA_ADVERTISED_LISTENERS"])


def internal_bootstrap() -> set[str]:
    """Advertised addresses reachable on the compose network (host = the kafka service)."""
    _, advertised = kafka_listeners()
    return {
        addr for addr in advertised.values() if addr.split(":")[0] in ("kafka", services()["kafka"].get("hostname"))
    }


def test_kafka_is_a_pinned_4x_kraft_broker_with_a_host_listener() -> None:
    kafka = services()["kafka"]
    m = re.match(r"^apache/kafka:(4\.\d+\.\d+)$", str(kafka["image"]))
    assert m, f"kafka image {kafka['image']!r}: pin an apache/kafka 4.x release"
    pom = (ROOT / "infra" / "kafka" / "pom.xml").read_text()
    local = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert local and local.group(1) == m.group(1), "same broker release as `make up` (infra/kafka/pom.xml)"

    env = environment(kafka)
    assert not any(k.startswith("KAFKA_ZOOKEEPER") for k in env), "KRaft only"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env.get("CLUSTER_ID"), "the apache/kafka image needs CLUSTER_ID in KRaft mode"
    node = env["KAFKA_NODE_ID"]
    listeners, advertised = kafka_listeners()
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert controller in listeners and controller not in advertised
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert voters == [f"{node}@kafka:{listeners[controller].rsplit(':', 1)[1]}"], voters
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols), "every listener needs a security protocol"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert set(advertised) <= set(listeners)
    for name, addr in advertised.items():
        assert listeners[name].rsplit(":", 1)[1] == addr.rsplit(":", 1)[1], (
            f"{name}: listens and advertises different ports"
        )

    # The host listener: published on the host's 9092 and advertised as reachable from the host.
    host_side = {n: a for n, a in advertised.items() if a.split(":")[0] in ("127.0.0.1", "localhost")}
    assert [a.rsplit(":", 1)[1] for a in host_side.values()] == [str(KAFKA_HOST_PORT)], advertised
    assert [(p.host, p.container) for p in ports(kafka)] == [(KAFKA_HOST_PORT, KAFKA_HOST_PORT)]
    assert internal_bootstrap(), "a listener advertised as kafka:<port> for the compose network"

    assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env.get(key) == "1", f"{key} must be 1 on a single broker"
    assert has_healthcheck("kafka", kafka)


def test_topic_job_runs_the_code_that_defines_the_topics() -> None:
    job = services()[TOPIC_JOB]
    stages = dockerfile_stages(dockerfile_of(job))
    cmd = job.get("command") or exec_form(effective(stages, str(job["build"]["target"]), "CMD") or "[]")
    assert cmd == ["python", "docker/create_topics.py"], cmd
    tree = ast.parse((ROOT / "docker" / "create_topics.py").read_text())
    imported = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert {("shared.topics", "ensure_topics"), ("shared.topics", "topic_specs")} <= imported


class FakeAdmin:
    """Stands in for aiokafka's AIOKafkaAdminClient: one in-memory broker."""

    topics: dict[str, Any] = {}
    failures_before_ready = 0

    def __init__(self, **_: Any) -> None:
        pass

    async def start(self) -> None:
        if FakeAdmin.failures_before_ready > 0:
            FakeAdmin.failures_before_ready -= 1
            raise ConnectionError("broker not ready")

    async def close(self) -> None:
        pass

    async def list_topics(self) -> list[str]:
        return list(self.topics)

    async def create_topics(self, new_topics: list[Any], *_: Any, **__: Any) -> None:
        for t in new_topics:
            assert t.name not in self.topics, f"{t.name} created twice"
            self.topics[t.name] = t

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [
            {
                "topic": n,
                "error_code": 0,
                "partitions": [{"partition": i, "leader": 1} for i in range(self.topics[n].num_partitions)],
            }
            if n in self.topics
            else {"topic": n, "error_code": 3, "partitions": []}
            for n in names
        ]


@pytest.fixture
def fake_kafka(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeAdmin]]:
    monkeypatch.setattr("aiokafka.admin.AIOKafkaAdminClient", FakeAdmin)
    monkeypatch.setattr("shared.kafka.AIOKafkaAdminClient", FakeAdmin)
    FakeAdmin.topics = {}
    FakeAdmin.failures_before_ready = 0
    yield FakeAdmin


async def test_topic_job_creates_every_topic_with_its_partitions_and_configs(
    fake_kafka: type[FakeAdmin], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = load_script("create_topics.py")
    monkeypatch.setattr(job, "RETRY_S", 0.01)
    fake_kafka.failures_before_ready = 3  # the broker answers only after a few tries
    assert await job.create_all("kafka:19092", 6, timeout_s=10) == 0
    specs = {s.name: s for s in topic_specs(6)}
    assert set(fake_kafka.topics) == set(specs)
    for name, created in fake_kafka.topics.items():
        assert (created.num_partitions, created.replication_factor, created.topic_configs) == (
            specs[name].partitions,
            1,
            specs[name].configs,
        ), name
    for name in ("order.events", "payment.events", "shipping.events"):
        assert fake_kafka.topics[name].topic_configs["retention.ms"] == "-1", f"{name} keeps facts forever"
    assert await job.create_all("kafka:19092", 6, timeout_s=10) == 0, "running it again is harmless"


async def test_topic_job_fails_when_the_broker_never_answers(
    fake_kafka: type[FakeAdmin], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = load_script("create_topics.py")
    monkeypatch.setattr(job, "RETRY_S", 0.01)
    fake_kafka.failures_before_ready = 10**9
    assert await job.create_all("kafka:19092", 6, timeout_s=0) == 1


def test_topic_names_in_the_code_are_topics_of_shared_topics() -> None:
    known = {s.name for s in topic_specs()}
    found: dict[str, str] = {}
    for top in ("services", "shared", "infra"):
        for path in sorted((ROOT / top).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and TOPIC_LITERAL.match(node.value):
                    found.setdefault(node.value, f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found, "no topic literal found: the scan itself is broken"
    unknown = {name: where for name, where in found.items() if name not in known}
    assert not unknown, f"topic names not in shared.topics.topic_specs() (the contract's topics): {unknown}"


# -------------------------------------------------------------------------------- PostgreSQL --


def test_postgres_is_pinned_and_creates_one_database_per_service_owned_by_its_own_role() -> None:
    pg = services()["postgres"]
    assert re.match(r"^postgres:\d+(\.\d+)?(-[\w.]+)?$", str(pg["image"])), pg["image"]
    hc = pg.get("healthcheck") or {}
    assert "pg_isready" in " ".join(map(str, hc.get("test") or [])), "healthcheck with pg_isready"
    mounts = [str(v).split(":") for v in pg.get("volumes") or []]
    inits = [ROOT / src for src, dst, *_ in mounts if dst.startswith("/docker-entrypoint-initdb.d/")]
    assert inits and all(p.is_file() for p in inits), f"init script mounts {mounts}"
    sql = "\n".join(p.read_text() for p in inits)
    sql = re.sub(r"--[^\n]*", "", sql)
    roles = {
        m.group(1): m.group(2).upper()
        for m in re.finditer(r"CREATE ROLE\s+\"?(\w+)\"?\s+(?:WITH\s+)?([^;]*);", sql, re.IGNORECASE)
    }
    for role in ["app", *(service_role(s.name) for s in SERVICES if s.database)]:
        password = "app" if role == "app" else role
        assert role in roles, f"CREATE ROLE {role}"
        opts = roles[role]
        assert "LOGIN" in opts and "NOSUPERUSER" in opts and f"PASSWORD '{password.upper()}'" in opts, opts
    created = {
        m.group(1): m.group(2)
        for m in re.finditer(
            r"CREATE DATABASE\s+\"?(\w+)\"?\s+(?:WITH\s+)?OWNER\s*=?\s*\"?(\w+)\"?", sql, re.IGNORECASE
        )
    }
    owners = {s.database: service_role(s.name) for s in SERVICES if s.database}
    assert created == {**owners, KEYSTORE_DATABASE: service_role(KEYSTORE_OWNER)}, created
    assert set(created) == set(DATABASES)
    for db in created:
        assert re.search(rf'REVOKE ALL ON DATABASE "?{db}"? FROM PUBLIC', sql), f"{db}: CONNECT revoked from PUBLIC"
    readers = ", ".join(service_role(s) for s in KEYSTORE_READERS)
    assert f'GRANT CONNECT ON DATABASE "{KEYSTORE_DATABASE}" TO {readers};' in sql
    assert f"GRANT SELECT ON TABLES TO {readers};" in sql
    assert "payment_service" not in sql.split("GRANT CONNECT", 1)[1].split(";")[0], (
        "payment never reaches the key store"
    )


# --------------------------------------------------------------------------- ports and UI --


def test_service_ports_are_those_of_the_readme() -> None:
    assert {s.name: s.default_port for s in SERVICES if s.name != WEB_UI} == PORTS, (
        "infra/services.py and PORTS disagree"
    )
    for name, port in PORTS.items():
        cls = settings_class(name)
        assert cls.model_fields["http_port"].default == port, f"{name}: default HTTP_PORT"
        assert [(p.host, p.container) for p in ports(services()[name])] == [(port, port)]
    text = README.read_text()
    table = dict(
        re.findall(
            r"^\|\s*(order|payment|shipping|query)\s*\|\s*http://127\.0\.0\.1:(\d+)/docs\s*\|", text, re.MULTILINE
        )
    )
    assert {k: int(v) for k, v in table.items()} == PORTS, "the README's table of addresses changed: update PORTS"
    assert re.search(rf"^\|\s*Kafka[^|]*\|\s*127\.0\.0\.1:{KAFKA_HOST_PORT}\s*\|", text, re.MULTILINE)


def test_web_ui_image_runs_its_module_with_a_healthcheck() -> None:
    svc = services()[WEB_UI]
    assert svc["build"]["target"] == WEB_UI
    stages = dockerfile_stages(dockerfile_of(svc))
    assert exec_form(str(effective(stages, WEB_UI, "CMD"))) == ["python", "-m", "services.ui"]
    assert effective(stages, WEB_UI, "EXPOSE") == str(WEB_UI_PORT)
    hc = effective(stages, WEB_UI, "HEALTHCHECK")
    assert hc is not None and exec_form(hc) == ["python", "docker/healthcheck.py", WEB_UI, str(WEB_UI_PORT)]
    user = effective(stages, WEB_UI, "USER")
    assert user is not None and user.split(":")[0] not in ("root", "0")


def test_web_ui_environment_points_at_the_four_services(monkeypatch: pytest.MonkeyPatch) -> None:
    svcs = services()
    ui = svcs[WEB_UI]
    env = environment(ui)
    cls = settings_class(WEB_UI)
    assert {k.upper() for k in env} <= env_names(cls), f"{WEB_UI}: {sorted(env)} not all read by {cls.__name__}"
    settings = settings_from(cls, env, monkeypatch)
    assert settings.http_host == "0.0.0.0" and settings.http_port == WEB_UI_PORT
    assert [(p.host, p.container) for p in ports(ui)] == [(WEB_UI_PORT, WEB_UI_PORT)]
    assert {s.name: s.default_port for s in SERVICES}[WEB_UI] == WEB_UI_PORT
    assert cls.model_fields["http_port"].default == WEB_UI_PORT
    for name in APP:
        url = urlsplit(str(getattr(settings, f"{name}_url")))
        assert (url.hostname, url.port) == (name, PORTS[name]), f"{WEB_UI} -> {name}: {url.geturl()}"
    assert depends_on(ui) == {**dict.fromkeys(APP, "service_healthy"), AUTH_JOB: "service_completed_successfully"}
    mounts = [str(v) for v in ui.get("volumes", [])]
    assert any(m.startswith(f"{AUTH_JOB}:{settings.ui_dev_keys_dir}") for m in mounts), mounts
    assert re.search(rf"^\|\s*ui\s*\|\s*http://127\.0\.0\.1:{WEB_UI_PORT}\s*\|", README.read_text(), re.MULTILINE)


def test_kafka_ui_is_optional_behind_the_ui_profile() -> None:
    svcs = services()
    ui = svcs[UI_SERVICE]
    assert ui.get("profiles") == ["ui"]
    assert re.match(r"^(provectuslabs|kafbat|ghcr\.io/kafbat)/kafka-ui:v?\d+\.\d+\.\d+$", str(ui["image"])), ui["image"]
    assert environment(ui)["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"] in internal_bootstrap()
    assert all("profiles" in s for s in svcs.values() if UI_SERVICE in depends_on(s))
    always = {n for n, s in svcs.items() if "profiles" not in s}
    assert always == {"kafka", "postgres", TOPIC_JOB, AUTH_JOB, WEB_UI, *APP}, (
        "everything else starts with a plain `docker compose up`"
    )


# ------------------------------------------------------------------------- profile `cluster` --

CLUSTER = "cluster"
CLUSTER_BROKERS = ("kafka-1", "kafka-2", "kafka-3")
CLUSTER_TOPIC_JOB = "kafka-topics-cluster"
CLUSTER_PG = "postgres-cluster"
CLUSTER_PORTS = {"order": 8011, "payment": 8012, "shipping": 8013, "query": 8014}
CLUSTER_KAFKA_HOST_PORTS = {"kafka-1": 9192, "kafka-2": 9193, "kafka-3": 9194}


def cluster_app(name: str) -> str:
    return f"{name}-cluster"


def listeners_of(service: str) -> tuple[dict[str, str], dict[str, str]]:
    env = environment(services()[service])

    def parse(value: str) -> dict[str, str]:
        return dict(item.strip().split("://", 1) for item in value.split(","))

    return parse(env["KAFKA_LISTENERS"]), parse(env["KAFKA_ADVERTISED_LISTENERS"])


def cluster_internal_addresses() -> list[str]:
    """Each cluster broker's address on the compose network (advertised as <hostname>:<port>)."""
    out = []
    for name in CLUSTER_BROKERS:
        _, advertised = listeners_of(name)
        host = services()[name].get("hostname", name)
        out += [a for a in advertised.values() if a.split(":")[0] == host]
    return out


def test_the_cluster_profile_adds_services_and_changes_no_default_one() -> None:
    svcs = services()
    in_profile = {n for n, s in svcs.items() if CLUSTER in (s.get("profiles") or [])}
    assert in_profile == {*CLUSTER_BROKERS, CLUSTER_TOPIC_JOB, CLUSTER_PG, *(cluster_app(a) for a in APP)}
    for name in (*APP, "kafka", "postgres", TOPIC_JOB):
        assert "profiles" not in svcs[name], f"{name} must keep starting with a plain `docker compose up`"
    for name in in_profile:
        assert svcs[name]["profiles"] == [CLUSTER], name
    # Its PostgreSQL is the default one's definition, so the two systems never share event logs.
    pg = {k: v for k, v in svcs[CLUSTER_PG].items() if k != "profiles"}
    assert pg == svcs["postgres"]


def test_cluster_is_three_kraft_nodes_in_one_quorum_with_replication_3_and_min_isr_2() -> None:
    svcs = services()
    envs = {name: environment(svcs[name]) for name in CLUSTER_BROKERS}
    assert {str(svcs[name]["image"]) for name in CLUSTER_BROKERS} == {str(svcs["kafka"]["image"])}
    assert sorted(env["KAFKA_NODE_ID"] for env in envs.values()) == ["1", "2", "3"]
    ids = {env["CLUSTER_ID"] for env in envs.values()}
    assert len(ids) == 1 and ids != {environment(svcs["kafka"])["CLUSTER_ID"]}, "one cluster id of its own"
    voters = {env["KAFKA_CONTROLLER_QUORUM_VOTERS"] for env in envs.values()}
    assert len(voters) == 1, "every node has the same static quorum"
    expected = []
    for name, env in envs.items():
        listeners, advertised = listeners_of(name)
        controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
        assert controller in listeners and controller not in advertised
        host = svcs[name].get("hostname", name)
        expected.append(f"{env['KAFKA_NODE_ID']}@{host}:{listeners[controller].rsplit(':', 1)[1]}")
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
        protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        assert set(listeners) <= set(protocols)
        for listener, addr in advertised.items():
            assert listeners[listener].rsplit(":", 1)[1] == addr.rsplit(":", 1)[1], f"{name}: {listener}"
        host_side = [a for a in advertised.values() if a.split(":")[0] in ("127.0.0.1", "localhost")]
        port = CLUSTER_KAFKA_HOST_PORTS[name]
        assert host_side == [f"127.0.0.1:{port}"], advertised
        assert [(p.host, p.container) for p in ports(svcs[name])] == [(port, port)]
        assert str(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"
        for key in (
            "KAFKA_DEFAULT_REPLICATION_FACTOR",
            "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
            "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        ):
            assert env[key] == "3", f"{name}: {key}"
        for key in ("KAFKA_MIN_INSYNC_REPLICAS", "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
            assert env[key] == "2", f"{name}: {key}"
        assert has_healthcheck(name, svcs[name])
    assert sorted(voters.pop().split(",")) == sorted(expected)
    assert len(set(cluster_internal_addresses())) == 3


@pytest.mark.parametrize("service", APP)
def test_cluster_services_run_the_same_images_against_every_broker(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    svcs = services()
    svc = svcs[cluster_app(service)]
    assert svc["build"] == svcs[service]["build"], "the same image as the default service"
    env = environment(svc)
    known = env_names(settings_class(service))
    assert {k for k in env if k.upper() not in known} == set(), f"{service}: settings it does not read"
    settings = settings_from(settings_class(service), env, monkeypatch)
    assert settings.http_host == "0.0.0.0"
    assert settings.http_port == CLUSTER_PORTS[service]
    assert [(p.host, p.container) for p in ports(svc)] == [(CLUSTER_PORTS[service], settings.http_port)]
    dsn = urlsplit(settings.database_url)
    own_db = {s.name: s.database for s in SERVICES}[service]
    assert (dsn.hostname, dsn.path.lstrip("/")) == (CLUSTER_PG, own_db), settings.database_url
    if settings.keystore_url is not None:
        assert urlsplit(settings.keystore_url).hostname == CLUSTER_PG, settings.keystore_url
    assert sorted(settings.kafka_bootstrap_servers.split(",")) == sorted(cluster_internal_addresses())
    assert (settings.kafka_replication_factor, settings.kafka_min_insync_replicas) == (3, 2)
    assert depends_on(svc) == {
        CLUSTER_PG: "service_healthy",
        **{b: "service_healthy" for b in CLUSTER_BROKERS},
        CLUSTER_TOPIC_JOB: "service_completed_successfully",
        AUTH_JOB: "service_completed_successfully",  # the one development key of both systems
    }
    assert svc["volumes"] == [AUTH_MOUNT]
    # Everything else a service is configured with matches the default service.
    own = ("DATABASE_URL", "KEYSTORE_URL", "KAFKA_BOOTSTRAP_SERVERS")
    same = {k: v for k, v in environment(svcs[service]).items() if k not in own}
    assert {k: v for k, v in env.items() if k in same and k not in ("HTTP_PORT",)} == {
        k: v for k, v in same.items() if k != "HTTP_PORT"
    }


def test_cluster_topic_job_creates_the_topics_with_replication_3_and_min_isr_2(monkeypatch: pytest.MonkeyPatch) -> None:
    svcs = services()
    job = svcs[CLUSTER_TOPIC_JOB]
    assert job["build"] == svcs[TOPIC_JOB]["build"] and job.get("command") == svcs[TOPIC_JOB].get("command")
    assert str(job.get("restart")) == "no"
    env = environment(job)
    assert set(env) <= env_names(ServiceSettings)
    settings = settings_from(ServiceSettings, env, monkeypatch)
    assert sorted(settings.kafka_bootstrap_servers.split(",")) == sorted(cluster_internal_addresses())
    assert (settings.kafka_replication_factor, settings.kafka_min_insync_replicas) == (3, 2)
    assert depends_on(job) == {b: "service_healthy" for b in CLUSTER_BROKERS}


async def test_cluster_topic_job_passes_the_replication_to_kafka(
    fake_kafka: type[FakeAdmin], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docker/create_topics.py with the cluster job's environment creates RF 3, min ISR 2 topics."""
    env = environment(services()[CLUSTER_TOPIC_JOB])
    for key in ("KAFKA_REPLICATION_FACTOR", "KAFKA_MIN_INSYNC_REPLICAS"):
        monkeypatch.setenv(key, env[key])
    job = load_script("create_topics.py")
    assert await job.create_all(env["KAFKA_BOOTSTRAP_SERVERS"], 6, timeout_s=10) == 0
    assert {t.replication_factor for t in fake_kafka.topics.values()} == {3}
    assert {t.topic_configs["min.insync.replicas"] for t in fake_kafka.topics.values()} == {"2"}


# ------------------------------------------------------------------------------ bearer tokens --


@pytest.mark.parametrize("service", APP)
def test_services_trust_the_key_the_auth_job_creates(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each service mounts the job's volume read-only and reads its JWKS from there."""
    svcs = services()
    svc = svcs[service]
    assert svc["volumes"] == [AUTH_MOUNT], f"{service}: mount the auth-keys volume read-only"
    settings = settings_from(settings_class(service), environment(svc), monkeypatch)
    volume, mount, _ = AUTH_MOUNT.split(":")
    assert Path(settings.auth_jwks_file).parent == Path(mount), settings.auth_jwks_file
    assert volume in (load_compose().get("volumes") or {}), "the auth-keys volume is declared"
    job = svcs[AUTH_JOB]
    assert job["volumes"] == [f"{volume}:{mount}"] and str(job.get("restart")) == "no"


def test_auth_job_creates_the_jwks_where_the_services_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The job's image runs `python -m infra token --init` with RUN_DIR=/ (so the key goes to
    /auth); run here with RUN_DIR=<tmp>, it creates <tmp>/auth/jwks.json, idempotently."""
    from infra.cli import main

    job = services()[AUTH_JOB]
    stages = dockerfile_stages(ROOT / "docker" / "service.Dockerfile")
    target = str(job["build"]["target"])
    assert exec_form(effective(stages, target, "CMD") or "[]") == ["python", "-m", "infra", "token", "--init"]
    assert "RUN_DIR=/" in (effective(stages, target, "ENV") or "")
    monkeypatch.setenv("RUN_DIR", str(tmp_path))
    assert main(["token", "--init"]) == 0 and main(["token", "--init"]) == 0
    jwks = json.loads((tmp_path / "auth" / "jwks.json").read_text())
    assert [k["kty"] for k in jwks["keys"]] == ["EC"] and "jwks.json" in capsys.readouterr().out
