"""Udagram Redux on AWS: one CloudFormation stack (docs/deploy.md).

S3 (originals, processed, model archives, access logs) -> SQS (uploads + DLQ) -> ECS on Fargate:
the API behind a public HTTPS load balancer, the worker scaled 0..N on the queue's backlog, and
TorchServe reached only by the workers through Cloud Map DNS (CPU on Fargate by default; GPU EC2
capacity with the context `model_server_gpu=true`). DynamoDB tables come from the PynamoDB models,
names and defaults from `udagram.settings.Settings`: the app's settings are the one source.
"""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import (
    Acknowledgment,
    Aws,
    CfnOutput,
    CfnParameter,
    Duration,
    RemovalPolicy,
    Stack,
    Validations,
    aws_applicationautoscaling as appscaling,
    aws_autoscaling as autoscaling,
    aws_certificatemanager as acm,
    aws_cloudwatch as cloudwatch,
    aws_dynamodb as dynamodb,
    aws_ec2 as ec2,
    aws_ecs as ecs,
    aws_ecs_patterns as ecs_patterns,
    aws_elasticloadbalancingv2 as elbv2,
    aws_iam as iam,
    aws_logs as logs,
    aws_s3 as s3,
    aws_s3_notifications as s3n,
    aws_servicediscovery as servicediscovery,
    aws_sqs as sqs,
)
from constructs import Construct

from infra import images
from infra.tables import TableSpec, table_specs
from udagram import resources
from udagram.settings import Settings

DEFAULTS = Settings.model_construct()  # field defaults only: synthesis never reads UDAGRAM_* variables
# Resource names the app reads from its settings; each is a stack parameter defaulting to the setting.
NAME_FIELDS = ("originals_bucket", "processed_bucket", "queue_name", "dead_letter_queue_name")
DLQ_RETENTION = Duration.days(14)  # what udagram.resources.ensure_queues gives the DLQ locally
MODEL_STORE = "/model-store"  # shared volume: archives synced from S3, read by TorchServe
MODEL_ARCHIVES_PREFIX = "model-store/"
SERVICE_NAMESPACE = "udagram.internal"
MODEL_SERVER_DNS_NAME = "model-server"
API_PORT = 8000
LOG_RETENTION = logs.RetentionDays.ONE_MONTH
AWS_CLI_IMAGE = "public.ecr.aws/aws-cli/aws-cli:2.27.50"  # pinned: copies the archives from S3
TYPE_OF = {"S": dynamodb.AttributeType.STRING, "N": dynamodb.AttributeType.NUMBER, "B": dynamodb.AttributeType.BINARY}
PROJECTION_OF = {
    "ALL": dynamodb.ProjectionType.ALL,
    "KEYS_ONLY": dynamodb.ProjectionType.KEYS_ONLY,
    "INCLUDE": dynamodb.ProjectionType.INCLUDE,
}


def parameter_id(field: str) -> str:
    """`originals_bucket` -> `OriginalsBucket`: the stack parameter for a settings field."""
    return "".join(part.capitalize() for part in field.split("_"))


def env_name(field: str) -> str:
    return f"UDAGRAM_{field.upper()}"


def acknowledge(scope: Construct, rule: str, reason: str) -> None:
    """A cdk-nag finding accepted on purpose, with the reason (shown in the validation report)."""
    Validations.of(scope).acknowledge(Acknowledgment(id=rule, reason=reason))


@dataclass(frozen=True)
class Options:
    """Synthesis-time choices (CDK context, see app.py)."""

    model_server_gpu: bool = False
    gpu_instance_type: str = "g4dn.xlarge"
    availability_zones: tuple[str, ...] = ()


class UdagramStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, options: Options, **kwargs) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.options = options
        self.specs = table_specs()
        self._parameters()
        self._network()
        self._storage()
        self._queues()
        self._tables()
        self._cluster()
        self._model_server()
        self._worker()
        self._api()
        self._outputs()

    # ---- parameters ------------------------------------------------------------------------------
    def _parameters(self) -> None:
        fields = list(NAME_FIELDS) + [spec.settings_field for spec in self.specs]
        self.names = {
            field: CfnParameter(
                self, parameter_id(field), type="String", default=getattr(DEFAULTS, field),
                description=f"{env_name(field)} (default: the setting's default). Bucket names are global: "
                            "choose your own for the buckets.",
            ).value_as_string
            for field in fields
        }
        self.public_url = CfnParameter(
            self, "PublicUrl", type="String", allowed_pattern=r"^https://[^/]+$",
            description="Origin of the web page and API, e.g. https://photos.example.com (UDAGRAM_PUBLIC_URL; "
                        "the originals bucket allows CORS from this origin only)").value_as_string
        self.certificate_arn = CfnParameter(
            self, "CertificateArn", type="String", allowed_pattern=r"^arn:aws[a-z-]*:acm:.+$",
            description="ACM certificate for the PublicUrl host name (HTTPS listener)").value_as_string
        self.auth = {
            "auth_issuer": CfnParameter(self, "AuthIssuer", type="String", min_length=1,
                                        description="UDAGRAM_AUTH_ISSUER: the identity provider's issuer "
                                                    "(iss claim), e.g. https://example.eu.auth0.com/"),
            "auth_audience": CfnParameter(self, "AuthAudience", type="String", min_length=1,
                                          default=DEFAULTS.auth_audience,
                                          description="UDAGRAM_AUTH_AUDIENCE: the aud claim of access tokens"),
            "auth_jwks_url": CfnParameter(self, "AuthJwksUrl", type="String", allowed_pattern=r"^https://.+$",
                                          description="UDAGRAM_AUTH_JWKS_URL: the provider's signing keys"),
            "auth_client_id": CfnParameter(self, "AuthClientId", type="String", min_length=1,
                                           description="UDAGRAM_AUTH_CLIENT_ID: the web page's OIDC client"),
        }
        self.model_version = CfnParameter(
            self, "ModelVersion", type="String", default=DEFAULTS.model_default_version,
            description="UDAGRAM_MODEL_DEFAULT_VERSION: the archive TorchServe loads at start").value_as_string
        self.api_tasks = CfnParameter(self, "ApiTasks", type="Number", default=1, min_value=1,
                                      description="API tasks behind the load balancer").value_as_number
        self.model_server_tasks = CfnParameter(
            self, "ModelServerTasks", type="Number", default=1, min_value=0,
            description="TorchServe tasks (0 parks it; uploads then wait in the queue)").value_as_number
        self.worker_min_tasks = CfnParameter(
            self, "WorkerMinTasks", type="Number", default=0, min_value=0,
            description="Workers when the queue is empty (0: none run while idle)").value_as_number
        self.worker_max_tasks = CfnParameter(
            self, "WorkerMaxTasks", type="Number", default=10, min_value=1,
            description="Most workers the queue backlog scales to").value_as_number

    # ---- network ---------------------------------------------------------------------------------
    def _network(self) -> None:
        flow_logs = logs.LogGroup(self, "VpcFlowLogs", retention=LOG_RETENTION,
                                  removal_policy=RemovalPolicy.DESTROY)
        self.vpc = ec2.Vpc(
            self, "Vpc",
            availability_zones=list(self.options.availability_zones),
            nat_gateways=1,  # outbound for image pulls, SQS, logs and the identity provider's keys
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24),
                ec2.SubnetConfiguration(name="private", subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS,
                                        cidr_mask=22),
            ],
            # Free gateway endpoints: S3 (images, ECR layers) and DynamoDB traffic skips the NAT's per-GB fee.
            gateway_endpoints={
                "S3": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.S3),
                "DynamoDB": ec2.GatewayVpcEndpointOptions(service=ec2.GatewayVpcEndpointAwsService.DYNAMODB),
            },
            flow_logs={"Rejected": ec2.FlowLogOptions(
                destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
                traffic_type=ec2.FlowLogTrafficType.REJECT)},
        )

    # ---- S3 --------------------------------------------------------------------------------------
    def _bucket(self, construct_id: str, *, bucket_name: str | None = None, access_logs: s3.IBucket | None,
                **kwargs) -> s3.Bucket:
        return s3.Bucket(
            self, construct_id,
            bucket_name=bucket_name,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=access_logs,
            server_access_logs_prefix=f"{construct_id}/" if access_logs else None,
            removal_policy=RemovalPolicy.RETAIN,  # pictures and archives outlive the stack
            **kwargs,
        )

    def _storage(self) -> None:
        self.access_logs = self._bucket(
            "AccessLogs", access_logs=None,
            lifecycle_rules=[s3.LifecycleRule(id="expire-logs", expiration=Duration.days(90),
                                              abort_incomplete_multipart_upload_after=Duration.days(1))])
        acknowledge(self.access_logs, "AwsSolutions-S1",
                    "This is the access-log bucket itself; logging it into itself would loop.")
        abandoned_uploads = s3.LifecycleRule(id="abort-abandoned-uploads",
                                             abort_incomplete_multipart_upload_after=Duration.days(1))
        self.originals = self._bucket(
            "Originals", bucket_name=self.names["originals_bucket"], access_logs=self.access_logs,
            # Browsers POST uploads straight here from the page (presigned POST): that origin only.
            cors=[s3.CorsRule(
                allowed_origins=[self.public_url], allowed_methods=[s3.HttpMethods.POST],
                allowed_headers=["Content-Type"], max_age=3600)],
            lifecycle_rules=[abandoned_uploads])
        self.processed = self._bucket(
            "Processed", bucket_name=self.names["processed_bucket"], access_logs=self.access_logs,
            lifecycle_rules=[abandoned_uploads])
        self.model_archives = self._bucket(
            "ModelArchives", access_logs=self.access_logs, versioned=True,  # an archive is code: keep history
            lifecycle_rules=[abandoned_uploads,
                             s3.LifecycleRule(id="expire-old-versions",
                                              noncurrent_version_expiration=Duration.days(90))])

    # ---- SQS -------------------------------------------------------------------------------------
    def _queues(self) -> None:
        self.dead_letter_queue = sqs.Queue(
            self, "DeadLetterQueue", queue_name=self.names["dead_letter_queue_name"],
            retention_period=DLQ_RETENTION, encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True)
        acknowledge(self.dead_letter_queue, "AwsSolutions-SQS3", "This queue is the dead-letter queue.")
        # Visibility timeout = the worker's lease (worker_visibility_timeout_seconds, 60 s). The worker
        # heartbeats every third of it (20 s), so a live worker keeps its messages hidden with two
        # missed beats to spare, and a killed worker's message returns when its lease expires.
        self.queue = sqs.Queue(
            self, "UploadsQueue", queue_name=self.names["queue_name"],
            visibility_timeout=Duration.seconds(DEFAULTS.worker_visibility_timeout_seconds),
            dead_letter_queue=sqs.DeadLetterQueue(queue=self.dead_letter_queue,
                                                  max_receive_count=DEFAULTS.queue_max_receive_count),
            encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True)
        self.originals.add_event_notification(
            s3.EventType.OBJECT_CREATED, s3n.SqsDestination(self.queue),
            s3.NotificationKeyFilter(prefix=resources.UPLOADS_PREFIX))
        handler = next(c for c in self.node.children if c.node.id.startswith("BucketNotificationsHandler"))
        acknowledge(handler, "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
                             "AWSLambdaBasicExecutionRole]",
                    "CDK's own bucket-notification custom resource; the managed policy only lets it write its logs.")

    # ---- DynamoDB --------------------------------------------------------------------------------
    def _tables(self) -> None:
        self.tables: dict[str, tuple[dynamodb.Table, TableSpec]] = {}
        for spec in self.specs:
            table = dynamodb.Table(
                self, spec.model.__name__,
                table_name=self.names[spec.settings_field],
                partition_key=dynamodb.Attribute(name=spec.hash_key.name, type=TYPE_OF[spec.hash_key.type]),
                sort_key=(dynamodb.Attribute(name=spec.range_key.name, type=TYPE_OF[spec.range_key.type])
                          if spec.range_key else None),
                billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
                point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
                    point_in_time_recovery_enabled=True),
                time_to_live_attribute=spec.ttl_attribute,
                deletion_protection=True,
                removal_policy=RemovalPolicy.RETAIN,
            )
            for index in spec.indexes:
                keys = {"index_name": index.name,
                        "sort_key": (dynamodb.Attribute(name=index.range_key.name, type=TYPE_OF[index.range_key.type])
                                     if index.range_key else None),
                        "projection_type": PROJECTION_OF[index.projection],
                        "non_key_attributes": list(index.non_key_attributes) or None}
                if index.local:
                    table.add_local_secondary_index(**keys)
                else:
                    table.add_global_secondary_index(
                        partition_key=dynamodb.Attribute(name=index.hash_key.name, type=TYPE_OF[index.hash_key.type]),
                        **keys)
            self.tables[spec.settings_field] = (table, spec)

    def _table_arns(self, fields: list[str]) -> list[str]:
        """The tables and each of their indexes by name (no `index/*` wildcard)."""
        arns = []
        for field in fields:
            table, spec = self.tables[field]
            arns += [table.table_arn] + [f"{table.table_arn}/index/{index.name}" for index in spec.indexes]
        return arns

    # ---- ECS -------------------------------------------------------------------------------------
    def _cluster(self) -> None:
        self.cluster = ecs.Cluster(self, "Cluster", vpc=self.vpc)
        self.namespace = self.cluster.add_default_cloud_map_namespace(name=SERVICE_NAMESPACE, vpc=self.vpc)
        acknowledge(self.cluster, "AwsSolutions-ECS4",
                    "Container Insights is billed per task metric; the services log to CloudWatch Logs and "
                    "the queue and load balancer publish their own metrics. Turn it on for deeper debugging.")

    def _log_group(self, name: str) -> logs.LogGroup:
        return logs.LogGroup(self, f"{name}Logs", retention=LOG_RETENTION, removal_policy=RemovalPolicy.DESTROY)

    def _task_role(self, name: str, statements: list[iam.PolicyStatement]) -> iam.Role:
        role = iam.Role(self, f"{name}TaskRole", assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
                        description=f"Udagram {name}: only the calls its code makes")
        for statement in statements:
            role.add_to_policy(statement)
        return role

    def _app_environment(self) -> dict[str, str]:
        """What the API and the worker share: AWS mode, infrastructure made here, the resource names."""
        return {
            env_name("mode"): "aws",
            env_name("create_resources"): "false",
            "AWS_REGION": Aws.REGION,
            env_name("queue_max_receive_count"): str(DEFAULTS.queue_max_receive_count),
            env_name("worker_visibility_timeout_seconds"): str(DEFAULTS.worker_visibility_timeout_seconds),
            **{env_name(field): value for field, value in self.names.items()},
        }

    def _acknowledge_execution_role(self, task_definition: ecs.TaskDefinition) -> None:
        role = task_definition.obtain_execution_role()
        acknowledge(role, "AwsSolutions-IAM5[Resource::*]",
                    "ecr:GetAuthorizationToken has no resource-level permissions; AWS requires Resource *.")

    # -- TorchServe
    def _model_server(self) -> None:
        self.model_server_sg = ec2.SecurityGroup(
            self, "ModelServerSecurityGroup", vpc=self.vpc, allow_all_outbound=True,
            description="TorchServe: inference port from the workers only; management/metrics never open")
        role = self._task_role("ModelServer", [
            iam.PolicyStatement(actions=["s3:GetObject"],
                                resources=[self.model_archives.arn_for_objects(f"{MODEL_ARCHIVES_PREFIX}*")]),
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[self.model_archives.bucket_arn],
                                conditions={"StringLike": {"s3:prefix": [f"{MODEL_ARCHIVES_PREFIX}*"]}}),
        ])
        acknowledge(role, f"AwsSolutions-IAM5[Resource::<{self.get_logical_id(self.model_archives.node.default_child)}"
                          f".Arn>/{MODEL_ARCHIVES_PREFIX}*]",
                    "TorchServe reads every archive version under model-store/ (names carry the version).")
        gpu = self.options.model_server_gpu
        if gpu:
            task_definition = ecs.Ec2TaskDefinition(self, "ModelServerTask", network_mode=ecs.NetworkMode.AWS_VPC,
                                                    task_role=role)
        else:
            task_definition = ecs.FargateTaskDefinition(self, "ModelServerTask", cpu=2048, memory_limit_mib=4096,
                                                        task_role=role)
        task_definition.add_volume(name="model-store")
        logs_group = self._log_group("ModelServer")
        sync = task_definition.add_container(
            "model-sync", image=ecs.ContainerImage.from_registry(AWS_CLI_IMAGE), essential=False,
            memory_reservation_mib=256 if gpu else None,
            entry_point=["sh", "-c"],
            # Copy the archives, then hand them to the image's user (uid 10001), which may also build
            # the default 1.0 archive into the store when S3 has none.
            command=[f"aws s3 sync s3://{self.model_archives.bucket_name}/{MODEL_ARCHIVES_PREFIX} {MODEL_STORE} "
                     f"--exclude '*' --include '*.mar' --only-show-errors && chown -R 10001:10001 {MODEL_STORE}"],
            logging=ecs.LogDrivers.aws_logs(stream_prefix="model-sync", log_group=logs_group),
            environment={"AWS_REGION": Aws.REGION},
        )
        sync.add_mount_points(ecs.MountPoint(container_path=MODEL_STORE, source_volume="model-store", read_only=False))
        server = task_definition.add_container(
            "model-server", image=images.image("model-server"),
            memory_limit_mib=14 * 1024 if gpu else None,
            gpu_count=1 if gpu else None,
            environment={
                env_name("mode"): "aws",
                env_name("host"): "0.0.0.0",  # the task's own address: reachable inside its security group only
                env_name("model_store"): MODEL_STORE,
                env_name("model_default_version"): self.model_version,
            },
            port_mappings=[ecs.PortMapping(container_port=DEFAULTS.torchserve_inference_port)],
            health_check=images.health_check("model-server"),
            stop_timeout=Duration.seconds(90),  # TorchServe drains its batches (docs/local-stack.md)
            logging=ecs.LogDrivers.aws_logs(stream_prefix="model-server", log_group=logs_group),
        )
        server.add_mount_points(
            ecs.MountPoint(container_path=MODEL_STORE, source_volume="model-store", read_only=False))
        server.add_container_dependencies(ecs.ContainerDependency(
            container=sync, condition=ecs.ContainerDependencyCondition.SUCCESS))
        cloud_map = ecs.CloudMapOptions(name=MODEL_SERVER_DNS_NAME, dns_record_type=servicediscovery.DnsRecordType.A,
                                        dns_ttl=Duration.seconds(10), cloud_map_namespace=self.namespace)
        common = dict(cluster=self.cluster, task_definition=task_definition, desired_count=self.model_server_tasks,
                      security_groups=[self.model_server_sg], cloud_map_options=cloud_map,
                      circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
                      vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
                      min_healthy_percent=100)
        if gpu:
            provider = self._gpu_capacity()
            self.model_server_service: ecs.BaseService = ecs.Ec2Service(
                self, "ModelServer", capacity_provider_strategies=[
                    ecs.CapacityProviderStrategy(capacity_provider=provider.capacity_provider_name, weight=1)],
                **common)
        else:
            self.model_server_service = ecs.FargateService(self, "ModelServer", assign_public_ip=False, **common)
        self._acknowledge_execution_role(task_definition)
        acknowledge(task_definition, "AwsSolutions-ECS2",
                    "The environment holds configuration only (names, ports, modes); no secrets.")

    def _gpu_capacity(self) -> ecs.AsgCapacityProvider:
        """EC2 capacity with one GPU per TorchServe task (context model_server_gpu=true)."""
        instance_sg = ec2.SecurityGroup(self, "GpuInstanceSecurityGroup", vpc=self.vpc, allow_all_outbound=True,
                                        description="ECS GPU hosts: no inbound (tasks have their own ENIs)")
        role = iam.Role(self, "GpuInstanceRole", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"))
        launch_template = ec2.LaunchTemplate(
            self, "GpuLaunchTemplate",
            machine_image=ecs.EcsOptimizedImage.amazon_linux2(ecs.AmiHardwareType.GPU),
            instance_type=ec2.InstanceType(self.options.gpu_instance_type),
            security_group=instance_sg, role=role, require_imdsv2=True,
            user_data=ec2.UserData.for_linux(),
            block_devices=[ec2.BlockDevice(device_name="/dev/xvda", volume=ec2.BlockDeviceVolume.ebs(
                60, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3))],
        )
        group = autoscaling.AutoScalingGroup(
            self, "GpuInstances", vpc=self.vpc, launch_template=launch_template, min_capacity=0, max_capacity=4,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS))
        # ECS drains instances itself (managed draining): no lifecycle-hook Lambda and SNS topic.
        provider = ecs.AsgCapacityProvider(self, "GpuCapacity", auto_scaling_group=group,
                                           enable_managed_termination_protection=False,
                                           enable_managed_draining=True)
        self.cluster.add_asg_capacity_provider(provider)
        acknowledge(group, "AwsSolutions-AS3",
                    "Scaling is driven by the ECS capacity provider; its events are in the ECS service events.")
        for finding in ("Resource::*", "Action::ecs:Submit*"):
            acknowledge(role, f"AwsSolutions-IAM5[{finding}]",
                        "The ECS agent's instance permissions, as CDK grants them to capacity-provider hosts.")
        return provider

    # -- worker
    def _worker(self) -> None:
        images_table = "images_table"  # image records, and the label index below
        originals, processed = self.originals, self.processed
        self.worker_role = self._task_role("Worker", [
            iam.PolicyStatement(
                actions=["sqs:ChangeMessageVisibility", "sqs:DeleteMessage", "sqs:GetQueueAttributes",
                         "sqs:GetQueueUrl", "sqs:ReceiveMessage", "sqs:SendMessage"],
                resources=[self.queue.queue_arn]),
            iam.PolicyStatement(actions=["sqs:GetQueueUrl", "sqs:SendMessage"],
                                resources=[self.dead_letter_queue.queue_arn]),
            iam.PolicyStatement(actions=["s3:DeleteObject", "s3:GetObject"],
                                resources=[originals.arn_for_objects(f"{resources.UPLOADS_PREFIX}*")]),
            # Without ListBucket a missing original answers 403 instead of 404, which the worker
            # would take for a transient error and retry.
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[originals.bucket_arn]),
            iam.PolicyStatement(actions=["s3:DeleteObject", "s3:PutObject"],
                                resources=[processed.arn_for_objects("processed/*")]),
            iam.PolicyStatement(
                # Scan: `udagram reprocess --all`, run as a one-off task of this definition.
                actions=["dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:Query", "dynamodb:Scan",
                         "dynamodb:UpdateItem"],
                resources=self._table_arns([images_table])),
            iam.PolicyStatement(
                # The label search index, written with each result (udagram/labels.py); Scan:
                # `udagram labels rebuild`, a one-off task of this definition too.
                actions=["dynamodb:DeleteItem", "dynamodb:Query", "dynamodb:Scan", "dynamodb:UpdateItem"],
                resources=self._table_arns(["image_labels_table", "label_counts_table"])),
        ])
        self._acknowledge_object_prefixes(self.worker_role)
        task_definition = ecs.FargateTaskDefinition(self, "WorkerTask", cpu=1024, memory_limit_mib=2048,
                                                    task_role=self.worker_role)
        task_definition.add_container(
            "worker", image=images.image("worker"),
            environment={**self._app_environment(),
                         env_name("torchserve_inference_url"):
                             f"http://{MODEL_SERVER_DNS_NAME}.{SERVICE_NAMESPACE}:{DEFAULTS.torchserve_inference_port}"},
            health_check=images.health_check("worker"),
            # SIGTERM: in-flight images get worker_shutdown_grace_seconds, then are handed back.
            stop_timeout=Duration.seconds(int(DEFAULTS.worker_shutdown_grace_seconds) + 20),
            logging=ecs.LogDrivers.aws_logs(stream_prefix="worker", log_group=self._log_group("Worker")),
        )
        worker_sg = ec2.SecurityGroup(self, "WorkerSecurityGroup", vpc=self.vpc, allow_all_outbound=True,
                                      description="Workers: no inbound")
        self.model_server_sg.add_ingress_rule(worker_sg, ec2.Port.tcp(DEFAULTS.torchserve_inference_port),
                                              "TorchServe inference from the workers")
        self.worker_service = ecs.FargateService(
            self, "Worker", cluster=self.cluster, task_definition=task_definition, security_groups=[worker_sg],
            assign_public_ip=False, circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
            min_healthy_percent=0)
        # Scale on the backlog = waiting + in flight, so workers busy with the last images are not
        # stopped under them, and none run once both are 0.
        backlog = cloudwatch.MathExpression(
            expression="visible + inflight", label="uploads waiting or in flight", period=Duration.minutes(1),
            using_metrics={
                "visible": self.queue.metric_approximate_number_of_messages_visible(
                    period=Duration.minutes(1), statistic="Maximum"),
                "inflight": self.queue.metric_approximate_number_of_messages_not_visible(
                    period=Duration.minutes(1), statistic="Maximum"),
            })
        scaling = self.worker_service.auto_scale_task_count(min_capacity=self.worker_min_tasks,
                                                            max_capacity=self.worker_max_tasks)
        scaling.scale_on_metric(
            "QueueBacklog", metric=backlog, adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
            cooldown=Duration.minutes(1),
            scaling_steps=[
                appscaling.ScalingInterval(upper=0, change=-1),
                appscaling.ScalingInterval(lower=1, change=+1),
                appscaling.ScalingInterval(lower=100, change=+2),
                appscaling.ScalingInterval(lower=500, change=+4),
            ])
        self._acknowledge_execution_role(task_definition)
        acknowledge(task_definition, "AwsSolutions-ECS2",
                    "The environment holds configuration only (names, ports, modes); no secrets.")

    def _acknowledge_object_prefixes(self, role: iam.Role) -> None:
        for bucket, prefix in ((self.originals, resources.UPLOADS_PREFIX), (self.processed, "processed/")):
            logical_id = self.get_logical_id(bucket.node.default_child)
            acknowledge(role, f"AwsSolutions-IAM5[Resource::<{logical_id}.Arn>/{prefix}*]",
                        f"Object keys are per image ({prefix}<id>.<ext>): the grant is the app's key prefix.")

    # -- API
    def _api(self) -> None:
        tables = list(self.tables)  # groups, images and any other model's table
        self.api_role = self._task_role("Api", [
            iam.PolicyStatement(actions=["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                                resources=[self.originals.arn_for_objects(f"{resources.UPLOADS_PREFIX}*")]),
            # Needed for HeadObject to answer 404 (not 403) for an upload that never arrived.
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[self.originals.bucket_arn]),
            iam.PolicyStatement(actions=["s3:GetObject", "s3:DeleteObject"],
                                resources=[self.processed.arn_for_objects("processed/*")]),
            # GetQueueAttributes: the admin's bulk re-runs are fed at the queue's pace (graphql_api/admin/).
            iam.PolicyStatement(actions=["sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:SendMessage"],
                                resources=[self.queue.queue_arn]),
            iam.PolicyStatement(
                actions=["dynamodb:BatchGetItem", "dynamodb:DeleteItem", "dynamodb:GetItem", "dynamodb:PutItem",
                         "dynamodb:Query", "dynamodb:UpdateItem"],
                resources=self._table_arns(tables)),
        ])
        self._acknowledge_object_prefixes(self.api_role)
        environment = {
            **self._app_environment(),
            env_name("host"): "0.0.0.0",  # reached by the load balancer, inside the task's security group
            env_name("api_port"): str(API_PORT),
            env_name("public_url"): self.public_url,
            **{env_name(field): parameter.value_as_string for field, parameter in self.auth.items()},
        }
        self.api_service = ecs_patterns.ApplicationLoadBalancedFargateService(
            self, "Api", cluster=self.cluster, cpu=512, memory_limit_mib=1024, desired_count=self.api_tasks,
            task_image_options=ecs_patterns.ApplicationLoadBalancedTaskImageOptions(
                image=images.image("api"), container_name="api", container_port=API_PORT,
                environment=environment, task_role=self.api_role,
                log_driver=ecs.LogDrivers.aws_logs(stream_prefix="api", log_group=self._log_group("Api"))),
            public_load_balancer=True,
            certificate=acm.Certificate.from_certificate_arn(self, "Certificate", self.certificate_arn),
            protocol=elbv2.ApplicationProtocol.HTTPS, redirect_http=True,
            ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            min_healthy_percent=100,
            health_check_grace_period=Duration.seconds(60),
        )
        self.api_service.target_group.configure_health_check(path="/healthz", healthy_http_codes="200")
        load_balancer = self.api_service.load_balancer
        load_balancer.set_attribute("routing.http.drop_invalid_header_fields.enabled", "true")
        load_balancer.log_access_logs(self.access_logs, prefix="alb")
        acknowledge(load_balancer, "AwsSolutions-EC23",
                    "The public web site: HTTPS 443 (and 80, which only redirects to 443) from anywhere.")
        self._acknowledge_execution_role(self.api_service.task_definition)
        acknowledge(self.api_service.task_definition, "AwsSolutions-ECS2",
                    "The environment holds configuration only (names, URLs, modes); no secrets.")

    def _outputs(self) -> None:
        CfnOutput(self, "LoadBalancerDns", value=self.api_service.load_balancer.load_balancer_dns_name,
                  description="Point the PublicUrl host name here (CNAME or alias)")
        CfnOutput(self, "ModelArchivesBucket", value=self.model_archives.bucket_name,
                  description=f"Upload classifier-<version>.mar archives under {MODEL_ARCHIVES_PREFIX}")
        CfnOutput(self, "ClusterName", value=self.cluster.cluster_name)
        CfnOutput(self, "WorkerService", value=self.worker_service.service_name)
        CfnOutput(self, "WorkerTaskDefinition", value=self.worker_service.task_definition.task_definition_arn)
        CfnOutput(self, "ModelServerService", value=self.model_server_service.service_name)
        CfnOutput(self, "DeadLetterQueueUrl", value=self.dead_letter_queue.queue_url)
