"""Synthesize Udagram Redux's AWS stack: `make synth` (or `cdk synth` / `cdk deploy` in deploy/).

Offline by design: a fixed account and region (context `account`, `region`; defaults below) and
explicit availability zones, so no lookup ever calls AWS. cdk-nag's AwsSolutions pack checks the
result; an unacknowledged finding fails synthesis.

Context (`-c key=value` with the cdk CLI, or CDK_CONTEXT_JSON):
  account, region               where to deploy (default 123456789012 / the settings' aws_region)
  availability_zones            comma-separated (default <region>a,<region>b)
  model_server_gpu              true: TorchServe on GPU EC2 capacity instead of Fargate CPU
  gpu_instance_type             default g4dn.xlarge
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from aws_cdk import App, Environment, Validations
from cdk_nag import AwsSolutionsChecks

sys.path.insert(0, str(Path(__file__).resolve().parent))

from infra.stack import DEFAULTS, Options, UdagramStack  # noqa: E402

STACK_NAME = "Udagram"
SYNTH_ACCOUNT = "123456789012"  # placeholder for offline synthesis; deploy with -c account=<yours>
FEATURE_FLAGS = {
    "@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy": True,
    "@aws-cdk/aws-autoscaling:generateLaunchTemplateInsteadOfLaunchConfig": True,
    "@aws-cdk/aws-ec2:launchTemplateDefaultUserData": True,
}


def _flag(value: object) -> bool:
    return str(value).lower() in ("1", "true", "yes")


def build(outdir: str | None = None) -> App:
    app = App(outdir=outdir or os.environ.get("CDK_OUTDIR") or str(Path(__file__).resolve().parent / "cdk.out"),
              context=FEATURE_FLAGS)
    region = app.node.try_get_context("region") or DEFAULTS.aws_region
    zones = app.node.try_get_context("availability_zones") or f"{region}a,{region}b"
    options = Options(
        model_server_gpu=_flag(app.node.try_get_context("model_server_gpu")),
        gpu_instance_type=app.node.try_get_context("gpu_instance_type") or Options.gpu_instance_type,
        availability_zones=tuple(z.strip() for z in str(zones).split(",") if z.strip()),
    )
    UdagramStack(app, STACK_NAME, options=options,
                 env=Environment(account=str(app.node.try_get_context("account") or SYNTH_ACCOUNT), region=region),
                 description="Udagram Redux: image sharing with AI recognition (docs/deploy.md)")
    # The acknowledgements (rule + reason) are also written into the template's resource Metadata.
    Validations.of(app).add_plugins(AwsSolutionsChecks(app, write_suppressions_to_cloud_formation=True))
    return app


def main() -> int:
    app = build()
    try:
        app.synth()
    except RuntimeError as exc:  # the validation report was printed above
        if "ValidationFailed" not in str(exc):
            raise
        print(f"synthesis failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
