"""The deployment side: the image definition and the Kubernetes manifests.

Each overlay is rendered with the real `kubectl kustomize` and every object is validated against
the Kubernetes 1.31 OpenAPI schemas in strict mode (kubernetes-validate: unknown fields fail). The
rest checks what the design relies on: no committed secret values, limits on every container,
Triton polling its S3 model repository, GPUs only in the gpu overlay, references that resolve,
and a Dockerfile whose stages, arguments and entrypoint are what the image contract says.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import json
import re
import runpy
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import kubernetes_validate
import pytest
import yaml
from moto.server import ThreadedMotoServer

from reid_core.cluster.openapi import SchemaError
from reid_core.cluster.pytorchjob import CONTAINER, PORT_NAME, validate_pytorchjob
from reid_core.config import load_config

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
KUBECTL = shutil.which("kubectl") or "/usr/bin/kubectl"
K8S_VERSION = "1.31.0"
NAMESPACE = "reidflow"
S3_SECRET = "reidflow-s3"
TARGETS = ("base", "overlays/local", "overlays/gpu")
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet", "PyTorchJob"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole"}

Obj = dict[str, Any]


# --------------------------------------------------------------------------------------------
# rendering helpers


@functools.cache
def _render_cached(target: str) -> tuple[Obj, ...]:
    if not Path(KUBECTL).is_file():
        pytest.fail(
            f"kubectl not found (looked on PATH and at {KUBECTL}): it renders the kustomize "
            "manifests these tests check. Install kubectl (it embeds kustomize)."
        )
    proc = subprocess.run(
        [KUBECTL, "kustomize", str(MANIFESTS / target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        pytest.fail(f"kubectl kustomize manifests/{target} failed:\n{proc.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def render(target: str) -> list[Obj]:
    """The objects `kubectl kustomize manifests/<target>` produces (a fresh copy per call)."""
    return copy.deepcopy(list(_render_cached(target)))


def find(objs: list[Obj], kind: str, name: str) -> Obj:
    for obj in objs:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind}/{name} among {[_ident(o) for o in objs]}")


def _ident(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_templates(obj: Obj) -> list[Obj]:
    """A workload's pod templates: one, or a PyTorchJob's one per replica type."""
    if obj["kind"] == "PyTorchJob":
        return [r["template"] for r in obj["spec"]["pytorchReplicaSpecs"].values()]
    return [obj["spec"]["template"]]


def pod_spec(obj: Obj) -> Obj:
    (template,) = pod_templates(obj)
    return template["spec"]


def pod_specs(obj: Obj) -> list[Obj]:
    return [template["spec"] for template in pod_templates(obj)]


def containers(obj: Obj) -> list[Obj]:
    return [
        container
        for spec in pod_specs(obj)
        for container in [*spec.get("initContainers", []), *spec["containers"]]
    ]


def workloads(objs: list[Obj]) -> Iterator[Obj]:
    return (o for o in objs if o["kind"] in POD_KINDS)


def env_of(container: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in container.get("env", [])}


def expand(text: str, container: Obj) -> str:
    """Kubernetes' $(VAR) expansion of command/args from literal env values."""
    env = env_of(container)

    def value(match: re.Match[str]) -> str:
        entry = env.get(match.group(1))
        if entry is None or "value" not in entry:
            raise AssertionError(f"$({match.group(1)}) in {text!r} has no literal env value")
        return entry["value"]

    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value, text)


def flag(container: Obj, name: str) -> str:
    """The value of `--name=value` in the container's args, after $(VAR) expansion."""
    for arg in container.get("command", []) + container.get("args", []):
        if arg.startswith(f"--{name}="):
            return expand(arg.split("=", 1)[1], container)
    raise AssertionError(f"container {container['name']} has no --{name}=... argument")


# --------------------------------------------------------------------------------------------
# schema validation


