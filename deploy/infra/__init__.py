"""The AWS CDK app of Udagram Redux (docs/deploy.md): `python deploy/app.py` synthesizes it."""
