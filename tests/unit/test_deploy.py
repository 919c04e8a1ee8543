"""deploy/, checked offline: the kustomize base and overlay render (`kubectl kustomize`), every
built-in object validates strictly against the Kubernetes schemas kubernetes-validate ships, the
KEDA ScaledObjects (no schema there) pass explicit field checks, the pods run as compose's
services do but locked down, the alert rules pass `promtool check rules` and `promtool test
rules`, each alert has its runbook section, and the dashboard is well formed. That every metric
they name is one the exporter serves is tests/integration/test_deploy_metrics.py (a live scrape).
A missing kubectl or promtool skips here and fails in CI."""

from __future__ import annotations

import re
import subprocess

import kubernetes_validate
import pytest

from config.settings import ENV_PREFIX, Settings
from nxjobs.jobs import QUEUES
from tests import deploy_files as files

# A version kubernetes-validate ships schemas for (its kubernetes-json-schema directory).
KUBERNETES_VERSION = "1.30.0"
# Not in kubernetes-validate: checked field by field below.
CUSTOM_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}
# Settings read outside the Settings fields (config.settings.secrets_dir), or added by a
# parallel change (the Sentinel master's name).
EXTRA_SETTINGS = {"NXJOBS_SECRETS_DIR", "NXJOBS_REDIS_SENTINEL_MASTER", "NXJOBS_BROKER_URL"}
# The Redis URLs carry the Redis password.
URL_CREDENTIALS = {"NXJOBS_REDIS_URL", "NXJOBS_BROKER_URL"}
# Names of credentials in a pod's declared environment (FLOWER_BASIC_AUTH_FILE, a path, is fine).
SECRET_WORDS = re.compile(r"PASSWORD|TOKEN|SECRET(?!S_DIR)|BASIC_AUTH$|_URL$")
SCALEDOBJECT_SPEC = {
    "scaleTargetRef",
    "minReplicaCount",
    "maxReplicaCount",
    "pollingInterval",
    "cooldownPeriod",
    "idleReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}


@pytest.fixture(scope="module", params=sorted(files.KUSTOMIZE_DIRS))
def rendered(request) -> list[dict]:
    return files.kustomize(request.param)


@pytest.fixture(scope="module")
def overlay() -> list[dict]:
    return files.kustomize("overlay")


def of_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def setting_names(model: type = Settings, prefix: str = ENV_PREFIX) -> dict[str, bool]:
    """Every NXJOBS_* variable the settings model reads -> whether it is a secret (SecretStr)."""
    out = {}
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and hasattr(sub, "model_fields"):
            out.update(setting_names(sub, f"{prefix}{name.upper()}__"))
        else:
            out[f"{prefix}{name.upper()}"] = "SecretStr" in str(sub)
    return out


# ---- Kubernetes ------------------------------------------------------------------------------


def test_every_built_in_object_validates_strictly(rendered):
    # Given every rendered object but the KEDA ones
    built_in = [o for o in rendered if (o["apiVersion"], o["kind"]) not in CUSTOM_KINDS]
    assert len(built_in) >= 15
    for obj in built_in:
        # Then it validates against the schema of its kind, unknown fields refused
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {exc.path}")


def test_the_validator_refuses_what_a_cluster_would(rendered):
    # Given a rendered Deployment with a misspelt field, the check above must catch it
    deployment = next(o for o in rendered if o["kind"] == "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_one_worker_deployment_per_queue_family(rendered):
    deployments = of_kind(rendered, "Deployment")
    workers = {
        name: d
        for name, d in deployments.items()
        if pod_spec(d)["containers"][0]["command"][:2] == ["nxjobs", "worker"]
    }
    served = {}
    for name, d in workers.items():
        command = pod_spec(d)["containers"][0]["command"]
        queues = command[command.index("-Q") + 1].split(",")
        assert len(queues) == 1 and name == f"worker-{queues[0]}", name
        served[queues[0]] = name
        # KEDA owns the replica count
        assert "replicas" not in d["spec"], name
    assert set(served) == set(QUEUES)
    assert {"callbacks", "beat", "exporter", "flower"} <= set(deployments)
    assert deployments["beat"]["spec"]["replicas"] == 1
    assert deployments["beat"]["spec"]["strategy"]["type"] == "Recreate"


def test_every_pod_is_non_root_read_only_bounded_and_probed(rendered):
    for name, d in of_kind(rendered, "Deployment").items():
        spec = pod_spec(d)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == 10001, name  # the Dockerfile's user
        assert spec["automountServiceAccountToken"] is False, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][bound]), (name, bound)
            assert c.get("livenessProbe"), f"{name} has no liveness probe"
            # A read-only root: whatever a process writes goes to a mounted emptyDir
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}, name


