"""Every malformed resource in ``malformed.py`` is refused by ``rto validate`` and by the operator's
admission (the reconciler's and the webhook's check), each naming the same field path, with no
traceback and without repeating a pasted secret. The API server's side is in e2e/test_operator.py."""

import pytest
import yaml

from malformed import BASE, CASES, FILE_ONLY, TOKEN
from pod_template_cases import CASES as POD_CASES
from reasoning_operator.admission import Rejected, admit
from reasoning_trainer.cli import main


def run_validate(tmp_path, capsys, text: str, *flags: str) -> tuple[int, str]:
    manifest = tmp_path / "run.yaml"
    manifest.write_text(text)
    code = main(["validate", "-f", str(manifest), *flags])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_suite_covers_every_field_group():
    assert len(CASES) + len(FILE_ONLY) >= 40
    groups = {case.path.split(".")[1] if case.path.startswith("spec.") else case.path.split(".")[0]
              for case in CASES}
    assert {"apiVersion", "kind", "metadata", "spec", "storage", "hfTokenSecret", "podLabels", "tolerations",
            "gpu", "stages", "models", "nodeSelector", "affinity"} <= groups


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_rto_validate_refuses_naming_the_field(case, tmp_path, capsys):
    code, output = run_validate(tmp_path, capsys, yaml.safe_dump(case.resource))
    assert code == 1, output
    lines = output.splitlines()
    assert lines[0] == "invalid:" and any(line.startswith(f"  {case.path}:") for line in lines[1:]), output
    assert "Traceback" not in output and TOKEN not in output
    if case.cluster_only:
        assert "[on a cluster; --local skips this]" in output
        assert run_validate(tmp_path, capsys, yaml.safe_dump(case.resource), "--local")[0] == 0


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_the_operator_refuses_naming_the_same_field(case):
    with pytest.raises(Rejected) as refused:
        admit(case.resource)
    assert any(issue.path == case.path for issue in refused.value.issues), refused.value.issues
    assert TOKEN not in str(refused.value)


@pytest.mark.parametrize("case", POD_CASES, ids=lambda case: case.id)
def test_tolerations_and_affinity_follow_the_pod_spec_rules(case):
    resource = {**BASE, "spec": {**BASE["spec"], case.field: case.value}}
    if case.path is None:
        admit(resource)
        return
    with pytest.raises(Rejected) as refused:
        admit(resource)
    assert [issue.path for issue in refused.value.issues] == [case.path], refused.value.issues


@pytest.mark.parametrize("case_id, path, text", FILE_ONLY, ids=[case[0] for case in FILE_ONLY])
def test_a_key_written_twice_is_refused_with_both_lines(case_id, path, text, tmp_path, capsys):
    code, output = run_validate(tmp_path, capsys, text)
    assert code == 1 and f"  {path}: written twice (lines " in output, output


@pytest.mark.parametrize("target, expected", [
    ("missing.yaml", "no such file"),
    (".", "is a directory"),
])
def test_files_that_cannot_be_read_are_named_not_a_traceback(target, expected, tmp_path, capsys):
    assert main(["validate", "-f", str(tmp_path / target)]) == 1
    assert expected in capsys.readouterr().err


def test_non_utf8_input_and_bad_flags_get_a_message_not_a_traceback(tmp_path, capsys):
    manifest = tmp_path / "run.yaml"
    manifest.write_bytes(b"apiVersion: reasoning.dev/v1alpha1\nmetadata: {name: caf\xe9}\n")
    assert main(["validate", "-f", str(manifest)]) == 1
    assert "is not UTF-8 text" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["plan", "--preset", "tiny", "--gpu-memory", "80GB"])
    assert exited.value.code == 2
    assert "--gpu-memory: '80GB' is not a memory quantity; write it like 24Gi" in capsys.readouterr().err


def test_numbers_read_as_kubectl_reads_them():
    """``1e-5`` is a number to kubectl (and YAML 1.2); PyYAML's default would read a string."""
    from reasoning_trainer.schema import manifest_yaml

    assert manifest_yaml.load("learningRate: 1e-5\nquoted: '1e-5'") == {"learningRate": 1e-5, "quoted": "1e-5"}
