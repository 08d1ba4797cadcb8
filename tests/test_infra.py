"""infra/ checked as code: every YAML parses; the Ray launcher configs validate against the
schema inside the installed `ray` package; Kubernetes manifests validate against the
Kubernetes schemas (kubernetes-validate) and the KubeRay resources structurally; every job
entrypoint names a workflow and flags its own argparse parser accepts; the image installs the
same dependency set as `make install`; no secret literal anywhere in infra/."""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import REPO

INFRA = REPO / "infra"
LAUNCHER_CONFIGS = sorted((INFRA / "ray").glob("*.yaml"))
K8S_FILES = sorted((INFRA / "kuberay").glob("*.yaml")) + sorted((INFRA / "mlflow" / "k8s").glob("*.yaml"))
ALL_YAML = sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml"))
K8S_VERSION = "1.33.0"
WORKER_TYPES = {"cpu_worker": 0, "gpu_1x": 1, "gpu_8x": 8}  # launcher type -> GPUs per node


def k8s_documents() -> list[tuple[Path, dict]]:
    return [(p, d) for p in K8S_FILES for d in yaml.safe_load_all(p.read_text()) if d]


def test_every_yaml_parses_and_the_expected_files_exist():
    names = {p.relative_to(INFRA).as_posix() for p in ALL_YAML}
    assert {"ray/aws.yaml", "ray/gcp.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob-preprocess.yaml",
            "kuberay/rayjob-train-expert.yaml", "kuberay/rayjob-train-generator.yaml", "kuberay/rayjob-evaluate.yaml",
            "mlflow/compose.yaml", "serve/lipsync.yaml", "kuberay/rayservice.yaml",
            "mlflow/k8s/mlflow.yaml", "mlflow/k8s/postgres.yaml"} <= names, names
    for path in ALL_YAML:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs and all(isinstance(d, dict) for d in docs), f"{path}: not a mapping"


# ---------------------------------------------------------------- Ray cluster launcher

def _ray_schema() -> dict:
    import json

    import ray

    # The schema `ray up` validates against, from the installed package.
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_validates_against_rays_schema(path):
    import jsonschema

    schema = _ray_schema()
    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, schema)
    # The schema really rejects a bad config (the check above can fail).
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_1x"]["resources"]["GPU"] = "one"
    with pytest.raises(jsonschema.ValidationError, match="'one' is not of type 'integer'"):
        jsonschema.validate(broken, schema)
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_1x"]["max_nodes"] = 3  # a misspelt key
    with pytest.raises(jsonschema.ValidationError, match="max_nodes"):
        jsonschema.validate(broken, schema)


@pytest.mark.parametrize("path", LAUNCHER_CONFIGS, ids=lambda p: p.name)
def test_launcher_config_structure(path):
    config = yaml.safe_load(path.read_text())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}, "the head runs no tasks"
    assert set(types) - {config["head_node_type"]} == set(WORKER_TYPES)
    for name, gpus in WORKER_TYPES.items():
        spec = types[name]
        assert spec["min_workers"] == 0 or name == "cpu_worker"
        assert spec["max_workers"] >= 1 and spec["resources"].get(name) == 1
        assert spec["resources"].get("GPU", 0) == gpus
    assert config["idle_timeout_minutes"] > 0
    assert config["docker"]["head_image"].endswith("-cpu") and config["docker"]["worker_image"].endswith("-cuda")
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start, "the dashboard must never listen publicly"
    init = " ".join(config["initialization_commands"])
    assert "RAY_AUTH_MODE=token" in init and "RAY_AUTH_TOKEN=" in init
    assert "--env-file" in " ".join(config["docker"]["run_options"])


# ---------------------------------------------------------------- Kubernetes

