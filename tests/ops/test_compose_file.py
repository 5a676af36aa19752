"""docker-compose.yml is valid against the Compose specification and means what we intend.

The schema is the Compose specification's JSON schema as shipped in the docker-compose 1.29.2
package (compose/config/compose_spec.json, Apache-2.0; ops/compose-spec.LICENSE), vendored at
ops/compose-spec.json so the test needs no network. No Docker engine runs here, so the file cannot
be brought up; the semantic checks below stand in for what `docker compose config` and a first
`up` would catch.
"""
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ONE_SHOT = {"migrate"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def test_it_validates_against_the_compose_specification(compose):
    schema = json.loads((ROOT / "ops" / "compose-spec.json").read_text())
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_check_would_catch_a_mistake(compose):
    schema = json.loads((ROOT / "ops" / "compose-spec.json").read_text())
    broken = json.loads(json.dumps(compose))
    broken["services"]["web"]["helthcheck"] = broken["services"]["web"].pop("healthcheck")  # a typo
    assert not jsonschema.Draft201909Validator(schema).is_valid(broken)


def test_every_dependency_names_a_service_with_a_meaningful_condition(services):
    for name, service in services.items():
        deps = service.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: use the long form of depends_on with conditions"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name
            wanted = "service_completed_successfully" if dep in ONE_SHOT else "service_healthy"
            assert spec["condition"] == wanted, f"{name} -> {dep}: {spec['condition']}"


def test_every_levee_process_waits_for_the_one_shot_migration(services):
    for name in services:
        if name in ONE_SHOT | {"postgres", "redis", "proxy"} or name.startswith("inference"):
            continue
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"][-2:] == ["migrate", "--noinput"]
    assert services["migrate"]["restart"] == "no"


def test_every_long_running_service_has_a_healthcheck_and_a_restart_policy(services):
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no health check"
        assert service.get("restart") in {"always", "unless-stopped", "on-failure"}, f"{name}: restart policy"


def test_healthcheck_scripts_name_a_check_that_exists(services):
    from ops.healthcheck import CHECKS

    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test", [])
        if "ops/healthcheck.py" in test:
            assert test[-1] in CHECKS, f"{name}: unknown check {test[-1]}"


def test_the_gpu_worker_reserves_an_nvidia_gpu_and_the_cpu_profile_serves_the_demo_checkpoint(services):
    gpu = services["inference-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["args"]["TORCH"] == "cuda"
    cpu = services["inference-cpu"]
    assert cpu["profiles"] == ["cpu"] and "deploy" not in cpu and cpu["build"]["args"]["TORCH"] == "cpu"
    assert cpu["environment"]["LEVEE_CHECKPOINT"].endswith("inference/demo/checkpoint")
    for worker in (gpu, cpu):
        command = worker["command"]
        assert command[:4] == ["celery", "-A", "inference.worker", "worker"]
        assert command[command.index("-P") + 1] == "threads"
        assert command[command.index("-Q") + 1] == "inference." + worker["environment"]["LEVEE_MODEL_NAME"]
        # No database and no platform secrets on a GPU box: Redis and the checkpoint only.
        assert "env_file" not in worker and "DATABASE_URL" not in worker["environment"]


def test_the_web_tier_runs_gunicorn_with_the_repository_config(services):
    command = services["web"]["command"]
    assert command[0] == "gunicorn" and command[command.index("-c") + 1] == "ops/gunicorn.conf.py"
    assert command[-1] == "levee.asgi:application"
    assert (ROOT / "ops" / "gunicorn.conf.py").exists()
    worker = services["platform-worker"]["command"]
    assert worker[:4] == ["celery", "-A", "levee", "worker"] and worker[worker.index("-Q") + 1] == "platform"
    assert services["beat"]["command"][:4] == ["celery", "-A", "levee", "beat"]


def test_env_files_exist_or_have_an_example_that_sets_every_required_variable(compose, services):
    for name, service in services.items():
        for env_file in service.get("env_file", []):
            path = ROOT / env_file
            assert path.exists() or path.with_name(path.name + ".example").exists(), f"{name}: {env_file}"
    example = (ROOT / ".env.example").read_text()
    defined = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, flags=re.M))
    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):\?", text))
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    assert required and required <= defined, f"required but not in .env.example: {required - defined}"
    optional = used - required - {"LEVEE_VERSION"}
    assert optional <= defined, f"used but not documented in .env.example: {optional - defined}"


def test_volumes_and_build_are_declared(compose, services):
    named = set(compose.get("volumes", {}))
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith((".", "/", "$")):
                assert source in named, f"{name} mounts undeclared volume {source}"
        if "build" in service:
            assert (ROOT / service["build"]["context"] / "Dockerfile").exists()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("# syntax=") and "FROM python:3.11-slim" in dockerfile
    assert "ARG TORCH=" in dockerfile


def test_only_the_proxy_is_published_and_levee_believes_only_the_proxy(compose, services):
    import ipaddress

    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"proxy"}, f"published besides the proxy: {published - {'proxy'}}"
    proxy = services["proxy"]
    assert re.fullmatch(r"nginx:[\w.]+-alpine", proxy["image"])  # the official image
    address = ipaddress.ip_address(proxy["networks"]["edge"]["ipv4_address"])
    subnet = ipaddress.ip_network(compose["networks"]["edge"]["ipam"]["config"][0]["subnet"])
    assert address in subnet
    trusted = [ipaddress.ip_network(c) for c in services["web"]["environment"]["TRUSTED_PROXY_CIDRS"].split(",")]
    assert trusted == [ipaddress.ip_network(f"{address}/32")]  # the proxy, and no neighbour on the network
    assert "edge" in services["web"]["networks"] and services["web"]["expose"] == ["8000"]


def test_the_proxy_mounts_the_repository_configuration(services):
    mounts = {target: source for source, target, *_ in
              (re.sub(r"\$\{[^}]*\}", "VAR", v).split(":") for v in services["proxy"]["volumes"])}
    assert mounts["/etc/nginx/nginx.conf"] == "./ops/nginx/nginx.conf"
    assert mounts["/etc/nginx/levee"] == "./ops/nginx"
    assert mounts["/docker-entrypoint.d/40-levee-tls.sh"] == "./ops/nginx/40-levee-tls.sh"
    assert "/etc/nginx/certs" in mounts
    for source in ("./ops/nginx/nginx.conf", "./ops/nginx/proxy.conf", "./ops/nginx/tls.conf"):
        assert (ROOT / source).is_file()
    assert (ROOT / "ops/nginx/40-levee-tls.sh").stat().st_mode & 0o111  # the entrypoint runs only executables
    conf = (ROOT / "ops/nginx/nginx.conf").read_text()
    assert "server web:8000;" in conf and "include /etc/nginx/levee/proxy.conf;" in conf


def test_the_proxy_body_limit_matches_levees(settings):
    conf = (ROOT / "ops/nginx/nginx.conf").read_text()
    megabytes = int(re.search(r"client_max_body_size (\d+)m;", conf).group(1))
    assert megabytes * 1024 * 1024 == settings.LEVEE_MAX_BODY_BYTES
