"""A real Kubernetes control plane for the e2e suite, and the operator as a real process on it.

``Cluster.start()`` uses the cluster named by KUBECONFIG when it answers (kind, k3d, a real
one); otherwise it starts the kit in ``$RTO_K8S_KIT`` (default ``../shared/k8s`` beside the
checkout): etcd, kube-apiserver, controller-manager, scheduler, kwok GPU nodes whose pods run
to completion without containers, and a PVC provisioner, all on 127.0.0.1.

``OperatorProcess`` runs ``rto operator`` exactly as documented, logged in with the token of the
chart's ServiceAccount and bound by the chart's own RBAC, so a verb missing from the chart
fails the suite.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config, watch

ROOT = Path(__file__).resolve().parents[2]
KIT = Path(os.environ.get("RTO_K8S_KIT", ROOT.parent / "shared" / "k8s"))
# Ports and state folder of the suite's own kit, apart from a kit a developer may run on the defaults.
# OwnerReferencesPermissionEnforcement is on, as on OpenShift: a child whose ownerReference blocks
# its run's deletion needs `update` on reasoningtrainings/finalizers, so the chart's RBAC must grant it.
KIT_ENV = {"K8S_STATE": "/tmp/rto-e2e-k8s", "API_PORT": "16443", "ETCD_PORT": "22379", "KCM_PORT": "20257",
           "SCHED_PORT": "20259", "EXTRA_ADMISSION_PLUGINS": "OwnerReferencesPermissionEnforcement"}
GROUP, VERSION, PLURAL = "reasoning.dev", "v1alpha1", "reasoningtrainings"
RUN_LABEL = f"{GROUP}/run"


class Unavailable(Exception):
    """No cluster to test against: the reason, for pytest.skip."""


class Cluster:
    def __init__(self, kubeconfig: str, kit_state: Path | None, owned: bool = False):
        self.kubeconfig = kubeconfig
        self.kit_state = kit_state  # set when the suite runs on its own kit (apiserver faults need it)
        self.owned = owned  # this process started the kit, and stops it
        self._crd_applied = False
        self.api = config.new_client_from_config(config_file=kubeconfig)
        self.core = client.CoreV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)
        self.coordination = client.CoordinationV1Api(self.api)

    @classmethod
    def start(cls) -> Cluster:
        given = os.environ.get("KUBECONFIG")
        if given and _answers(given):
            return cls(given, None)
        state = Path(KIT_ENV["K8S_STATE"])
        if _answers(str(state / "kubeconfig")):  # another test module of this session started it
            return cls(str(state / "kubeconfig"), state)
        if not (KIT / "start.sh").exists():
            raise Unavailable(f"no cluster: KUBECONFIG is {'unreachable' if given else 'unset'} and the kit is not "
                              f"at {KIT} (set RTO_K8S_KIT, or KUBECONFIG to a kind, k3d or real cluster)")
        env = {**os.environ, **KIT_ENV}
        started = subprocess.run([str(KIT / "start.sh")], env=env, capture_output=True, text=True, timeout=180)
        if started.returncode != 0:
            raise RuntimeError(f"the kit did not start:\n{started.stderr[-4000:]}")
        kubeconfig = started.stdout.strip().split("=", 1)[1]
        subprocess.run([str(KIT / "nodes.sh"), "2", "8"], env=env, check=True, capture_output=True, timeout=120)
        return cls(kubeconfig, state, owned=True)

    @classmethod
    def start_or_skip(cls) -> Cluster:
        """The cluster for a test session; the tests skip with the reason when there is none."""
        try:
            return cls.start()
        except Unavailable as reason:
            pytest.skip(str(reason))

    def stop(self) -> None:
        if self.owned:
            subprocess.run([str(KIT / "stop.sh")], env={**os.environ, **KIT_ENV}, capture_output=True, timeout=60)

    # ---- kubectl, as a user types it

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        done = self.kubectl_as(self.kubeconfig, *args, input=input)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr}")
        return done.stdout

    def kubectl_as(self, kubeconfig: str | Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        binary = self.kit_state / "bin" / "kubectl" if self.kit_state else shutil.which("kubectl")
        return subprocess.run([str(binary), f"--kubeconfig={kubeconfig}", *args], input=input,
                              capture_output=True, text=True, timeout=120)

    def apply(self, *documents: dict[str, Any], namespace: str | None = None) -> None:
        args = ["apply", "-f", "-"] + ([f"--namespace={namespace}"] if namespace else [])
        self.kubectl(*args, input=yaml.safe_dump_all(documents))

    # ---- the CRD

    CRD = f"{PLURAL}.{GROUP}"

    def ensure_crd(self) -> None:
        """manifests/crd.yaml applied as the README's kubectl walkthrough does: once per session (a
        kit left running holds an older one), and again whenever it is gone."""
        if self._crd_applied:
            try:
                client.ApiextensionsV1Api(self.api).read_custom_resource_definition(self.CRD)
                return
            except client.ApiException as error:
                if error.status != 404:
                    raise
        self.apply(yaml.safe_load((ROOT / "manifests/crd.yaml").read_text()))
        self.kubectl("wait", "--for=condition=Established", f"crd/{self.CRD}", "--timeout=60s")
        self._crd_applied = True

    def remove_crd(self) -> None:
        """No CRD (and so no run) left: Helm installs its own, which one applied with kubectl would co-own."""
        self.kubectl("delete", "crd", self.CRD, "--ignore-not-found", "--wait=true", "--timeout=90s")

    def limit(self, namespace: str, name: str, hard: dict[str, str]) -> None:
        """A ResourceQuota, once the quota controller has counted the namespace (it refuses nothing before)."""
        self.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name}, "spec": {"hard": hard}},
                   namespace=namespace)
        wait_for(lambda: self.core.read_namespaced_resource_quota(name, namespace).status.hard, 30,
                 "the quota controller to count the namespace")

    # ---- reads

    def run(self, namespace: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def runs(self, namespace: str) -> list[dict[str, Any]]:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]

    def jobs(self, namespace: str) -> dict[str, Any]:
        return {job.metadata.name: job for job in self.batch.list_namespaced_job(namespace).items}

    def lease_holder(self, namespace: str, name: str = "reasoning-operator") -> str | None:
        try:
            return self.coordination.read_namespaced_lease(name, namespace).spec.holder_identity or None
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def events(self, namespace: str, run: str) -> list[Any]:
        return [event for event in self.core.list_namespaced_event(namespace).items
                if event.involved_object.name == run and event.involved_object.kind == "ReasoningTraining"]

    # ---- the kit's own processes

    def restart_apiserver(self, down_seconds: float) -> None:
        """kill -9 kube-apiserver, wait, start it again with the same command line."""
        pid_file = self.kit_state / "run" / "kube-apiserver.pid"
        pid = int(pid_file.read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        os.kill(pid, signal.SIGKILL)
        time.sleep(down_seconds)
        log = open(self.kit_state / "logs" / "kube-apiserver.log", "ab")
        process = subprocess.Popen([part.decode() for part in command], stdout=log, stderr=log,
                                   start_new_session=True)
        pid_file.write_text(str(process.pid))
        wait_for(lambda: _answers(self.kubeconfig), 60, "kube-apiserver to answer again")


def _answers(kubeconfig: str) -> bool:
    try:
        api = config.new_client_from_config(config_file=kubeconfig)
        client.VersionApi(api).get_code(_request_timeout=5)
        return True
    except Exception:  # any failure means: not reachable
        return False


def wait_for(check, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except client.ApiException:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def open_crd(group: str, kind: str, version: str = "v1") -> dict:
    """A CustomResourceDefinition of another project's kind with an open schema: enough to create its objects."""
    plural = kind.lower() + "s"
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                     "versions": [{"name": version, "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                         "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- the operator, logged in as the chart's ServiceAccount

def operator_kubeconfig(cluster: Cluster, namespace: str, folder: Path) -> Path:
    """Applies the chart's ServiceAccount and RBAC for ``namespace`` and returns a kubeconfig
    holding that account's token, nothing more."""
    from reasoning_operator import release

    documents = release.render({"watchNamespaces": [namespace]}, namespace=namespace, root=ROOT)
    kinds = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    cluster.apply(*[document for document in documents if document["kind"] in kinds])
    account = next(document for document in documents if document["kind"] == "ServiceAccount")["metadata"]["name"]
    return token_kubeconfig(cluster, namespace, account, folder)


def token_kubeconfig(cluster: Cluster, namespace: str, account: str, folder: Path) -> Path:
    """A kubeconfig that logs in with a fresh token of ServiceAccount ``namespace/account``."""
    token = cluster.kubectl("create", "token", account, f"--namespace={namespace}", "--duration=2h").strip()
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    context = next(item for item in admin["contexts"] if item["name"] == admin["current-context"])["context"]
    server = next(item for item in admin["clusters"] if item["name"] == context["cluster"])["cluster"]
    path = folder / f"operator-{namespace}.kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "operator",
        "clusters": [{"name": "cluster", "cluster": server}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "cluster", "user": "operator",
                                                        "namespace": namespace}}]}))
    return path


