"""Static checks of both synthesized variants: cfn-lint finds no errors, cdk-nag's AwsSolutions pack
no unacknowledged finding (synthesis fails on one), and every acknowledgement says why."""

from __future__ import annotations

import json

import pytest
from cfnlint.api import lint_file


@pytest.fixture(params=["cpu", "gpu"])
def any_synth(request):
    return request.getfixturevalue("synth" if request.param == "cpu" else "gpu_synth")


def test_cfn_lint_reports_no_errors(any_synth):
    matches = lint_file(any_synth.template_path)
    errors = [f"{m.rule.id} {m.message} ({m.path})" for m in matches if m.rule.id.startswith("E")]
    assert errors == []


def test_cdk_nag_aws_solutions_has_no_unacknowledged_findings(any_synth):
    report = any_synth.outdir / "validation-report.json"  # written only when a validation fails
    if report.exists():
        for plugin in json.loads(report.read_text())["pluginReports"]:
            assert plugin["conclusion"] == "success", plugin["violations"]
    assert "AwsSolutions-" not in any_synth.output


def test_every_acknowledged_nag_finding_has_a_reason(any_synth):
    acknowledged = {}
    for resource in any_synth.template["Resources"].values():
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", []):
            if rule["id"].startswith("AwsSolutions-"):
                acknowledged[rule["id"]] = rule["reason"]
    assert "AwsSolutions-EC23" in acknowledged  # the public load balancer, at least, is on purpose
    for rule, reason in acknowledged.items():
        assert len(reason.split()) >= 5, f"{rule}: {reason!r} is no reason"


def test_gpu_option_runs_torchserve_on_gpu_ec2_capacity(gpu_synth, synth):
    template = gpu_synth.template
    (task_id, task), = [(k, r["Properties"]) for k, r in gpu_synth.resources("AWS::ECS::TaskDefinition").items()
                        if any(c["Name"] == "model-server" for c in r["Properties"]["ContainerDefinitions"])]
    assert task["RequiresCompatibilities"] == ["EC2"] and task["NetworkMode"] == "awsvpc"
    server = next(c for c in task["ContainerDefinitions"] if c["Name"] == "model-server")
    assert server["ResourceRequirements"] == [{"Type": "GPU", "Value": "1"}]
    service = next(r["Properties"] for r in gpu_synth.resources("AWS::ECS::Service").values()
                   if r["Properties"]["TaskDefinition"] == {"Ref": task_id})
    (strategy,) = service["CapacityProviderStrategy"]
    provider = template["Resources"][strategy["CapacityProvider"]["Ref"]]
    assert provider["Type"] == "AWS::ECS::CapacityProvider"
    (launch_template,) = gpu_synth.resources("AWS::EC2::LaunchTemplate").values()
    data = launch_template["Properties"]["LaunchTemplateData"]
    assert data["InstanceType"] == "g4dn.xlarge"
    image_parameter = data["ImageId"]["Ref"]
    assert "gpu" in template["Parameters"][image_parameter]["Default"]  # the ECS-optimized GPU AMI
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert all(d["Ebs"]["Encrypted"] for d in data["BlockDeviceMappings"])
    # Still private: no public address, the same single ingress rule from the workers.
    assert service["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"
    # The default stack has none of it.
    assert not synth.resources("AWS::EC2::LaunchTemplate") and not synth.resources("AWS::ECS::CapacityProvider")