def test_kubernetes_manifests_validate_against_the_kubernetes_schemas():
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    core, custom = 0, 0
    for path, doc in k8s_documents():
        if doc["apiVersion"].startswith("ray.io/"):
            custom += 1
            with pytest.raises(SchemaNotFoundError):  # KubeRay CRDs: checked structurally below
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        core += 1
    assert core >= 10 and custom == 6, (core, custom)  # RayCluster + 4 RayJobs + RayService
    # The validator rejects what Kubernetes would reject.
    deployment = next(d for _, d in k8s_documents() if d["kind"] == "Deployment")
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "five thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def _containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def test_raycluster_structure():
    cluster = yaml.safe_load((INFRA / "kuberay" / "raycluster.yaml").read_text())
    spec = cluster["spec"]
    assert cluster["kind"] == "RayCluster" and cluster["apiVersion"] == "ray.io/v1"
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["authOptions"] == {"mode": "token", "secretName": "lipsync-ray-auth"}
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["serviceType"] == "ClusterIP"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu-worker", "gpu-1x", "gpu-8x"}
    for name, gpus in WORKER_TYPES.items():
        group = groups[name.replace("_", "-")]
        assert group["minReplicas"] == 0 and group["maxReplicas"] >= 1
        assert f'\\"{name}\\": 1' in group["rayStartParams"]["resources"]
        pod = group["template"]["spec"]
        (container,) = _containers(pod)
        assert container["image"].endswith("-cuda" if gpus else "-cpu")
        if gpus:
            assert container["resources"]["limits"]["nvidia.com/gpu"] == gpus
            assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
            assert group["rayStartParams"]["num-gpus"] == str(gpus)
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        else:
            assert "nvidia.com/gpu" not in container["resources"]["limits"]
    for pod in [head["template"]["spec"], *(g["template"]["spec"] for g in groups.values())]:
        assert pod["securityContext"]["runAsNonRoot"] is True
        env = {e["name"]: e for c in _containers(pod) for e in c.get("env", [])}
        for secret_var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert "secretKeyRef" in env[secret_var]["valueFrom"], secret_var


def _rayjobs() -> list[tuple[Path, dict]]:
    return [(p, d) for p, d in k8s_documents() if d["kind"] == "RayJob"]


def test_rayjobs_target_the_cluster():
    jobs = _rayjobs()
    assert {d["metadata"]["name"] for _, d in jobs} == {
        "lipsync-preprocess-lrs2", "lipsync-train-expert", "lipsync-train-generator", "lipsync-evaluate-generator"}
    for _, job in jobs:
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "lipsync"}


