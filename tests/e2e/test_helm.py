"""The chart installed, upgraded and uninstalled on a real control plane by Helm's own Go library
(helm-python-sdk), with the command lines of the README's "Install in a cluster" section: a line
that is not in the README fails the test, so the README shows exactly what these tests run.

kwok plays the operator's Deployment (its pod "runs" without a container), so the operator runs
here as the Deployment says (``OperatorProcess.as_deployed``: the pod's arguments and environment),
logged in with a token of the ServiceAccount that Helm created. The kit runs with the
OwnerReferencesPermissionEnforcement admission plugin (``kit.KIT_ENV``), as OpenShift does.
"""

from __future__ import annotations

import base64
import json
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from kit import ROOT, Cluster, OperatorProcess, free_port, open_crd, token_kubeconfig, wait_for
from kubernetes import client

helm = pytest.importorskip("helm_python")

pytestmark = pytest.mark.e2e

RELEASE = NAMESPACE = "reasoning-operator"  # the README's release name and namespace
CRD = "reasoningtrainings.reasoning.dev"
EXAMPLE = ROOT / "manifests/examples/run.yaml"  # the fast preset's run gsm8k-fast


class HelmCli:
    """Runs a README helm line (install, upgrade, uninstall) through Helm's Go library."""

    def __init__(self, cluster: Cluster):
        self.kubeconfig = cluster.kubeconfig
        self.readme = _readme_command_lines()

    def __call__(self, line: str, chart: Path | None = None) -> dict:
        assert line in self.readme, f"not a command of the README's Helm section: {line}"
        words = shlex.split(line)
        assert words[0] == "helm", line
        action, positional, options, sets = words[1], [], {}, []
        rest = iter(words[2:])
        for word in rest:
            if word in ("-n", "--namespace"):
                options["namespace"] = next(rest)
            elif word == "--set":
                sets.append(next(rest))
            elif word in ("--create-namespace", "--reuse-values", "--force-conflicts"):
                options[word.lstrip("-").replace("-", "_")] = True
            else:
                assert not word.startswith("-"), f"flag {word} not translated to the library"
                positional.append(word)
        config = helm.Config(kubeconfig_path=self.kubeconfig, namespace=options.pop("namespace", "default"))
        values = helm.parse_set_string(",".join(sets)) if sets else {}
        with config:
            if action == "uninstall":
                return config.uninstall(positional[0])
            name, chart_path = positional[0], chart or ROOT / positional[1]
            with helm.Chart.load(str(chart_path)) as loaded:
                if options.pop("force_conflicts", False):
                    return _upgrade_forcing_conflicts(config, loaded, name, values, **options)
                run = config.install if action == "install" else config.upgrade
                return run(loaded, name, values, **options)


def _upgrade_forcing_conflicts(config, chart, name: str, values: dict, reuse_values: bool = False) -> dict:
    """``helm upgrade --force-conflicts``: helm-python-sdk 0.2.2's ``upgrade()`` does not pass the
    option on, while the Helm library under it takes it."""
    from helm_python import _native
    from helm_python.config import _NONE

    options = {"force_conflicts": True, **({"reuse_values": True} if reuse_values else {})}
    return json.loads(_native.call_string("helm_upgrade", config._raw(), _native.HANDLE(_NONE), chart._raw(), None,
                                          name, json.dumps(values), json.dumps(options)))


def _readme_command_lines() -> set[str]:
    """Each shell line of the README's code blocks, continuation lines joined."""
    lines, current = set(), ""
    for raw in (ROOT / "README.md").read_text().splitlines():
        text = raw.split("  #", 1)[0].strip()
        current = f"{current} {text}".strip() if current else text
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        lines.add(" ".join(current.split()))
        current = ""
    return lines


@pytest.fixture(scope="session")
def cluster():
    started = Cluster.start_or_skip()
    started.remove_crd()  # each test's release installs it, as a first install does
    yield started
    started.stop()


