"""ECS services, task roles, scaling, TorchServe's isolation, logs and images in the template."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.deploy.conftest import REPO
from udagram.settings import Settings

DEFAULTS = Settings.model_construct()


def _refs(value: Any) -> set[str]:
    """Logical ids a template value refers to (Ref / Fn::GetAtt), however deeply nested."""
    found: set[str] = set()
    if isinstance(value, dict):
        if "Ref" in value:
            found.add(value["Ref"])
        if "Fn::GetAtt" in value:
            found.add(value["Fn::GetAtt"][0])
        for item in value.values():
            found |= _refs(item)
    elif isinstance(value, list):
        for item in value:
            found |= _refs(item)
    return found


def _logical_id(synth, type_: str, predicate) -> str:
    found = [k for k, r in synth.resources(type_).items() if predicate(r["Properties"])]
    assert len(found) == 1, f"{type_}: {found}"
    return found[0]


def _named(synth, type_: str, name_property: str, parameter: str) -> str:
    return _logical_id(synth, type_, lambda p: p.get(name_property) == {"Ref": parameter})


def _task_definition(synth, container_name: str) -> tuple[str, dict[str, Any]]:
    for logical_id, resource in synth.resources("AWS::ECS::TaskDefinition").items():
        if any(c["Name"] == container_name for c in resource["Properties"]["ContainerDefinitions"]):
            return logical_id, resource["Properties"]
    raise AssertionError(f"no task definition runs {container_name}")


def _container(synth, name: str) -> dict[str, Any]:
    return next(c for c in _task_definition(synth, name)[1]["ContainerDefinitions"] if c["Name"] == name)


def _statements(synth, role_id: str) -> list[dict[str, Any]]:
    policies = [r["Properties"] for r in synth.resources("AWS::IAM::Policy").values()
                if {"Ref": role_id} in r["Properties"]["Roles"]]
    return [s for p in policies for s in p["PolicyDocument"]["Statement"]]


def _grants(synth, role_id: str) -> set[tuple[str, str]]:
    """(action, resource) pairs of a role, resources as readable strings (<LogicalId>/suffix)."""
    def render(resource: Any) -> str:
        if isinstance(resource, str):
            return resource
        if "Fn::GetAtt" in resource:
            return f"<{resource['Fn::GetAtt'][0]}>"
        if "Ref" in resource:
            return f"<{resource['Ref']}>"
        if "Fn::Join" in resource:
            return "".join(render(part) for part in resource["Fn::Join"][1])
        raise AssertionError(f"unexpected resource {resource}")

    grants = set()
    for statement in _statements(synth, role_id):
        assert statement["Effect"] == "Allow"
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources_ = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        grants |= {(a, render(r)) for a in actions for r in resources_}
    return grants


def _task_role(synth, container_name: str) -> str:
    role_id = _task_definition(synth, container_name)[1]["TaskRoleArn"]["Fn::GetAtt"][0]
    assert not synth.template["Resources"][role_id]["Properties"].get("ManagedPolicyArns"), \
        "task roles carry no managed policies"
    return role_id


@pytest.fixture(scope="module")
def ids(synth) -> dict[str, str]:
    return {
        "originals": _named(synth, "AWS::S3::Bucket", "BucketName", "OriginalsBucket"),
        "processed": _named(synth, "AWS::S3::Bucket", "BucketName", "ProcessedBucket"),
        "queue": _named(synth, "AWS::SQS::Queue", "QueueName", "QueueName"),
        "dlq": _named(synth, "AWS::SQS::Queue", "QueueName", "DeadLetterQueueName"),
        "groups": _named(synth, "AWS::DynamoDB::Table", "TableName", "GroupsTable"),
        "images": _named(synth, "AWS::DynamoDB::Table", "TableName", "ImagesTable"),
        "jobs": _named(synth, "AWS::DynamoDB::Table", "TableName", "JobsTable"),
        "image_labels": _named(synth, "AWS::DynamoDB::Table", "TableName", "ImageLabelsTable"),
        "label_counts": _named(synth, "AWS::DynamoDB::Table", "TableName", "LabelCountsTable"),
        "rate_limits": _named(synth, "AWS::DynamoDB::Table", "TableName", "RateLimitsTable"),
        "models": next(k for k, r in synth.resources("AWS::S3::Bucket").items()
                       if r["Properties"].get("VersioningConfiguration")),
    }


# ---- least privilege: each role exactly the calls its code makes ----------------------------------

def test_api_role_is_exactly_what_the_api_calls(synth, ids):
    o, p, q, g, i, j = ids["originals"], ids["processed"], ids["queue"], ids["groups"], ids["images"], ids["jobs"]
    labels, counts = ids["image_labels"], ids["label_counts"]
    dynamodb = {"BatchGetItem", "DeleteItem", "GetItem", "PutItem", "Query", "UpdateItem"}
    tables = [f"<{g}>", f"<{g}>/index/by_created", f"<{i}>", f"<{i}>/index/by_group", f"<{i}>/index/by_status",
              f"<{j}>", f"<{j}>/index/by_state", f"<{labels}>", f"<{labels}>/index/by_image", f"<{counts}>",
              f"<{ids['rate_limits']}>"]
    assert _grants(synth, _task_role(synth, "api")) == {
        # presigned POST (PutObject), presigned GET / HeadObject (GetObject), delete, on the app's prefixes
        *{(f"s3:{a}", f"<{o}>/originals/*") for a in ("PutObject", "GetObject", "DeleteObject")},
        ("s3:ListBucket", f"<{o}>"),  # HeadObject of a missing upload: 404, not 403
        *{(f"s3:{a}", f"<{p}>/processed/*") for a in ("GetObject", "DeleteObject")},
        ("sqs:GetQueueUrl", f"<{q}>"), ("sqs:SendMessage", f"<{q}>"),  # reprocessImage
        ("sqs:GetQueueAttributes", f"<{q}>"),  # the admin's bulk re-runs, paced by the queue's depth
        *{(f"dynamodb:{a}", t) for a in dynamodb for t in tables},
    }


def test_worker_role_is_exactly_what_the_worker_calls(synth, ids):
    o, p, q, d, i = ids["originals"], ids["processed"], ids["queue"], ids["dlq"], ids["images"]
    sqs = {"ChangeMessageVisibility", "DeleteMessage", "GetQueueAttributes", "GetQueueUrl", "ReceiveMessage",
           "SendMessage"}
    dynamodb = {"BatchGetItem", "GetItem", "Query", "Scan", "UpdateItem"}
    tables = [f"<{i}>", f"<{i}>/index/by_group", f"<{i}>/index/by_status"]
    label_index = {"DeleteItem", "Query", "Scan", "UpdateItem"}  # udagram/labels.py, `udagram labels rebuild`
    label_tables = [f"<{ids['image_labels']}>", f"<{ids['image_labels']}>/index/by_image", f"<{ids['label_counts']}>"]
    assert _grants(synth, _task_role(synth, "worker")) == {
        *{(f"sqs:{a}", f"<{q}>") for a in sqs},
        ("sqs:GetQueueUrl", f"<{d}>"), ("sqs:SendMessage", f"<{d}>"),
        ("s3:GetObject", f"<{o}>/originals/*"), ("s3:DeleteObject", f"<{o}>/originals/*"),
        ("s3:ListBucket", f"<{o}>"),
        ("s3:PutObject", f"<{p}>/processed/*"), ("s3:DeleteObject", f"<{p}>/processed/*"),
        *{(f"dynamodb:{a}", t) for a in dynamodb for t in tables},
        *{(f"dynamodb:{a}", t) for a in label_index for t in label_tables},
    }


def test_model_server_role_only_reads_the_archives(synth, ids):
    m = ids["models"]
    role = _task_role(synth, "model-server")
    assert _grants(synth, role) == {("s3:GetObject", f"<{m}>/model-store/*"), ("s3:ListBucket", f"<{m}>")}
    (listing,) = [s for s in _statements(synth, role) if s["Action"] == "s3:ListBucket"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["model-store/*"]}}


def test_no_role_has_wildcard_actions_and_only_ecr_login_has_a_wildcard_resource(synth):
    for role_id in synth.resources("AWS::IAM::Role"):
        for action, resource in _grants(synth, role_id):
            assert "*" not in action, (role_id, action)
            if resource == "*":
                # ecr:GetAuthorizationToken has no resource scope (execution roles).
                assert action == "ecr:GetAuthorizationToken", (role_id, action)


# ---- worker scaling: 0..N on the queue's backlog ---------------------------------------------------

def test_worker_scales_from_zero_to_n_on_queue_backlog(synth, ids):
    worker_service = _logical_id(synth, "AWS::ECS::Service",
                                 lambda p: p["TaskDefinition"] == {"Ref": _task_definition(synth, "worker")[0]})
    target_id = _logical_id(synth, "AWS::ApplicationAutoScaling::ScalableTarget",
                            lambda p: worker_service in _refs(p["ResourceId"]))
    target = synth.template["Resources"][target_id]["Properties"]
    parameters = synth.template["Parameters"]
    assert target["MinCapacity"] == {"Ref": "WorkerMinTasks"} and parameters["WorkerMinTasks"]["Default"] == 0
    assert target["MaxCapacity"] == {"Ref": "WorkerMaxTasks"} and parameters["WorkerMaxTasks"]["Default"] >= 1
    policies = {k: r["Properties"] for k, r in synth.resources("AWS::ApplicationAutoScaling::ScalingPolicy").items()
                if r["Properties"]["ScalingTargetId"] == {"Ref": target_id}}
    steps = {k: p["StepScalingPolicyConfiguration"]["StepAdjustments"] for k, p in policies.items()}
    assert any(all(s["ScalingAdjustment"] > 0 for s in adj) for adj in steps.values())
    assert any(all(s["ScalingAdjustment"] < 0 for s in adj) for adj in steps.values())
    alarms = [r["Properties"] for r in synth.resources("AWS::CloudWatch::Alarm").values()
              if _refs(r["Properties"]["AlarmActions"]) & set(policies)]
    assert len(alarms) == 2
    thresholds = {}
    for alarm in alarms:
        (expression,) = [m for m in alarm["Metrics"] if "Expression" in m]
        assert expression["Expression"] == "visible + inflight"
        inputs = {m["Id"]: m["MetricStat"]["Metric"] for m in alarm["Metrics"] if "MetricStat" in m}
        assert inputs["visible"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
        assert inputs["inflight"]["MetricName"] == "ApproximateNumberOfMessagesNotVisible"
        for metric in inputs.values():
            assert metric["Namespace"] == "AWS/SQS"
            assert _refs(metric["Dimensions"]) == {ids["queue"]}
        thresholds[alarm["ComparisonOperator"]] = alarm["Threshold"]
    # Out as soon as one upload waits; in (to 0) only when nothing waits and nothing is in flight.
    assert thresholds == {"GreaterThanOrEqualToThreshold": 1, "LessThanOrEqualToThreshold": 0}


def test_worker_stops_after_its_shutdown_grace(synth):
    worker = _container(synth, "worker")
    assert worker["StopTimeout"] > DEFAULTS.worker_shutdown_grace_seconds


# ---- TorchServe: private, reached by the workers only ----------------------------------------------

def test_model_server_is_private_and_reached_through_cloud_map(synth):
    task_id, task = _task_definition(synth, "model-server")
    service = next(r["Properties"] for r in synth.resources("AWS::ECS::Service").values()
                   if r["Properties"]["TaskDefinition"] == {"Ref": task_id})
    assert "LoadBalancers" not in service
    network = service["NetworkConfiguration"]["AwsvpcConfiguration"]
    assert network["AssignPublicIp"] == "DISABLED"
    subnets = {r["Ref"] for r in network["Subnets"]}
    for subnet in subnets:
        assert synth.template["Resources"][subnet]["Properties"]["MapPublicIpOnLaunch"] is False
    (registry,) = service["ServiceRegistries"]
    discovery_id = registry["RegistryArn"]["Fn::GetAtt"][0]
    discovery = synth.template["Resources"][discovery_id]["Properties"]
    namespace = synth.template["Resources"][discovery["NamespaceId"]["Fn::GetAtt"][0]]
    assert namespace["Type"] == "AWS::ServiceDiscovery::PrivateDnsNamespace"
    url = f"http://{discovery['Name']}.{namespace['Properties']['Name']}:{DEFAULTS.torchserve_inference_port}"
    worker_env = {e["Name"]: e["Value"] for e in _container(synth, "worker")["Environment"]}
    assert worker_env["UDAGRAM_TORCHSERVE_INFERENCE_URL"] == url


def test_only_the_workers_reach_torchserve_and_only_its_inference_port(synth):
    task_id, _ = _task_definition(synth, "model-server")
    service = next(r["Properties"] for r in synth.resources("AWS::ECS::Service").values()
                   if r["Properties"]["TaskDefinition"] == {"Ref": task_id})
    (group,) = [g["Fn::GetAtt"][0] for g in service["NetworkConfiguration"]["AwsvpcConfiguration"]["SecurityGroups"]]
    worker_task = _task_definition(synth, "worker")[0]
    worker = next(r["Properties"] for r in synth.resources("AWS::ECS::Service").values()
                  if r["Properties"]["TaskDefinition"] == {"Ref": worker_task})
    (worker_group,) = [g["Fn::GetAtt"][0]
                       for g in worker["NetworkConfiguration"]["AwsvpcConfiguration"]["SecurityGroups"]]
    inline = synth.template["Resources"][group]["Properties"].get("SecurityGroupIngress", [])
    rules = inline + [r["Properties"] for r in synth.resources("AWS::EC2::SecurityGroupIngress").values()
                      if r["Properties"]["GroupId"] == {"Fn::GetAtt": [group, "GroupId"]}]
    assert len(rules) == 1
    (rule,) = rules
    assert rule["SourceSecurityGroupId"] == {"Fn::GetAtt": [worker_group, "GroupId"]}
    assert rule["FromPort"] == rule["ToPort"] == DEFAULTS.torchserve_inference_port
    assert "CidrIp" not in rule
    # No rule anywhere opens the management or metrics port.
    closed = {DEFAULTS.torchserve_management_port, DEFAULTS.torchserve_metrics_port}
    for resource in synth.template["Resources"].values():
        for ingress in resource.get("Properties", {}).get("SecurityGroupIngress", []) or []:
            assert not closed & set(range(ingress.get("FromPort", 0), ingress.get("ToPort", -1) + 1))


def test_api_is_the_only_public_entry_and_speaks_https(synth):
    (balancer,) = synth.resources("AWS::ElasticLoadBalancingV2::LoadBalancer").values()
    assert balancer["Properties"]["Scheme"] == "internet-facing"
    listeners = [r["Properties"] for r in synth.resources("AWS::ElasticLoadBalancingV2::Listener").values()]
    by_port = {listener["Port"]: listener for listener in listeners}
    assert by_port[443]["Protocol"] == "HTTPS"
    assert by_port[443]["Certificates"] == [{"CertificateArn": {"Ref": "CertificateArn"}}]
    assert by_port[80]["DefaultActions"][0]["Type"] == "redirect"
    (group,) = synth.resources("AWS::ElasticLoadBalancingV2::TargetGroup").values()
    assert group["Properties"]["HealthCheckPath"] == "/healthz"
    api_task = _task_definition(synth, "api")[0]
    api = next(r["Properties"] for r in synth.resources("AWS::ECS::Service").values()
               if r["Properties"]["TaskDefinition"] == {"Ref": api_task})
    assert [(t["ContainerName"], t["ContainerPort"]) for t in api["LoadBalancers"]] == [("api", 8000)]
    assert {"Name": "UDAGRAM_API_PORT", "Value": "8000"} in _container(synth, "api")["Environment"]
    attributes = {a["Key"]: a["Value"] for a in balancer["Properties"]["LoadBalancerAttributes"]}
    assert attributes["access_logs.s3.enabled"] == "true"
    for service in synth.resources("AWS::ECS::Service").values():
        assert service["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"


# ---- auth settings and configuration --------------------------------------------------------------

def test_auth_settings_are_parameters_passed_to_the_api(synth):
    parameters = synth.template["Parameters"]
    api = {e["Name"]: e["Value"] for e in _container(synth, "api")["Environment"]}
    for parameter, variable in (("AuthIssuer", "UDAGRAM_AUTH_ISSUER"), ("AuthAudience", "UDAGRAM_AUTH_AUDIENCE"),
                                ("AuthJwksUrl", "UDAGRAM_AUTH_JWKS_URL"), ("AuthClientId", "UDAGRAM_AUTH_CLIENT_ID")):
        assert parameter in parameters
        assert api[variable] == {"Ref": parameter}
    assert parameters["AuthAudience"]["Default"] == DEFAULTS.auth_audience
    assert "Default" not in parameters["AuthIssuer"]  # each deployment names its own provider
    assert api["UDAGRAM_PUBLIC_URL"] == {"Ref": "PublicUrl"}


def test_every_udagram_variable_passed_is_a_setting(synth):
    for task in synth.resources("AWS::ECS::TaskDefinition").values():
        for container in task["Properties"]["ContainerDefinitions"]:
            for variable in container.get("Environment", []):
                name = variable["Name"]
                if name.startswith("UDAGRAM_") and name != "UDAGRAM_AUTH_CLIENT_ID":  # added by the OIDC work
                    assert name.removeprefix("UDAGRAM_").lower() in Settings.model_fields, name


def test_model_server_loads_the_version_parameter_from_the_synced_store(synth):
    server = _container(synth, "model-server")
    env = {e["Name"]: e["Value"] for e in server["Environment"]}
    assert env["UDAGRAM_MODEL_DEFAULT_VERSION"] == {"Ref": "ModelVersion"}
    assert synth.template["Parameters"]["ModelVersion"]["Default"] == DEFAULTS.model_default_version
    assert server["DependsOn"] == [{"ContainerName": "model-sync", "Condition": "SUCCESS"}]
    sync = _container(synth, "model-sync")
    assert sync["Essential"] is False
    mounts = {c["Name"]: c["MountPoints"] for c in (server, sync)}
    assert (mounts["model-server"][0]["ContainerPath"] == env["UDAGRAM_MODEL_STORE"]
            == mounts["model-sync"][0]["ContainerPath"])


# ---- logs and images ------------------------------------------------------------------------------

def test_log_groups_expire_and_every_container_logs_to_one(synth):
    groups = synth.resources("AWS::Logs::LogGroup")
    assert groups
    for group in groups.values():
        assert group["Properties"]["RetentionInDays"] > 0
    for task in synth.resources("AWS::ECS::TaskDefinition").values():
        for container in task["Properties"]["ContainerDefinitions"]:
            log = container["LogConfiguration"]
            assert log["LogDriver"] == "awslogs"
            assert log["Options"]["awslogs-group"]["Ref"] in groups


@pytest.mark.parametrize("name", ["worker", "model-server"])
def test_health_checks_are_the_dockerfiles(synth, name):
    check = _container(synth, name)["HealthCheck"]
    dockerfile = (REPO / "docker" / f"{name}.Dockerfile").read_text()
    assert check["Command"][0] == "CMD"
    assert f"CMD {json.dumps(check['Command'][1:])}" in dockerfile


@pytest.mark.parametrize("name", ["api", "worker", "model-server"])
def test_images_build_from_the_repository_dockerfiles_with_only_their_context(synth, name):
    assets = json.loads((synth.outdir / "Udagram.assets.json").read_text())["dockerImages"]
    (asset_id,) = [k for k, a in assets.items() if a["source"]["dockerFile"] == f"docker/{name}.Dockerfile"]
    staged = synth.outdir / assets[asset_id]["source"]["directory"]
    dockerfile = f"docker/{name}.Dockerfile"
    assert (staged / dockerfile).read_text() == (REPO / dockerfile).read_text()
    assert (staged / "udagram" / "settings.py").is_file()
    top = {p.name for p in staged.iterdir()}
    assert not top & {".venv", ".data", "model-store", "tests", "bench", "deploy", ".git"}, top
    image_uri = json.dumps(_container(synth, name)["Image"])
    assert asset_id in image_uri
