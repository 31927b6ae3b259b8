"""The Helm chart, install.yaml, the dashboard and the images, checked with real tools: Helm's own
Go library (lint, schema, render), kubernetes-validate against a current Kubernetes, hadolint."""

import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from conftest import ROOT
from reasoning_operator import dashboard, release
from reasoning_operator.config import DEFAULT_TRAINER_IMAGE

helm = pytest.importorskip("helm_python")

CHART = ROOT / release.CHART
VALUE_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
# Objects of other operators' CRDs, which kubernetes-validate has no schema for.
FOREIGN_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "Certificate", "Issuer"}


def values_of(path: Path | None) -> dict:
    return yaml.safe_load(path.read_text()) if path else {}


def render(values: dict | None = None) -> list[dict]:
    return release.render(values, root=ROOT)


def kinds(documents: list[dict]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for document in documents:
        found.setdefault(document["kind"], []).append(document)
    return found


@pytest.mark.parametrize("values_file", [None, *VALUE_FILES], ids=lambda path: path.name if path else "defaults")
def test_chart_lints_strictly_and_renders_valid_kubernetes_objects(values_file):
    values = values_of(values_file)
    report = helm.lint(str(CHART), values, strict=True, kube_version="v1.34.0")
    problems = [message for message in report["messages"] if message["severity"] >= 2]
    assert not problems and not report["errors"], (problems, report["errors"])
    version = kubernetes_validate.latest_version()
    for document in render(values):
        if document["kind"] in FOREIGN_KINDS:
            assert document["apiVersion"].split("/")[0] in ("monitoring.coreos.com", "cert-manager.io")
            continue
        kubernetes_validate.validate(document, version, strict=True)


def test_install_yaml_is_the_chart_with_its_defaults_and_valid():
    committed = (ROOT / release.INSTALL).read_text()
    assert committed == release.install_yaml(ROOT), "manifests/install.yaml is stale: run `make manifests`"
    documents = list(yaml.safe_load_all(committed))
    assert [document["kind"] for document in documents[:3]] == ["Namespace", "CustomResourceDefinition",
                                                                 "ServiceAccount"]
    for document in documents:
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


def test_the_chart_ships_the_generated_crd_and_dashboard():
    assert (ROOT / "charts/reasoning-operator/files/reasoningtrainings-crd.yaml").read_text() == \
        (ROOT / "manifests/crd.yaml").read_text()
    assert (ROOT / dashboard.TARGET).read_text() == dashboard.render(), "the dashboard is stale: run `make dashboard`"
    config_map = kinds(render())["ConfigMap"][0]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["data"]["reasoning-operator.json"] == dashboard.render().rstrip("\n")


@pytest.mark.parametrize("values, key", [
    ({"watchNamespaces": "ml-team"}, "watchNamespaces"),
    ({"serviceMonitor": {"enable": True}}, "enable"),
    ({"prometheusRule": {"gpuMemoryRatio": 2}}, "gpuMemoryRatio"),
    ({"webhook": {"failurePolicy": "fail"}}, "failurePolicy"),
    ({"podMonitor": {"interval": "15 seconds"}}, "interval"),
    ({"image": {"repository": ""}}, "repository"),
])
def test_values_schema_rejects_wrong_values_naming_the_key(values, key):
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmValuesError, match=key):
            chart.validate_schema(values)


def rules_of(documents: list[dict]) -> list[dict]:
    found = kinds(documents)
    return [rule for role in found.get("ClusterRole", []) + found.get("Role", []) for rule in role["rules"]]


def allows(rules: list[dict], group: str, resource: str, verb: str) -> bool:
    return any(group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]
               for rule in rules)


# Every API call the operator makes: kopf watches and annotates runs and posts events; the
# reconciler reads runs, writes their status, lists Jobs and Pods, creates the stage's children
# and deletes a suspended stage's Job.
OPERATOR_CALLS = [
    ("reasoning.dev", "reasoningtrainings", verb) for verb in ("get", "list", "watch", "patch")
] + [
    ("reasoning.dev", "reasoningtrainings/status", "patch"), ("batch", "jobs", "list"), ("", "pods", "list"),
    # Children block their run's deletion; strict clusters require this verb for that (e2e: kit.KIT_ENV).
    ("reasoning.dev", "reasoningtrainings/finalizers", "update"),
    ("batch", "jobs", "watch"), ("", "pods", "watch"), ("batch", "jobs", "get"),
    ("batch", "jobs", "create"), ("batch", "jobs", "delete"), ("", "configmaps", "create"),
    ("", "services", "create"), ("", "persistentvolumeclaims", "create"), ("", "events", "create"),
    ("", "events", "list"), ("scheduling.volcano.sh", "podgroups", "create"),
    ("jobset.x-k8s.io", "jobsets", "get"), ("jobset.x-k8s.io", "jobsets", "create"),
    ("jobset.x-k8s.io", "jobsets", "delete"),
    ("coordination.k8s.io", "leases", "get"), ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "update"),
]