class OperatorProcess:
    """``rto operator --namespace NS ...`` in its own process; kill -9 and restart at will."""

    def __init__(self, kubeconfig: Path, namespace: str, log_dir: Path, *args: str, env: dict[str, str] | None = None):
        self.kubeconfig, self.namespace = kubeconfig, namespace
        self.args = ["operator", f"--namespace={namespace}", *args]
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "OMP_NUM_THREADS": "1", **(env or {})}
        self.identity = f"operator-{uuid.uuid4().hex[:6]}"
        self.log_path = log_dir / f"{self.identity}.log"
        self.process: subprocess.Popen | None = None
        # A kube-apiserver that just restarted refuses requests until its RBAC cache has synced.
        self.forbidden_expected = False

    @classmethod
    def as_deployed(cls, kubeconfig: Path, deployment: Any, log_dir: Path, *args: str) -> OperatorProcess:
        """The operator container of ``deployment`` (a V1Deployment as Helm installed it) run here:
        its arguments and environment, the downward API's pod name and namespace filled in."""
        container = deployment.spec.template.spec.containers[0]
        process = cls(kubeconfig, deployment.metadata.namespace, log_dir)
        process.args = [*container.args, *args]
        fields = {"metadata.name": process.identity, "metadata.namespace": deployment.metadata.namespace}
        for variable in container.env or []:
            process.env[variable.name] = (fields[variable.value_from.field_ref.field_path] if variable.value_from
                                          else variable.value or "")
        return process

    def start(self) -> OperatorProcess:
        rto = Path(sys.executable).parent / "rto"
        # argparse keeps the last of a repeated option: these ports and name win over the pod's.
        command = [str(rto), *self.args, "--metrics-port=0", f"--liveness=http://127.0.0.1:{free_port()}/healthz",
                   f"--identity={self.identity}"]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)

    def restart(self) -> None:
        self.kill()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def permission_refusals(self) -> list[str]:
        """Log lines of calls the cluster refused for want of permission: RBAC ("is forbidden:
        User ... cannot ...") or the ownerReference plugin ("cannot set blockOwnerDeletion"). A
        quota or Pod Security refusal is the cluster's answer to a run, not a missing rule."""
        return [line for line in self.log().splitlines()
                if "is forbidden: User" in line or "cannot set blockOwnerDeletion" in line]