def test_serve_config_is_a_valid_serve_deploy_file_and_the_rayservice_carries_it(mlflow_server, tmp_path, monkeypatch):
    """infra/serve/lipsync.yaml passes Serve's own schema, names the builder the service
    module has, and builds the application from exactly its args; the RayService embeds the
    same config, on a token-auth cluster whose pods get the bearer token from a Secret."""
    from ray.serve.schema import ServeDeploySchema

    from lipsync.checkpoints import ModelConfig, save_checkpoint
    from lipsync.errors import ConfigError
    from lipsync.models import Wav2Lip
    from pipelines.serve.app import build

    config = yaml.safe_load((INFRA / "serve" / "lipsync.yaml").read_text())
    (app,) = ServeDeploySchema.model_validate(config).applications
    assert app.import_path == "pipelines.serve.app:build" and app.route_prefix == "/"
    service = next(d for _, d in k8s_documents() if d["kind"] == "RayService")
    # The same config; only the proxy's host is widened, to the pod's network (loopback by default).
    assert config["http_options"]["host"] == "127.0.0.1"
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert embedded["http_options"].pop("host") == "0.0.0.0" and config["http_options"].pop("host")
    assert embedded == config
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["authOptions"] == {"mode": "token", "secretName": "lipsync-ray-auth"}
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    for pod in [cluster["headGroupSpec"]["template"]["spec"], *(g["template"]["spec"] for g in cluster["workerGroupSpecs"])]:
        env = {e["name"]: e for c in _containers(pod) for e in c.get("env", [])}
        assert env["LIPSYNC_SERVE_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "lipsync-serve-token", "key": "token"}

    # The file's args build the application (model pinned through a registry we start here).
    import mlflow

    from pipelines.tracking.registry import register_checkpoint

    save_checkpoint(tmp_path / "wav2lip.safetensors", Wav2Lip(width=0.0625), ModelConfig(kind="wav2lip", width=0.0625))
    client = mlflow.MlflowClient(mlflow_server.uri)
    run = client.create_run(client.create_experiment("serve-config-test"))
    client.log_artifact(run.info.run_id, str(tmp_path / "wav2lip.safetensors"), "checkpoint")
    # Its own model name: the session's registry also holds the training tests' wav2lip.
    register_checkpoint(run.info.run_id, "checkpoint", "serve-config-test", alias="champion",
                        tracking_uri=mlflow_server.uri)
    assert app.args["model"] == "models:/wav2lip@champion"
    args = {**app.args, "model": "models:/serve-config-test@champion", "tracking_uri": mlflow_server.uri}
    monkeypatch.delenv("LIPSYNC_SERVE_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="set LIPSYNC_SERVE_TOKEN"):
        build(args)
    monkeypatch.setenv("LIPSYNC_SERVE_TOKEN", "a-token-for-this-test")
    built = build(args)
    deployment = built._bound_deployment
    (bound,) = deployment.init_args
    assert bound["version"] == "models:/serve-config-test/1" and bound["model"] == args["model"]
    assert "a-token-for-this-test" not in repr(bound) and bound["token_digest"]
    assert deployment._deployment_config.autoscaling_config.max_replicas == app.args["max_replicas"]
    assert deployment.ray_actor_options["num_cpus"] == app.args["num_cpus"]
    with pytest.raises(ConfigError, match="unknown args replicas"):
        build({**args, "replicas": 3})


# ---------------------------------------------------------------- entrypoints and workflow flags

def _workflow_parser(script: str):
    path = REPO / "workflows" / Path(script).name
    assert path.is_file(), f"entrypoint names {script}: no such workflow"
    spec = importlib.util.spec_from_file_location(f"_wf_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def _check_entrypoint(command: str, where: str) -> str:
    argv = shlex.split(command)
    assert argv[0] in ("python", "python3"), f"{where}: {command}"
    assert argv[1].endswith(".py") and "/workflows/" in f"/{argv[1]}", f"{where}: not a workflow: {argv[1]}"
    parser = _workflow_parser(argv[1])
    try:
        parser.parse_args(argv[2:])
    except SystemExit as e:
        raise AssertionError(f"{where}: {Path(argv[1]).name} rejects the flags of: {command}") from e
    return Path(argv[1]).name


def test_every_job_entrypoint_parses_with_its_workflows_own_parser():
    seen = set()
    for path, job in _rayjobs():
        seen.add(_check_entrypoint(job["spec"]["entrypoint"], path.name))
    # The commands of infra/README.md too (lines starting `python workflows/...` after `--`).
    readme = (INFRA / "README.md").read_text()
    commands = [m.group(1) for m in re.finditer(r"-- (python3? \S*workflows/\S+\.py[^\n`]*(?:\\\n[^\n`]*)*)", readme)]
    assert len(commands) >= 3, commands
    for command in commands:
        seen.add(_check_entrypoint(command.replace("\\\n", " "), "infra/README.md"))
    assert {"preprocess.py", "train.py", "evaluate.py"} <= seen
    # A flag that does not exist is caught.
    with pytest.raises(AssertionError, match="rejects the flags"):
        _check_entrypoint("python workflows/train.py --stage expert --shards s3://b/s --no-such-flag", "probe")


# ---------------------------------------------------------------- images: one dependency set

def _makefile_var(name: str) -> str:
    m = re.search(rf"^{name}\s*\?=\s*(\S+)", (REPO / "Makefile").read_text(), re.M)
    assert m, f"Makefile has no {name}"
    return m.group(1)


def test_image_installs_the_same_dependency_set_as_make_install():
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    torch_pin = re.search(r"^ARG TORCH_VERSION=(\S+)", dockerfile, re.M).group(1)
    assert torch_pin == _makefile_var("TORCH_VERSION")
    # make install puts the pinned torch in first (infra/install_torch.py TORCH_VERSION), the
    # images get the same pin as a build argument.
    assert re.search(r"^\t\$\(PY\) infra/install_torch\.py \$\(TORCH_VERSION\)", makefile, re.M)
    assert "--build-arg TORCH_VERSION=$(TORCH_VERSION)" in makefile
    # The only things pip installs in the image: the pinned torch and this package (from
    # pyproject.toml, optionally with one of its own extras) - no second dependency list.
    pip_lines = re.findall(r"pip install ([^\n&\\]+)", dockerfile)
    installed = [tok for line in pip_lines for tok in shlex.split(line) if not tok.startswith("-")
                 and not tok.startswith("${") and not tok.startswith("$")]
    assert installed and all(tok.startswith("torch==") or tok.startswith(".") for tok in installed), installed
    assert not re.search(r"requirements[^\s]*\.txt", dockerfile)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for arg in re.findall(r"EXTRAS=(\w+)", dockerfile + makefile):
        assert arg in extras, f"image extra {arg!r} is not in pyproject.toml"
    # Non-root, and the README install is `make install` (the Makefile above).
    assert re.search(r"^USER ray$", dockerfile, re.M)
    assert "make demo" in (REPO / "README.md").read_text()


# ---------------------------------------------------------------- no secret literals

SECRET_PATTERNS = [
    (re.compile(r"AKIA[0-9A-Z]{16}"), "an AWS access key id"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"[a-z0-9+]+://[^/\s:@'\"]+:[^@\s/'\"$]+@"), "a password inside a URI"),
    (re.compile(r"(?i)(password|passwd|secret|token|secret[-_]key)['\"]?\s*[:=]\s*['\"]?[A-Za-z0-9+/_\-]{6,}"),
     "a literal credential"),
]
# References, not values: what a substitution stands for is never in the file. `${VAR}` and
# `$VAR` (compose and shell; `$$` is compose's escape) drop out, `${VAR:-default}` keeps its
# default (a literal), `$(command)` drops out (it reads the value at run time, e.g. from
# /run/secrets). The rest of the line is still scanned: a reference never hides a literal
# beside it.
_SUBSTITUTION = re.compile(r"\$\$?(?:\{\w+(?::?[-=?+]([^}]*))?\}|\([^)]*\)?|\w+)")


def _secret_literals(line: str) -> list[str]:
    """What SECRET_PATTERNS find in `line` once its substitutions are replaced by what they hold."""
    values = _SUBSTITUTION.sub(lambda m: m.group(1) or "", line)
    return [what for pattern, what in SECRET_PATTERNS if pattern.search(values)]


def _infra_text_files() -> list[Path]:
    return [p for p in INFRA.rglob("*") if p.is_file() and p.suffix in (".yaml", ".yml", ".ini", ".sql", ".md", "")]


def test_no_secret_literal_in_infra():
    files = _infra_text_files()
    assert len(files) >= 12
    for path in files:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            found = _secret_literals(line)
            assert not found, f"{path.relative_to(REPO)}:{n}: {found[0]}: {line.strip()}"
    # Kubernetes: no Secret objects with values; every secret-looking env var comes from a Secret.
    for path, doc in k8s_documents():
        assert doc["kind"] != "Secret", f"{path.name}: create Secrets out of band, never in a manifest"
        specs = [doc["spec"]["template"]["spec"]] if doc["kind"] in ("Deployment", "StatefulSet") else []
        if doc["kind"] == "RayCluster":
            specs = [doc["spec"]["headGroupSpec"]["template"]["spec"],
                     *(g["template"]["spec"] for g in doc["spec"]["workerGroupSpecs"])]
        for spec in specs:
            for c in _containers(spec):
                for e in c.get("env", []):
                    if re.search(r"PASSWORD|SECRET|TOKEN", e["name"]):
                        assert "valueFrom" in e and "value" not in e, f"{path.name}: {e['name']} inline"
    # The scan catches a planted literal, also beside a reference, and lets references pass.
    for planted in ("  MLFLOW_TRACKING_PASSWORD: hunter2hunter2",
                    '  export PGPASSWORD="hunter2hunter2" HOME="$HOME"',
                    '  MLFLOW_AUTH_ADMIN_PASSWORD="$$(cat /run/secrets/x)" PGPASSWORD=hunter2hunter2',
                    "  password: ${MLFLOW_PASSWORD:-hunter2hunter2}",
                    "  --backend-store-uri postgresql://mlflow:hunter2hunter2@postgres:5432/mlflow"):
        assert _secret_literals(planted), planted
    for reference in ('export PGPASSWORD="$$(cat /run/secrets/postgres_password)"',
                      "MLFLOW_TRACKING_PASSWORD: ${MLFLOW_TRACKING_PASSWORD}",
                      "postgresql://mlflow@postgres:5432/mlflow"):
        assert not _secret_literals(reference), reference


def test_compose_binds_loopback_and_reads_secrets_from_files():
    compose = yaml.safe_load((INFRA / "mlflow" / "compose.yaml").read_text())
    mlflow = compose["services"]["mlflow"]
    assert mlflow["ports"] == ["${MLFLOW_BIND:-127.0.0.1}:5000:5000"]
    # PostgreSQL is reached by the mlflow service over compose's network only: no port of it is
    # published on the host, and it does not share the host's network.
    postgres = compose["services"]["postgres"]
    assert "ports" not in postgres and postgres.get("network_mode") not in ("host",), postgres
    assert set(mlflow["secrets"]) == {"postgres_password", "mlflow_admin_password", "flask_secret_key"}
    assert all("file" in s for s in compose["secrets"].values())
    command = " ".join(mlflow["command"])
    assert "--app-name basic-auth" in command and "postgresql://mlflow@postgres:5432/mlflow" in command
    assert compose["services"]["postgres"]["image"] == "postgres:15"
