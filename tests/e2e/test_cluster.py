"""End to end on the cluster named by KUBECONFIG (kind, k3d or a real one): ``make e2e``.

Installs the CRD, runs the operator with kopf's KopfRunner, applies a tiny run and follows it
through every stage to Succeeded, then deletes it and checks that its Jobs go with it.

With RTO_E2E_TRAINER_IMAGE set (an image the nodes can pull, built by ``make images``), the
stage pods really train on CPU. Without it, the stage pods are pinned to a node that does not
exist and the test plays their kubelet: it patches each pod to Succeeded with the trainer's
termination message, and the cluster's Job controller completes the Job from there.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid

import kopf
import pytest
import yaml
from kopf.testing import KopfRunner

from conftest import ROOT
from reasoning_operator.kube import Kube

pytestmark = pytest.mark.e2e

IMAGE = os.environ.get("RTO_E2E_TRAINER_IMAGE")
STAGE_TIMEOUT = 1800 if IMAGE else 120


@pytest.fixture
async def kube():
    if not os.environ.get("KUBECONFIG"):
        pytest.skip("no cluster: set KUBECONFIG to a kind, k3d or real cluster to run the e2e suite")
    settings = kopf.OperatorSettings()
    connection = kopf.login_via_client(settings=settings, logger=logging.getLogger("e2e"))
    client = Kube(connection)
    try:
        await client.request("GET", "/version")
    except Exception as error:  # any failure to reach the API server means: no cluster here
        await client.close()
        pytest.skip(f"the cluster in KUBECONFIG is not reachable: {error}")
    yield client
    await client.close()


@pytest.fixture
async def namespace(kube):
    name = f"rto-e2e-{uuid.uuid4().hex[:6]}"
    await kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    await kube.delete("Namespace", None, name)


async def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


async def play_kubelet(kube: Kube, namespace: str, run: str, stage: str) -> None:
    """Finish the stage's unscheduled pod as a kubelet would after the trainer exited 0."""
    async def pod():
        pods = await kube.list("Pod", namespace, {"reasoning.dev/run": run, "reasoning.dev/stage": stage})
        return pods[0] if pods else None

    found = await wait_for(pod, 60, f"the pod of stage {stage}")
    message = json.dumps({"stage": stage, "phase": "Succeeded", "durationSeconds": 1.0,
                          "accuracy": 0.5 if stage == "eval" else None, "metrics": {}})
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    status = {"phase": "Succeeded", "containerStatuses": [{
        "name": "trainer", "image": found["spec"]["containers"][0]["image"], "imageID": "", "ready": False,
        "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message,
                                                    "startedAt": now, "finishedAt": now}}}]}
    await kube.request("PATCH", f"/api/v1/namespaces/{namespace}/pods/{found['metadata']['name']}/status",
                        json={"status": status}, content_type="application/merge-patch+json")


async def test_a_tiny_run_goes_through_every_stage_and_is_cleaned_up_on_delete(kube, namespace):
    crd = yaml.safe_load((ROOT / "manifests/crd.yaml").read_text())
    await kube.create(crd)
    await asyncio.sleep(3)  # the API server serves a new CRD after a moment
    spec = {"preset": "tiny", "storage": {"size": "2Gi"}}
    if IMAGE:
        spec["image"] = IMAGE
    else:
        spec["nodeSelector"] = {"reasoning.dev/e2e": "no-such-node"}
    run = {"apiVersion": "reasoning.dev/v1alpha1", "kind": "ReasoningTraining",
           "metadata": {"name": "tiny", "namespace": namespace}, "spec": spec}
    args = ["run", "-m", "reasoning_operator.app", "--standalone", "--namespace", namespace]
    with KopfRunner(args, timeout=60) as runner:
        await kube.create(run)
        for stage in ("select", "sft", "rl", "eval"):
            async def stage_done(stage=stage):
                current = await kube.get("ReasoningTraining", namespace, "tiny")
                phase = ((current.get("status") or {}).get("stages") or {}).get(stage, {}).get("phase")
                assert phase != "Failed", current["status"]
                return phase == "Succeeded"

            if not IMAGE:
                await play_kubelet(kube, namespace, "tiny", stage)
            await wait_for(stage_done, STAGE_TIMEOUT, f"stage {stage} to succeed")
        current = await kube.get("ReasoningTraining", namespace, "tiny")
        assert current["status"]["phase"] == "Succeeded"
        assert current["status"]["accuracy"]
        await kube.delete("ReasoningTraining", namespace, "tiny")

        async def jobs_gone():
            return not await kube.list("Job", namespace, {"reasoning.dev/run": "tiny"})

        await wait_for(jobs_gone, 120, "the run's Jobs to be garbage-collected")
    assert runner.exit_code == 0, runner.output
    if not IMAGE:
        print("e2e: stage pods were completed by the test acting as their kubelet "
              "(set RTO_E2E_TRAINER_IMAGE to train in real pods)")