def test_rbac_allows_what_the_operator_calls_and_nothing_more():
    rules = rules_of(render())
    for call in OPERATOR_CALLS:
        assert allows(rules, *call), call
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"], rule
        assert "secrets" not in rule["resources"], "the operator never reads Secrets (pods read the HF token)"
    assert not allows(rules, "", "pods", "create") and not allows(rules, "", "pods", "delete")


def test_watching_listed_namespaces_binds_roles_there_and_nothing_cluster_wide():
    documents = render({"watchNamespaces": ["ml-team", "research"]})
    found = kinds(documents)
    assert "ClusterRole" not in found and "ClusterRoleBinding" not in found
    watching = [role for role in found["Role"] if not role["metadata"]["name"].endswith("-leader-election")]
    assert sorted(role["metadata"]["namespace"] for role in watching) == ["ml-team", "research"]
    election = [role for role in found["Role"] if role["metadata"]["name"].endswith("-leader-election")]
    assert [role["metadata"]["namespace"] for role in election] == [release.NAMESPACE]
    binding = found["RoleBinding"][0]
    assert binding["subjects"][0] == {"kind": "ServiceAccount", "name": "reasoning-operator",
                                      "namespace": release.NAMESPACE}
    args = found["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=ml-team" in args and "--namespace=research" in args and "--all-namespaces" not in args
    assert "--all-namespaces" in kinds(render())["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["args"]


def test_operator_deployment_is_hardened_elects_a_leader_and_is_configured_from_values():
    deployment = kinds(render({"trainer": {"image": {"repository": "registry.local/trainer", "tag": "v2"}},
                               "replicas": 2}))["Deployment"][0]
    assert deployment["spec"]["replicas"] == 2
    assert kinds(render())["Deployment"][0]["spec"]["replicas"] == 1
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--standalone" not in args, "replicas must elect a leader"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {item["name"]: item["value"] if "value" in item else item["valueFrom"]["fieldRef"]["fieldPath"]
           for item in container["env"]}
    assert (env["POD_NAME"], env["POD_NAMESPACE"]) == ("metadata.name", "metadata.namespace")
    assert env["RTO_TRAINER_IMAGE"] == "registry.local/trainer:v2"
    assert env["RTO_METRICS_LINGER_SECONDS"] == "45"
    # The operator reads every RTO_* variable the chart sets.
    from reasoning_operator.config import OperatorConfig
    assert OperatorConfig.from_env(env).trainer_image == "registry.local/trainer:v2"


def test_monitoring_objects_scrape_the_operator_and_every_stage_pod():
    found = kinds(render(values_of(CHART / "ci/monitoring-values.yaml")))
    service_monitor, pod_monitor = found["ServiceMonitor"][0], found["PodMonitor"][0]
    service = found["Service"][0]
    assert service_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service_monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    # The selector matches the labels the operator puts on stage pods.
    from reasoning_operator.desired import Run
    pod_labels = Run("r", "ns", "uid-0000").labels("sft")
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    rule_names = [rule["alert"] for group in found["PrometheusRule"][0]["spec"]["groups"] for rule in group["rules"]]
    assert {"ReasoningStageFailed", "ReasoningTrainingStalled", "ReasoningGpuMemoryNearLimit"} <= set(rule_names)
    assert found["ConfigMap"][0]["metadata"]["namespace"] == "monitoring"


def test_webhook_serves_the_operators_handler_with_a_cert_manager_certificate():
    from reasoning_operator.handlers import WEBHOOK_ID

    found = kinds(render(values_of(CHART / "ci/webhook-values.yaml")))
    webhook = found["ValidatingWebhookConfiguration"][0]
    certificate = found["Certificate"][0]
    assert webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == \
        f"{release.NAMESPACE}/{certificate['metadata']['name']}"
    assert certificate["spec"]["issuerRef"] == {"name": "internal-ca", "kind": "ClusterIssuer"}
    assert "Issuer" not in found  # the named issuer is used, no self-signed one is made
    hook = webhook["webhooks"][0]
    assert hook["clientConfig"]["service"]["path"] == f"/{WEBHOOK_ID}"
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["ml-team"]
    args = found["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--webhook-port=9443" in args and "--webhook-cert=/etc/webhook/tls.crt" in args
    services = {service["metadata"]["name"]: service for service in found["Service"]}
    assert hook["clientConfig"]["service"]["name"] in services
    assert "Issuer" in kinds(render({"webhook": {"enabled": True}}))


def test_webhook_never_blocks_by_default_and_can_call_an_operator_outside_the_cluster():
    assert kinds(render({"webhook": {"enabled": True}}))["ValidatingWebhookConfiguration"][0]["webhooks"][0][
        "failurePolicy"] == "Ignore"
    found = kinds(render({"webhook": {"enabled": True, "url": "https://127.0.0.1:9443/validate", "caBundle": "Q0E="}}))
    hook = found["ValidatingWebhookConfiguration"][0]
    assert hook["webhooks"][0]["clientConfig"] == {"url": "https://127.0.0.1:9443/validate", "caBundle": "Q0E="}
    assert "annotations" not in hook["metadata"] and "Certificate" not in found and len(found["Service"]) == 1
    assert not any(arg.startswith("--webhook") for arg in found["Deployment"][0]["spec"]["template"]["spec"][
        "containers"][0]["args"])
    with pytest.raises(helm.HelmRenderError, match="webhook.caBundle"):
        render({"webhook": {"enabled": True, "url": "https://127.0.0.1:9443/validate"}})


def test_the_crd_is_a_kept_template_that_one_release_owns():
    crd = kinds(render())["CustomResourceDefinition"][0]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["spec"] == yaml.safe_load((ROOT / "manifests/crd.yaml").read_text())["spec"]
    assert "CustomResourceDefinition" not in kinds(render({"crds": {"install": False}}))
    # install.yaml's objects (and crd.yaml) carry the README release's ownership, so Helm adopts them.
    for document in list(yaml.safe_load_all((ROOT / release.INSTALL).read_text()))[1:]:
        assert document["metadata"]["annotations"]["meta.helm.sh/release-name"] == release.RELEASE, document["kind"]
    assert yaml.safe_load((ROOT / "manifests/crd.yaml").read_text())["metadata"]["annotations"][
        "meta.helm.sh/release-namespace"] == release.NAMESPACE


def test_notes_tell_the_user_what_to_do_next():
    text = release.notes()
    assert "kubectl -n reasoning-operator rollout status deploy/reasoning-operator" in text
    assert "manifests/examples/run.yaml" in text and "serviceMonitor.enabled" in text
    assert "Uninstalling keeps the CRD and every run" in text


def test_versions_agree_across_package_chart_and_images():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = importlib.metadata.version("reasoning-operator")
    assert chart["appVersion"] == version and DEFAULT_TRAINER_IMAGE.endswith(f":{version}")


def pins(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    assert all(line.count("==") == 1 for line in lines), f"{path}: every requirement is pinned with =="
    return dict(line.split("==") for line in lines)


@pytest.mark.parametrize("image", ["operator", "trainer"])
def test_images_pin_exactly_what_the_tests_ran_with(image):
    locked = pins(ROOT / "constraints.txt")
    for name, version in pins(ROOT / f"images/{image}/requirements.txt").items():
        assert locked.get(name) == version, f"{name}: the image pins {version}, constraints.txt {locked.get(name)}"
        assert importlib.metadata.version(name) == version, f"{name}: the image pins {version}"
    assert f'DEEPSPEED_VERSION={locked["deepspeed"]}' in (ROOT / "images/trainer/Dockerfile").read_text()


def test_dockerfiles_pass_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    dockerfiles = sorted(str(path) for path in (ROOT / "images").glob("*/Dockerfile"))
    assert len(dockerfiles) == 2
    checked = subprocess.run([hadolint, *dockerfiles], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dashboard_has_the_variables_and_panels_users_look_for():
    built = dashboard.build()
    variables = [variable["name"] for variable in built["templating"]["list"]]
    assert variables == ["datasource", "namespace", "run", "stage"]
    titles = {panel["title"] for panel in built["panels"]}
    assert {"GPU memory per GPU (trainer)", "GPU memory per GPU (DCGM)", "Step time p50 / p95",
            "Tokens per second", "Loss", "Reward", "Accuracy by benchmark and method", "Average parallelism",
            "Stage progress", "Runs by phase", "Operator errors and reconcile latency"} <= titles
    expressions = [target["expr"] for panel in built["panels"] for target in panel.get("targets", [])]
    assert any("DCGM_FI_DEV_FB_USED" in expr for expr in expressions)
    assert all(re.search(r'run=~"\$run"|\(\$run\)', expr) for expr in expressions
               if "rto_operator" not in expr), "every trainer panel follows the run variable"