class JobWatcher(threading.Thread):
    """Every Job the namespace ever had, by name: the uids it was created with, when each Job was
    first seen and when it was first seen finished (this process's clock), from a watch stream."""

    def __init__(self, cluster: Cluster, namespace: str):
        super().__init__(daemon=True)
        self.cluster, self.namespace = cluster, namespace
        self.uids: dict[str, set[str]] = defaultdict(set)
        self.created: dict[str, float] = {}
        self.finished: dict[str, float] = {}
        self._stop = threading.Event()
        self._watch = watch.Watch()
        self._version: str | None = None  # resume from here, so no event is replayed out of order

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self._watch.stream(self.cluster.batch.list_namespaced_job, self.namespace,
                                                timeout_seconds=30, resource_version=self._version):
                    self._seen(event["object"])
                    self._version = event["object"].metadata.resource_version
            except Exception:  # the API server restarting, or the version expired: watch again from now
                self._version = None
                time.sleep(0.5)

    def _seen(self, job) -> None:
        name, now = job.metadata.name, time.monotonic()
        self.uids[name].add(job.metadata.uid)
        self.created.setdefault(name, now)
        # SuccessCriteriaMet and FailureTarget come first (the operator acts on them); Complete and
        # Failed once the pods have stopped.
        done = any(condition.type in ("SuccessCriteriaMet", "FailureTarget", "Complete", "Failed")
                   and condition.status == "True" for condition in (job.status.conditions or []))
        if done:
            self.finished.setdefault(name, now)

    def stop(self) -> None:
        self._stop.set()
        self._watch.stop()

    def duplicates(self) -> dict[str, set[str]]:
        return {name: uids for name, uids in self.uids.items() if len(uids) > 1}

    def handoffs(self, run: str, stages: list[str]) -> list[float]:
        """Seconds from each stage's Job finishing to the next stage's Job existing."""
        gaps = []
        for before, after in zip(stages, stages[1:]):
            done, created = self.finished.get(f"{run}-{before}"), self.created.get(f"{run}-{after}")
            if done is not None and created is not None:
                gaps.append(created - done)
        return gaps