@pytest.mark.parametrize("target", TARGETS)
def test_every_rendered_object_validates_strictly_against_kubernetes_1_31(target: str) -> None:
    objs = render(target)
    assert objs, f"manifests/{target} rendered nothing"
    problems = []
    for obj in objs:
        try:
            if obj["kind"] == "PyTorchJob":  # a custom resource: the operator SDK's models
                validate_pytorchjob(obj)
                for template in pod_templates(obj):
                    kubernetes_validate.validate(
                        _as_pod_template(template), K8S_VERSION, strict=True
                    )
            else:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except SchemaError as err:
            problems.append(f"{_ident(obj)}: {err}")
        except kubernetes_validate.ValidationError as err:
            where = ".".join(str(p) for p in err.path)
            problems.append(f"{_ident(obj)}: {where}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            problems.append(f"{_ident(obj)}: {err.message}")
    assert not problems, f"manifests/{target}:\n" + "\n".join(problems)


def _as_pod_template(template: Obj) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "t"},
        "template": template,
    }


def test_strict_validation_rejects_a_misspelt_field() -> None:
    deployment = find(render("overlays/local"), "Deployment", "triton")
    pod_spec(deployment)["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/"
    with pytest.raises(kubernetes_validate.ValidationError, match="paht"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


# --------------------------------------------------------------------------------------------
# conventions on every object


@pytest.mark.parametrize("target", TARGETS)
def test_every_object_is_labelled_and_in_the_reidflow_namespace(target: str) -> None:
    for obj in render(target):
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name"), f"{_ident(obj)} has no app.kubernetes.io/name"
        assert labels.get("app.kubernetes.io/part-of") == "reidflow", _ident(obj)
        if obj["kind"] in CLUSTER_SCOPED:
            continue
        assert obj["metadata"].get("namespace") == NAMESPACE, f"{_ident(obj)} namespace"
    names = [o["metadata"]["name"] for o in render(target) if o["kind"] == "Namespace"]
    assert names == [NAMESPACE]


@pytest.mark.parametrize("target", TARGETS)
def test_every_container_has_cpu_and_memory_requests_and_limits(target: str) -> None:
    for obj in workloads(render(target)):
        for container in containers(obj):
            resources = container.get("resources", {})
            for part in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in resources.get(part, {}), (
                        f"{_ident(obj)} container {container['name']}: no {part}.{resource}"
                    )


@pytest.mark.parametrize("target", TARGETS)
def test_pods_run_as_non_root_without_privilege_escalation(target: str) -> None:
    for obj in workloads(render(target)):
        for spec in pod_specs(obj):
            assert spec.get("securityContext", {}).get("runAsNonRoot") is True, _ident(obj)
            # Services named mlflow/minio would otherwise inject MLFLOW_PORT=tcp://..., MINIO_*.
            assert spec.get("enableServiceLinks") is False, _ident(obj)
        for container in containers(obj):
            context = container.get("securityContext", {})
            assert context.get("allowPrivilegeEscalation") is False, _ident(obj)
            assert context.get("capabilities", {}).get("drop") == ["ALL"], _ident(obj)


@pytest.mark.parametrize("target", TARGETS)
def test_servers_have_probes_on_declared_ports(target: str) -> None:
    for obj in render(target):
        if obj["kind"] != "Deployment":
            continue
        for container in containers(obj):
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in container, f"{_ident(obj)} {container['name']}: no {probe}"
                port = container[probe]["httpGet"]["port"]
                assert port in ports or port in ports.values(), f"{_ident(obj)} {probe} port"


@pytest.mark.parametrize("target", TARGETS)
def test_services_select_pods_and_target_their_named_ports(target: str) -> None:
    objs = render(target)
    for service in (o for o in objs if o["kind"] == "Service"):
        selector = service["spec"]["selector"]
        matches = [
            o
            for o in workloads(objs)
            if any(selector.items() <= t["metadata"]["labels"].items() for t in pod_templates(o))
        ]
        assert len(matches) == 1, f"{_ident(service)} selects {[_ident(m) for m in matches]}"
        names = {p["name"] for c in containers(matches[0]) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, f"{_ident(service)} port {port['name']}"


@pytest.mark.parametrize("target", TARGETS)
def test_volumes_refer_to_rendered_claims_and_config_maps(target: str) -> None:
    objs = render(target)
    claims = {o["metadata"]["name"] for o in objs if o["kind"] == "PersistentVolumeClaim"}
    config_maps = {o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap"}
    for obj in workloads(objs):
        for volume in (v for spec in pod_specs(obj) for v in spec.get("volumes", [])):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, _ident(obj)
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, _ident(obj)


# --------------------------------------------------------------------------------------------
# secrets


def _yaml_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.rglob("*") if p.suffix in (".yaml", ".yml"))


def test_no_secret_values_are_committed_in_manifests() -> None:
    files = _yaml_files()
    assert files
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict):
                continue
            if doc.get("kind") == "Secret":
                assert not doc.get("data") and not doc.get("stringData"), (
                    f"{path.relative_to(ROOT)}: Secret {doc['metadata']['name']} carries values"
                )
            for generator in doc.get("secretGenerator", []):
                assert not generator.get("literals"), (
                    f"{path.relative_to(ROOT)}: secretGenerator {generator['name']} has literals"
                )
    for target in TARGETS:
        secrets = [_ident(o) for o in render(target) if o["kind"] == "Secret"]
        assert not secrets, f"manifests/{target} renders secrets {secrets}: create them outside"


def _ignored_by_manifests_gitignore(name: str) -> bool:
    ignored = False
    for line in (MANIFESTS / ".gitignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if fnmatch.fnmatch(name, line.lstrip("!")):
            ignored = not negate
    return ignored


def test_secret_template_names_every_key_the_manifests_read_and_filled_copies_are_ignored() -> None:
    template = MANIFESTS / "secret.example.env"
    keys = {
        line.split("=", 1)[0].strip()
        for line in template.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    for target in TARGETS:
        for obj in workloads(render(target)):
            for container in containers(obj):
                for entry in container.get("env", []):
                    ref = entry.get("valueFrom", {}).get("secretKeyRef")
                    if ref is None:
                        continue
                    assert ref["name"] == S3_SECRET, f"{_ident(obj)} reads secret {ref['name']}"
                    assert ref["key"] in keys, f"{_ident(obj)}: key {ref['key']} not in template"
    assert _ignored_by_manifests_gitignore("s3.env")
    assert not _ignored_by_manifests_gitignore("secret.example.env")


# --------------------------------------------------------------------------------------------
# the pieces


def test_mlflow_keeps_sqlite_on_a_volume_and_artifacts_on_s3() -> None:
    objs = render("base")
    deployment = find(objs, "Deployment", "mlflow")
    (container,) = pod_spec(deployment)["containers"]
    assert container["image"].startswith("reidflow:")
    assert container["command"] == ["mlflow"] and container["args"][0] == "server"
    assert flag(container, "artifacts-destination") == "s3://reidflow-artifacts/mlflow"
    backend = flag(container, "backend-store-uri")
    assert backend.startswith("sqlite:////")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    db_dir = str(Path(backend.removeprefix("sqlite:///")).parent)
    assert db_dir in mounts, f"{backend} is not on a mounted volume"
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    claim = volumes[mounts[db_dir]]["persistentVolumeClaim"]["claimName"]
    find(objs, "PersistentVolumeClaim", claim)
    env = env_of(container)
    for key in ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"]["name"] == S3_SECRET
    assert (
        deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    )


@pytest.mark.parametrize("target", TARGETS)
def test_triton_polls_an_s3_model_repository(target: str) -> None:
    deployment = find(render(target), "Deployment", "triton")
    (container,) = pod_spec(deployment)["containers"]
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3", container["image"])
    assert container["args"][0] == "tritonserver"
    assert flag(container, "model-control-mode") == "poll"
    assert flag(container, "repository-poll-secs") == "15"
    assert flag(container, "model-repository").startswith("s3://")
    assert {p["containerPort"] for p in container["ports"]} == {8000, 8001, 8002}
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env_of(container)[key]["valueFrom"]["secretKeyRef"]["name"] == S3_SECRET


def test_local_triton_reads_the_bucket_the_local_minio_serves_and_creates() -> None:
    objs = render("overlays/local")
    triton = pod_spec(find(objs, "Deployment", "triton"))["containers"][0]
    repository = flag(triton, "model-repository")
    match = re.fullmatch(r"s3://([a-z0-9.-]+):(\d+)/([a-z0-9.-]+)/(.+)", repository)
    assert match, f"{repository} is not s3://host:port/bucket/prefix"
    host, port, bucket, prefix = match.groups()
    service = find(objs, "Service", "minio")
    assert host.split(".")[0] == "minio" and host.split(".")[1] == NAMESPACE
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    job = pod_spec(find(objs, "Job", "minio-create-buckets"))["containers"][0]
    env = {k: v.get("value", "") for k, v in env_of(job).items()}
    assert bucket in env["BUCKETS"].split() and "reidflow-artifacts" in env["BUCKETS"].split()
    assert f"{bucket}/{prefix}/" in env["PREFIX_MARKERS"]
    assert env["S3_ENDPOINT_URL"] == f"http://{host}:{port}"


def test_gpu_overlay_gives_triton_and_training_one_gpu_on_gpu_nodes() -> None:
    objs = render("overlays/gpu")
    for kind, name in (("Deployment", "triton"), ("Job", "reid-train")):
        obj = find(objs, kind, name)
        (container,) = pod_spec(obj)["containers"]
        assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1", name
        assert pod_spec(obj)["nodeSelector"], name
        assert any(t["key"] == "nvidia.com/gpu" for t in pod_spec(obj)["tolerations"]), name


def test_gpu_overlay_trains_on_several_gpu_nodes_through_the_training_operator() -> None:
    from reid_core.cli import _build_parser

    objs = render("overlays/gpu")
    job = find(objs, "PyTorchJob", "reid-train-distributed")
    spec = job["spec"]
    assert spec["runPolicy"]["suspend"] is True  # applying it starts nothing
    replicas = spec["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] >= 1
    assert replicas["Master"]["template"] == replicas["Worker"]["template"]
    for spec_ in pod_specs(job):
        container = next(c for c in spec_["containers"] if c["name"] == CONTAINER)
        # one training process per GPU of the pod
        assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == spec["nprocPerNode"]
        assert any(p["name"] == PORT_NAME for p in container["ports"])
        assert spec_["nodeSelector"] and spec_["tolerations"]
        parsed = _build_parser().parse_args(container["args"])  # exits on an unknown flag
        assert parsed.command == "train"
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec_["volumes"]}
        claim_name = volumes[mounts["/workspace"]]["persistentVolumeClaim"]["claimName"]
        claim = find(objs, "PersistentVolumeClaim", claim_name)
        # every pod reads the dataset and resumes from the state on the same volume
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert any(a.startswith("--set=runtime.state_dir=/workspace/") for a in container["args"])


@pytest.mark.parametrize("target", ["base", "overlays/local"])
def test_only_the_gpu_overlay_asks_for_gpus(target: str) -> None:
    for obj in workloads(render(target)):
        for container in containers(obj):
            for part in ("requests", "limits"):
                assert "nvidia.com/gpu" not in container["resources"].get(part, {}), _ident(obj)


@pytest.mark.parametrize("target", TARGETS)
def test_training_job_runs_reid_train_logging_to_the_mlflow_service(target: str) -> None:
    objs = render(target)
    job = find(objs, "Job", "reid-train")
    assert job["spec"]["suspend"] is True
    spec = pod_spec(job)
    (container,) = spec["containers"]
    assert container["image"].startswith("reidflow:") and container["args"][0] == "train"
    uri = env_of(container)["MLFLOW_TRACKING_URI"]["value"]
    host, port = re.fullmatch(r"http://([a-z0-9.-]+):(\d+)", uri).groups()
    service = find(objs, "Service", host.split(".")[0])
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "persistentVolumeClaim" in volumes[mounts["/workspace"]]
    config_arg = flag(container, "config")
    cm_name = volumes[mounts[str(Path(config_arg).parent)]]["configMap"]["name"]
    config_map = find(objs, "ConfigMap", cm_name)
    assert Path(config_arg).name in config_map["data"]


def test_training_job_arguments_are_accepted_by_the_reid_cli() -> None:
    from reid_core.cli import _build_parser

    job = find(render("base"), "Job", "reid-train")
    args = pod_spec(job)["containers"][0]["args"]
    parsed = _build_parser().parse_args(args)  # exits (fails the test) on an unknown flag
    assert parsed.command == "train" and parsed.config == [Path("/etc/reidflow/params.yaml")]


def test_params_config_map_is_a_valid_pipeline_config(tmp_path: Path) -> None:
    config_map = next(
        o
        for o in render("base")
        if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("reidflow-params")
    )
    path = tmp_path / "params.yaml"
    path.write_text(config_map["data"]["params.yaml"])
    config = load_config([path])
    assert config.tracking.experiment


def _bucket_script() -> dict[str, Any]:
    return runpy.run_path(str(MANIFESTS / "overlays" / "local" / "create_buckets.py"))


def test_bucket_job_creates_buckets_and_prefix_idempotently_on_an_s3_endpoint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = _bucket_script()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key, value in {
            "S3_ENDPOINT_URL": endpoint,
            "BUCKETS": "reidflow-artifacts, reidflow-models",
            "PREFIX_MARKERS": "reidflow-models/triton/.keep",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test-secret",
            "AWS_DEFAULT_REGION": "us-east-1",
            "WAIT_SECONDS": "10",
        }.items():
            monkeypatch.setenv(key, value)
        outputs = []
        for _ in range(2):
            assert script["main"]() == 0
            outputs.append(capsys.readouterr().out)
        assert "bucket reidflow-models: created" in outputs[0]
        assert "bucket reidflow-models: exists" in outputs[1]
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        names = {b["Name"] for b in client.list_buckets()["Buckets"]}
        # moto keeps one in-memory S3 per process: other tests' buckets may be there too
        assert {"reidflow-artifacts", "reidflow-models"} <= names
        listed = client.list_objects_v2(Bucket="reidflow-models", Prefix="triton/")
        assert [o["Key"] for o in listed["Contents"]] == ["triton/.keep"]
    finally:
        server.stop()


def test_bucket_job_names_a_malformed_marker_before_touching_the_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = _bucket_script()
    monkeypatch.setenv("BUCKETS", "reidflow-models")
    monkeypatch.setenv("PREFIX_MARKERS", "no-key-here")
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:9")
    with pytest.raises(SystemExit, match="PREFIX_MARKERS entry 'no-key-here'"):
        script["main"]()
    monkeypatch.setenv("BUCKETS", " , ")
    with pytest.raises(SystemExit, match="BUCKETS is empty"):
        script["main"]()


# --------------------------------------------------------------------------------------------
# Dockerfile


DOCKER_KEYWORDS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: continuations joined, comment lines dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        assert keyword.upper() in DOCKER_KEYWORDS, f"Dockerfile: unknown instruction {keyword!r}"
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


def stages(instructions: list[tuple[str, str]]) -> tuple[list[str], list[list[tuple[str, str]]]]:
    """Global ARG names (before the first FROM), then the instructions of each stage."""
    global_args: list[str] = []
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions:
        if keyword == "FROM":
            result.append([])
        if not result:
            assert keyword == "ARG", f"Dockerfile: {keyword} before the first FROM"
            global_args.append(rest.split("=", 1)[0])
            continue
        result[-1].append((keyword, rest))
    return global_args, result


def assignments(rest: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(rest))


@functools.cache
def dockerfile() -> tuple[list[str], list[list[tuple[str, str]]]]:
    return stages(parse_dockerfile((ROOT / "Dockerfile").read_text()))


def test_dockerfile_base_image_is_an_argument_for_every_stage() -> None:
    instructions = parse_dockerfile((ROOT / "Dockerfile").read_text())
    assert instructions[0] == ("ARG", "BASE_IMAGE=python:3.11-slim")
    _, all_stages = dockerfile()
    assert len(all_stages) >= 1
    for stage in all_stages:
        keyword, rest = stage[0]
        assert keyword == "FROM" and rest.split()[0] == "${BASE_IMAGE}", rest


def test_dockerfile_final_stage_runs_reid_as_non_root_with_lineage_and_env() -> None:
    _, all_stages = dockerfile()
    final = all_stages[-1]
    entrypoints = [rest for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert entrypoints and json.loads(entrypoints[-1]) == ["reid"]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    workdirs = [rest for keyword, rest in final if keyword == "WORKDIR"]
    assert workdirs and workdirs[-1] == "/workspace"
    env: dict[str, str] = {}
    args: dict[str, int] = {}
    for index, (keyword, rest) in enumerate(final):
        if keyword == "ENV":
            env.update(assignments(rest))
        if keyword == "ARG":
            args[rest.split("=", 1)[0]] = index
    assert env["GX_ANALYTICS_ENABLED"] == "false"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["REID_GIT_COMMIT"] == "${GIT_COMMIT}"
    env_index = next(i for i, (k, r) in enumerate(final) if k == "ENV" and "REID_GIT_COMMIT" in r)
    assert args.get("GIT_COMMIT", env_index) < env_index, "ARG GIT_COMMIT must precede its use"


def test_dockerfile_installs_the_project_with_a_pinned_cpu_torch_and_pip_options() -> None:
    _, all_stages = dockerfile()
    args = {
        rest.split("=", 1)[0]: shlex.split(rest.split("=", 1)[1]) if "=" in rest else []
        for stage in all_stages
        for keyword, rest in stage
        if keyword == "ARG"
    }
    assert args["TORCH_SPEC"] == ["torch==2.13.0"]
    assert "PIP_OPTS" in args
    runs = " ".join(rest for stage in all_stages for keyword, rest in stage if keyword == "RUN")
    installs = [match.split() for match in re.findall(r"pip install ([^&;]*)", runs)]
    assert installs, "no pip install"
    # The dependencies (pinned torch first among them), then the project alone, offline-able.
    dependencies = next(words for words in installs if '"${TORCH_SPEC}"' in words)
    assert "${PIP_OPTS}" in dependencies and "constraints.txt" in dependencies
    project = next(words for words in installs if "." in words)
    assert "${PIP_OPTS}" in project and "--no-deps" in project


def test_dockerfile_uses_only_variables_its_stage_declares() -> None:
    global_args, all_stages = dockerfile()
    stage_names = []
    inherited = {"PATH", "HOME"}  # set by the base image
    for stage in all_stages:
        declared: set[str] = set()
        for keyword, rest in stage:
            if keyword == "FROM":
                used = set(re.findall(r"\$\{?(\w+)", rest))
                assert used <= set(global_args), f"FROM uses undeclared {used - set(global_args)}"
                words = rest.split()
                if len(words) == 3 and words[1].upper() == "AS":
                    stage_names.append(words[2])
                continue
            if keyword == "COPY":
                for source in re.findall(r"--from=(\S+)", rest):
                    assert source in stage_names[:-1], f"COPY --from={source}: no earlier stage"
            pattern = r"\$\{(\w+)" if keyword == "RUN" else r"\$\{?(\w+)"
            used = set(re.findall(pattern, rest))
            missing = used - declared - inherited
            assert not missing, f"{keyword} {rest[:60]!r} uses undeclared {sorted(missing)}"
            if keyword == "ARG":
                declared.add(rest.split("=", 1)[0])
            if keyword == "ENV":
                declared.update(assignments(rest))


def _dockerignore_excludes(path: str) -> bool:
    """Whether .dockerignore keeps `path` out (last matching pattern wins, `!` re-includes)."""
    excluded = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if re.fullmatch(regex + "(/.*)?", path):
            excluded = not negate
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "reid_core/__pycache__/x.pyc",
        ".pytest_cache/v",
        ".mlflow/mlflow.db",
        ".dvcstore/ab/cdef",
        "work/manifest.parquet",
        "reports/metrics.json",
        "serving/model_repository/m/1/model.onnx",
        "data/synthetic/bounding_box_train/0001_c1_0.jpg",
        "manifests/s3.env",
    ],
)
def test_dockerignore_keeps_local_state_data_and_secrets_out_of_the_context(path: str) -> None:
    assert _dockerignore_excludes(path)


@pytest.mark.parametrize(
    "path",
    [
        "reid_core/cli.py",
        "setup.cfg",
        "pyproject.toml",
        "wheels/torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl",
        "data/synthetic.dvc",
        "data/.gitignore",
        "data/market/part.dvc",
    ],
)
def test_dockerignore_keeps_sources_wheels_and_dvc_pointers(path: str) -> None:
    assert not _dockerignore_excludes(path)