@pytest.fixture
def helm_cli(cluster):
    cli = HelmCli(cluster)
    yield cli
    # Every test leaves the cluster as it found it: no release, no operator objects.
    config = helm.Config(kubeconfig_path=cluster.kubeconfig, namespace=NAMESPACE)
    with config:
        config.uninstall(RELEASE, ignore_not_found=True)


@pytest.fixture
def namespace(cluster):
    name = f"helm-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    wait_for(lambda: cluster.core.read_namespaced_service_account("default", name), 30, "the default account")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def deployment(cluster: Cluster):
    return client.AppsV1Api(cluster.api).read_namespaced_deployment(RELEASE, NAMESPACE)


def operator_as_deployed(cluster: Cluster, folder: Path, *args: str) -> OperatorProcess:
    installed = deployment(cluster)
    account = installed.spec.template.spec.service_account_name
    return OperatorProcess.as_deployed(token_kubeconfig(cluster, NAMESPACE, account, folder), installed, folder,
                                       *args).start()


def phase(cluster: Cluster, namespace: str, name: str) -> str | None:
    return (cluster.run(namespace, name).get("status") or {}).get("phase")


def assert_no_refusal(operator: OperatorProcess) -> None:
    assert not operator.permission_refusals(), f"the chart's account was refused a call:\n{operator.log()[-3000:]}"


def test_default_install_runs_a_training_on_its_own_account_and_uninstall_keeps_crd_and_runs(
        cluster, helm_cli, namespace, tmp_path):
    release = helm_cli("helm install reasoning-operator charts/reasoning-operator -n reasoning-operator "
                       "--create-namespace")
    assert release["status"] == "deployed"
    crd = client.ApiextensionsV1Api(cluster.api).read_custom_resource_definition(CRD)
    assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
    assert crd.metadata.annotations["meta.helm.sh/release-name"] == RELEASE

    operator = operator_as_deployed(cluster, tmp_path)
    cluster.kubectl("apply", "-f", str(EXAMPLE), f"--namespace={namespace}")
    try:
        wait_for(lambda: phase(cluster, namespace, "gsm8k-fast") == "Succeeded", 120, "the run to succeed")
    finally:
        operator.kill()
    # Every child carries a deletion-blocking ownerReference; the strict admission plugin let them in.
    assert_no_refusal(operator)

    uninstalled = helm_cli("helm uninstall reasoning-operator -n reasoning-operator")
    assert "kept due to the resource policy:\n[CustomResourceDefinition] reasoningtrainings.reasoning.dev" \
        in uninstalled["info"]
    assert client.ApiextensionsV1Api(cluster.api).read_custom_resource_definition(CRD).metadata.uid == crd.metadata.uid
    assert phase(cluster, namespace, "gsm8k-fast") == "Succeeded", "the run and its results outlive the operator"
    assert cluster.kubectl("get", "deployment,serviceaccount", f"--namespace={NAMESPACE}", "-o", "name",
                           "--selector=app.kubernetes.io/instance=reasoning-operator") == ""
    assert cluster.kubectl("get", "clusterrole", RELEASE, check=False) == ""
    # No finalizer outlives the operator: deleting a run needs no operator.
    cluster.kubectl("delete", "rt", "gsm8k-fast", f"--namespace={namespace}", "--timeout=30s")