def test_probes_use_the_health_endpoints_compose_uses(rendered):
    deployments = of_kind(rendered, "Deployment")

    def container(name: str) -> dict:
        return pod_spec(deployments[name])["containers"][0]

    receiver = container("callbacks")
    assert receiver["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert receiver["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # The exporter's /healthz turns 503 on a stall: an alert, never a restart or a hidden target
    exporter = container("exporter")
    assert exporter["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert exporter["readinessProbe"]["httpGet"]["path"] == "/livez"
    assert container("flower")["livenessProbe"]["httpGet"]["path"] == "/healthcheck"
    assert container("beat")["livenessProbe"]["exec"]["command"][:4] == [
        "python",
        "-m",
        "workers.healthcheck",
        "file",
    ]
    for queue in QUEUES:
        probe = " ".join(container(f"worker-{queue}")["livenessProbe"]["exec"]["command"])
        assert "inspect ping" in probe and "celery@$HOSTNAME" in probe
    # Each named probe port is one the container declares, and its command listens on it
    for name in ("callbacks", "exporter", "flower"):
        c = container(name)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            port = ports[c[probe]["httpGet"]["port"]]
            assert any(str(port) in part for part in c["command"]), (name, port)


def test_workers_get_longer_than_the_task_time_limit_to_stop(rendered):
    configs = of_kind(rendered, "ConfigMap")
    limit = int(configs["nxjobs-settings"]["data"]["NXJOBS_TASK_TIME_LIMIT_S"])
    assert limit == Settings(_env_file=None).task_time_limit_s
    for queue in QUEUES:
        grace = pod_spec(of_kind(rendered, "Deployment")[f"worker-{queue}"])[
            "terminationGracePeriodSeconds"
        ]
        assert grace > limit, queue


def test_settings_come_from_config_maps_and_credentials_only_from_mounted_secrets(rendered):
    configs = of_kind(rendered, "ConfigMap")
    names = setting_names()
    credentials = {name for name, secret in names.items() if secret} | URL_CREDENTIALS
    assert "NXJOBS_API2__ACCESS_SECRET" in credentials and "NXJOBS_CALLBACKS__TOKEN" in credentials
    for cm in configs.values():
        for key in cm["data"]:
            # Every key is a setting nxjobs reads (no typo silently ignored) and no credential
            assert key in set(names) | EXTRA_SETTINGS, f"{key} is no nxjobs setting"
            assert key not in credentials, f"{key} is a credential: it belongs in a Secret"
    for name, d in of_kind(rendered, "Deployment").items():
        spec = pod_spec(d)
        for c in spec["containers"]:
            # No credential in the pod's declared environment (kubectl describe, env dumps)
            for env in c.get("env", []):
                assert "valueFrom" not in env, (name, env["name"])
                assert not SECRET_WORDS.search(env["name"]), (name, env["name"])
            refs = {ref["configMapRef"]["name"] for ref in c["envFrom"]}
            assert refs <= set(configs), name
            mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
            assert mounts["/run/secrets/nxjobs"]["readOnly"] is True, name
        volumes = {v["name"]: v for v in spec["volumes"]}
        secrets = {s["secret"]["name"] for s in volumes["secrets"]["projected"]["sources"]}
        # The exporter and Flower read Redis only: no provider credential or callback token
        if name in ("exporter", "flower"):
            assert secrets == {"nxjobs-redis"}, name
        else:
            assert secrets == {"nxjobs-redis", "nxjobs-provider"}, name
    # The directory the settings files are read from is the one mounted
    assert configs["nxjobs-settings"]["data"]["NXJOBS_SECRETS_DIR"] == "/run/secrets/nxjobs"
    # And no Secret is shipped: the operator creates them (docs/kubernetes.md)
    assert not of_kind(rendered, "Secret")


def test_disruption_budgets_cover_the_scaled_deployments(rendered):
    budgets = of_kind(rendered, "PodDisruptionBudget")
    deployments = of_kind(rendered, "Deployment")
    for name in [f"worker-{q}" for q in QUEUES] + ["callbacks"]:
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        covering = [
            b
            for b in budgets.values()
            if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(covering) == 1, name
    # None for the single-replica ones: it would block every node drain
    for name in ("beat", "exporter", "flower"):
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert not [
            b
            for b in budgets.values()
            if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ], name


def test_each_worker_family_scales_on_its_queue_depth_with_keda(overlay):
    scalers = of_kind(overlay, "ScaledObject")
    deployments = of_kind(overlay, "Deployment")
    assert set(scalers) == {f"worker-{q}" for q in QUEUES}
    for name, so in scalers.items():
        queue = name.removeprefix("worker-")
        spec = so["spec"]
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        assert set(spec) <= SCALEDOBJECT_SPEC, set(spec) - SCALEDOBJECT_SPEC
        assert so["metadata"]["namespace"] == deployments[name]["metadata"]["namespace"]
        # It targets its own Deployment, never the receiver or beat
        assert spec["scaleTargetRef"] == {"name": name}
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= 20
        assert 1 <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        assert meta["serverAddress"].startswith("http")
        # The exporter's gauge, which already sums the queue's priority lists
        assert meta["query"] == f'sum(nxjobs_queue_depth{{queue="{queue}"}})'
        assert float(meta["threshold"]) > 0 and isinstance(meta["threshold"], str)


def test_the_ingress_has_tls_a_body_limit_and_routes_only_callbacks(overlay):
    (ingress,) = of_kind(overlay, "Ingress").values()
    spec = ingress["spec"]
    hosts = {h for t in spec["tls"] for h in t["hosts"]}
    assert {r["host"] for r in spec["rules"]} <= hosts
    limit = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert limit == f"{Settings(_env_file=None).callbacks.max_body_bytes // 1024}k"
    paths = [p for r in spec["rules"] for p in r["http"]["paths"]]
    assert [p["path"] for p in paths] == ["/callbacks/"]
    assert {p["backend"]["service"]["name"] for p in paths} == {"callbacks"}
    # The public URL the workers send NXCloud is this host
    public = of_kind(overlay, "ConfigMap")["nxjobs-provider-settings"]["data"]
    assert public["NXJOBS_CALLBACKS__PUBLIC_URL"] == f"https://{spec['rules'][0]['host']}"


# ---- Prometheus and Grafana ------------------------------------------------------------------


def test_promtool_checks_the_rules():
    proc = subprocess.run(
        [files.tool("promtool"), "check", "rules", str(files.ALERTS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(files.alert_rules())} rules found" in proc.stdout


def test_promtool_unit_tests_of_the_rules_pass():
    proc = subprocess.run(
        [files.tool("promtool"), "test", "rules", str(files.ALERTS_TEST)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=files.ALERTS_TEST.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_every_alert_is_tested_and_has_its_runbook_section():
    tested = files.ALERTS_TEST.read_text(encoding="utf-8")
    runbook = files.RUNBOOK.read_text(encoding="utf-8")
    headings = set(re.findall(r"^## (\S+)$", runbook, flags=re.M))
    for rule in files.alert_rules():
        name = rule["alert"]
        assert f"alertname: {name}\n" in tested, f"{name} has no promtool test"
        assert name in headings, f"docs/runbook.md has no section '## {name}'"
        assert rule["annotations"]["runbook"] == f"docs/runbook.md#{name.lower()}"
        assert rule["labels"]["severity"] in ("page", "warning")
    assert "runbook.md" in (files.ROOT / "docs" / "operations.md").read_text(encoding="utf-8")


def test_the_dashboard_is_provisioning_ready():
    dash = files.dashboard()
    # No instance-specific id or data source: Grafana assigns the id, the variable picks the source
    assert dash.get("id") is None and dash["uid"]
    (variable,) = dash["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        own = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & own, f"panel {p['title']!r} overlaps another"
        cells |= own
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["targets"] and all(t["expr"] for t in p["targets"])
    # Every series the alerts page on is on the dashboard too
    shown = set().union(*(files.metric_names(e) for e in files.dashboard_exprs()))
    for rule in files.alert_rules():
        assert files.metric_names(rule["expr"]) - {"nxjobs_workers_healthy"} <= shown | {
            "nxjobs_jobs_finished_total"
        }
