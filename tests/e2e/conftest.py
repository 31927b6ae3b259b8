"""Fixtures of the e2e suite: one real control plane per session, a fresh namespace per test."""

import uuid

import pytest
import yaml
from kit import ROOT, Cluster, OperatorProcess, Unavailable, operator_kubeconfig, wait_for


@pytest.fixture(scope="session")
def cluster():
    try:
        started = Cluster.start()
    except Unavailable as reason:
        pytest.skip(str(reason))
    started.apply(yaml.safe_load((ROOT / "manifests/crd.yaml").read_text()))
    started.kubectl("wait", "--for=condition=Established", "crd/reasoningtrainings.reasoning.dev", "--timeout=60s")
    yield started
    started.stop()


@pytest.fixture
def namespace(cluster):
    name = f"e2e-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    # The default ServiceAccount appears a moment later; Jobs' pods need it.
    wait_for(lambda: cluster.core.read_namespaced_service_account("default", name), 30, "the default account")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def start_operator(cluster, namespace, tmp_path):
    """Start ``rto operator`` on the chart's RBAC in the test's namespace; stopped afterwards,
    and its log must show no request the RBAC refused."""
    kubeconfig = operator_kubeconfig(cluster, namespace, tmp_path)
    started = []

    def start(*args, env=None):
        process = OperatorProcess(kubeconfig, namespace, tmp_path, *args, env=env).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()
    for process in started:
        if process.forbidden_expected:
            continue
        log = process.log()
        assert "Forbidden" not in log and " 403" not in log, f"the chart's RBAC refused a call:\n{log[-3000:]}"