def test_the_strict_admission_plugin_is_on_and_refuses_what_the_charts_rbac_allows(cluster, helm_cli, namespace,
                                                                                     tmp_path):
    """Without ``update`` on reasoningtrainings/finalizers, a blocking ownerReference is refused:
    so the suite really runs where the plugin is on, and the chart's rule is what lets it pass."""
    helm_cli("helm install reasoning-operator charts/reasoning-operator -n reasoning-operator --create-namespace")
    cluster.kubectl("apply", "-f", str(EXAMPLE), f"--namespace={namespace}")
    run = cluster.run(namespace, "gsm8k-fast")
    cluster.kubectl("create", "serviceaccount", "no-finalizers", f"--namespace={namespace}")
    cluster.kubectl("create", "role", "no-finalizers", "--verb=create", "--resource=configmaps",
                    f"--namespace={namespace}")
    cluster.kubectl("create", "rolebinding", "no-finalizers", "--role=no-finalizers",
                    f"--serviceaccount={namespace}:no-finalizers", f"--namespace={namespace}")
    kubeconfig = token_kubeconfig(cluster, namespace, "no-finalizers", tmp_path)
    owned = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned", "ownerReferences": [{
        "apiVersion": "reasoning.dev/v1alpha1", "kind": "ReasoningTraining", "name": "gsm8k-fast",
        "uid": run["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}]}}
    refused = cluster.kubectl_as(kubeconfig, "create", "-f", "-", f"--namespace={namespace}",
                                 input=yaml.safe_dump(owned))
    assert refused.returncode != 0 and "cannot set blockOwnerDeletion" in refused.stderr, refused.stderr


def test_watch_namespaces_must_exist_and_get_roles_only_there(cluster, helm_cli):
    teams = ["ml-team", "research"]
    for team in teams:
        cluster.kubectl("delete", "namespace", team, "--ignore-not-found", "--wait=true", "--timeout=60s")
    line = ("helm install reasoning-operator charts/reasoning-operator -n reasoning-operator --create-namespace "
            "--set 'watchNamespaces={ml-team,research}'")
    with pytest.raises(helm.HelmError, match='watchNamespaces: namespace "ml-team" does not exist. Create it '
                                             r'first \(kubectl create namespace ml-team\)'):
        helm_cli(line)
    try:
        for team in teams:
            assert f"kubectl create namespace {team}" in helm_cli.readme
            cluster.kubectl("create", "namespace", team)
        helm_cli(line)
        for team in teams:
            assert cluster.kubectl("get", "role,rolebinding", RELEASE, f"--namespace={team}", "-o", "name").split() \
                == [f"role.rbac.authorization.k8s.io/{RELEASE}", f"rolebinding.rbac.authorization.k8s.io/{RELEASE}"]
        assert cluster.kubectl("get", "clusterrole", RELEASE, check=False) == "", "nothing cluster-wide"
        args = deployment(cluster).spec.template.spec.containers[0].args
        assert "--namespace=ml-team" in args and "--namespace=research" in args
    finally:
        for team in teams:
            cluster.kubectl("delete", "namespace", team, "--wait=false", check=False)


FOREIGN_CRDS = [open_crd("monitoring.coreos.com", kind) for kind in ("ServiceMonitor", "PodMonitor",
                                                                         "PrometheusRule")] + \
               [open_crd("cert-manager.io", kind) for kind in ("Issuer", "Certificate")]
MONITORING = ("helm upgrade reasoning-operator charts/reasoning-operator -n reasoning-operator --reuse-values "
              "--set serviceMonitor.enabled=true,podMonitor.enabled=true,prometheusRule.enabled=true "
              "--set serviceMonitor.labels.release=kube-prometheus-stack,podMonitor.labels.release=kube-prometheus-stack "
              "--set prometheusRule.labels.release=kube-prometheus-stack")
WEBHOOK = ("helm upgrade reasoning-operator charts/reasoning-operator -n reasoning-operator --reuse-values "
           "--set webhook.enabled=true")


def test_monitoring_and_webhook_say_which_api_is_missing_then_install_once_it_is_there(cluster, helm_cli, namespace):
    helm_cli("helm install reasoning-operator charts/reasoning-operator -n reasoning-operator --create-namespace")
    with pytest.raises(helm.HelmError, match=r"serviceMonitor.enabled=true needs monitoring.coreos.com/v1/"
                                             r"ServiceMonitor, which this cluster does not serve"):
        helm_cli(MONITORING)
    with pytest.raises(helm.HelmError, match=r"webhook.enabled=true needs cert-manager.io/v1/Certificate"):
        helm_cli(WEBHOOK)
    try:
        cluster.apply(*FOREIGN_CRDS)
        for crd in FOREIGN_CRDS:
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", "--timeout=60s")
        helm_cli(MONITORING)
        release = helm_cli(WEBHOOK)
        assert release["revision"] == 3  # the two refused upgrades left no revision behind
        created = cluster.kubectl("get", "servicemonitors,podmonitors,prometheusrules,issuers,certificates",
                                  f"--namespace={NAMESPACE}", "-o", "name").split()
        assert sorted(name.split("/")[0].split(".")[0] for name in created) == [
            "certificate", "issuer", "podmonitor", "prometheusrule", "servicemonitor"]
        webhook = client.AdmissionregistrationV1Api(cluster.api).read_validating_webhook_configuration(RELEASE)
        assert webhook.webhooks[0].failure_policy == "Ignore"
        # No operator pod answers the webhook's Service here (its address refuses connections, as a
        # restarting operator's would): the run is admitted all the same.
        cluster.kubectl("apply", "-f", str(EXAMPLE), f"--namespace={namespace}")
        assert cluster.run(namespace, "gsm8k-fast")
        helm_cli("helm uninstall reasoning-operator -n reasoning-operator")
        assert cluster.kubectl("get", "servicemonitors,podmonitors,prometheusrules,issuers,certificates",
                               f"--namespace={NAMESPACE}", "-o", "name") == ""
    finally:
        cluster.kubectl("delete", "crd", *[crd["metadata"]["name"] for crd in FOREIGN_CRDS], "--ignore-not-found",
                        "--wait=false")


def _self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "tls.crt", folder / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_webhook_on_loopback_refuses_an_invalid_run_and_admits_runs_while_the_operator_is_away(
        cluster, helm_cli, namespace, tmp_path):
    cert, key = _self_signed(tmp_path)
    port = free_port()
    helm_cli("helm install reasoning-operator charts/reasoning-operator -n reasoning-operator --create-namespace")
    config = helm.Config(kubeconfig_path=cluster.kubeconfig, namespace=NAMESPACE)
    with config, helm.Chart.load(str(ROOT / "charts/reasoning-operator")) as chart:
        # webhook.url (values.yaml): an operator served outside the cluster, here on loopback.
        config.upgrade(chart, RELEASE, {"webhook": {"enabled": True, "url": f"https://127.0.0.1:{port}/validate",
                                                    "caBundle": base64.b64encode(cert.read_bytes()).decode()}},
                       reuse_values=True)
    operator = operator_as_deployed(cluster, tmp_path, f"--webhook-port={port}", "--webhook-addr=127.0.0.1",
                                    f"--webhook-cert={cert}", f"--webhook-key={key}")
    invalid = yaml.safe_load(EXAMPLE.read_text())
    del invalid["spec"]["storage"]
    invalid["metadata"]["name"] = "no-volume"

    def refused() -> str | None:
        # A server-side dry run passes admission and stores nothing, so it can be asked again and
        # again until the operator's webhook is up (until then, Ignore admits it).
        done = cluster.kubectl_as(cluster.kubeconfig, "create", "--dry-run=server", "-f", "-",
                                  f"--namespace={namespace}", input=yaml.safe_dump(invalid))
        return done.stderr if done.returncode != 0 else None

    try:
        message = wait_for(refused, 60, "the webhook to refuse a run without a volume", interval=1)
    except AssertionError:
        raise AssertionError(f"the webhook never refused; the operator's log:\n{operator.log()[-3000:]}") from None
    finally:
        operator.kill()
    assert "admission webhook" in message and "spec.storage" in message, message
    assert_no_refusal(operator)
    # The operator is gone: its URL refuses connections, and failurePolicy Ignore admits the run.
    cluster.kubectl("apply", "-f", "-", f"--namespace={namespace}", input=yaml.safe_dump(invalid))
    assert cluster.run(namespace, "no-volume")


def newer_chart(folder: Path) -> Path:
    """The chart as its next version: appVersion 9.9.9, a CRD with one more column, two replicas."""
    newer = folder / "reasoning-operator"
    shutil.copytree(ROOT / "charts/reasoning-operator", newer)
    metadata = yaml.safe_load((newer / "Chart.yaml").read_text())
    metadata.update(version="9.9.9", appVersion="9.9.9")
    (newer / "Chart.yaml").write_text(yaml.safe_dump(metadata))
    crd_path = newer / "files/reasoningtrainings-crd.yaml"
    crd = yaml.safe_load(crd_path.read_text())
    crd["spec"]["versions"][0]["additionalPrinterColumns"].append(
        {"name": "Upgraded", "type": "string", "jsonPath": ".metadata.name"})
    crd_path.write_text(yaml.safe_dump(crd))
    (newer / "values.yaml").write_text((newer / "values.yaml").read_text().replace("replicas: 1", "replicas: 2"))
    return newer


def test_upgrade_changes_values_operator_version_and_the_crd_in_place(cluster, helm_cli, namespace, tmp_path):
    helm_cli("helm install reasoning-operator charts/reasoning-operator -n reasoning-operator --create-namespace")
    cluster.kubectl("apply", "-f", str(EXAMPLE), f"--namespace={namespace}")
    newer = newer_chart(tmp_path)

    release = helm_cli("helm upgrade reasoning-operator charts/reasoning-operator -n reasoning-operator", chart=newer)
    assert release["revision"] == 2 and release["status"] == "deployed"
    installed = deployment(cluster)
    assert installed.spec.replicas == 2
    assert installed.spec.template.spec.containers[0].image.endswith(":9.9.9")
    columns = client.ApiextensionsV1Api(cluster.api).read_custom_resource_definition(CRD) \
        .spec.versions[0].additional_printer_columns
    assert "Upgraded" in [column.name for column in columns]
    assert cluster.run(namespace, "gsm8k-fast"), "the run survives the CRD's upgrade"

    helm_cli("helm upgrade reasoning-operator charts/reasoning-operator -n reasoning-operator")  # and back
    columns = client.ApiextensionsV1Api(cluster.api).read_custom_resource_definition(CRD) \
        .spec.versions[0].additional_printer_columns
    assert "Upgraded" not in [column.name for column in columns]
    assert deployment(cluster).spec.replicas == 1


def test_install_yaml_and_helm_take_each_others_objects_over(cluster, helm_cli, namespace, tmp_path):
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "manifests/install.yaml"))
    cluster.kubectl("apply", "-f", str(EXAMPLE), f"--namespace={namespace}")
    account_uid = cluster.core.read_namespaced_service_account(RELEASE, NAMESPACE).metadata.uid

    helm_cli("helm install reasoning-operator charts/reasoning-operator -n reasoning-operator")
    assert cluster.core.read_namespaced_service_account(RELEASE, NAMESPACE).metadata.uid == account_uid, \
        "Helm took the ServiceAccount over in place"
    assert cluster.run(namespace, "gsm8k-fast")
    # kubectl still co-owns every field it applied, so Helm's server-side apply refuses to change one
    # (a new version changes every object's labels) unless told to take the fields over.
    newer = newer_chart(tmp_path)
    with pytest.raises(helm.HelmError, match='conflicts? with "kubectl"'):
        helm_cli("helm upgrade reasoning-operator charts/reasoning-operator -n reasoning-operator", chart=newer)
    release = helm_cli("helm upgrade reasoning-operator charts/reasoning-operator -n reasoning-operator "
                       "--force-conflicts", chart=newer)
    assert release["status"] == "deployed" and deployment(cluster).spec.replicas == 2

    helm_cli("helm uninstall reasoning-operator -n reasoning-operator")
    assert cluster.run(namespace, "gsm8k-fast"), "uninstall keeps the CRD and the runs"
    assert "kubectl apply --server-side --force-conflicts -f manifests/install.yaml" in helm_cli.readme
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "manifests/install.yaml"))
    assert deployment(cluster).spec.replicas == 1
    assert cluster.run(namespace, "gsm8k-fast")
    # Leave no field kubectl co-owns behind for a later test: remove what install.yaml made, CRD included.
    cluster.kubectl("delete", "-f", str(ROOT / "manifests/install.yaml"), "--timeout=90s")
