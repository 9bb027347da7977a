"""The one settings object, read from the environment (12-factor).

Every variable is `UDAGRAM_<FIELD>` (e.g. `UDAGRAM_API_PORT=9000`), except the standard AWS ones
(`AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL_SQS`,
`AWS_ENDPOINT_URL_DYNAMODB`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`), which keep their
usual names and meaning.

`mode=local` (the default) is the embedded stack that `make up` runs on loopback: when no AWS
endpoint is given, the endpoints point at the local S3/SQS/DynamoDB servers, and unless AWS keys
are given the process uses the keys of its local identity (`local_identity`), generated per
install by `udagram up` (`udagram.stack.credentials`). `mode=aws` leaves endpoints and
credentials to boto3's usual resolution.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from udagram.stack import credentials


def _aws(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UDAGRAM_", extra="ignore", populate_by_name=True)

    mode: Literal["local", "aws"] = "local"
    data_dir: Path = Path(".data")
    host: str = "127.0.0.1"  # every local listener binds here
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = "json"

    # --- GraphQL API -------------------------------------------------------------------------
    api_port: int = 8000
    public_url: str = ""  # how browsers reach the API; empty: http://host:api_port
    # Local mode answers only requests whose Host is public_url's, localhost, 127.0.0.1 or one of
    # these (JSON list): a DNS-rebinding web page must not reach the local API and its sign-in.
    allowed_hosts: list[str] = []
    # Other origins the web page is also served from (JSON list, e.g. a second address of the API):
    # they get what public_url's origin gets (upload CORS, sign-in redirects, the websocket).
    extra_page_origins: list[str] = []
    max_request_bytes: int = 64 * 1024
    max_upload_bytes: int = 20 * 1024 * 1024
    # The page asks for the URL right before its POST, which must END within it (SeaweedFS checks the
    # policy after the body): 20 MiB at 0.6 Mbit/s. Shorter: less time to use a deleted image's URL.
    upload_url_ttl_seconds: int = 300
    download_url_ttl_seconds: int = 3600
    page_size_default: int = 20
    page_size_max: int = 100
    max_query_depth: int = 10
    max_query_tokens: int = 2000
    max_query_aliases: int = 30
    # Live updates (graphql-transport-ws on /graphql, graphql_api/live.py): each API process reads
    # the watched records from DynamoDB this often while anyone is subscribed.
    live_poll_seconds: float = 1.0
    max_subscriptions_per_connection: int = 100
    max_subscriptions_total: int = 10000  # per API process
    live_group_window: int = 100  # a group subscription sees its newest this many images
    # Admin bulk re-runs (graphql_api/admin/): each API process looks for jobs to feed this often;
    # one process at a time feeds a job, holding its lease.
    bulk_feed_interval_seconds: float = 1.0
    bulk_idle_check_seconds: float = 60.0  # no job running: look for one (started elsewhere) this often
    bulk_job_lease_seconds: int = 30
    # Cost: each field 1; a connection multiplies what it selects by its `first` (graphql_api/schema/limits.py).
    max_query_cost: int = 10_000
    # Fields selected more than once at the same place (fragments expanded) are compared in pairs by
    # graphql-core's OverlappingFieldsCanBeMerged (~40 us a pair): `{ me { id } me { id } ... }` x 400 took 3.5 s.
    max_query_overlapping_field_pairs: int = 1000
    # Prometheus metrics of the API process, on their own listener (not the public app): loopback by default.
    api_metrics_host: str = "127.0.0.1"
    api_metrics_port: int = 9401
    reprocess_rate_limit: int = 10  # reprocessImage calls per user per window (all API processes together)
    reprocess_rate_limit_window_seconds: int = 60

    # --- auth: OpenID Connect (docs/auth.md) ----------------------------------------------------
    # The issuer whose RS256 access tokens the API accepts (keys from its discovery document) and
    # where the web page signs in. Local mode's default is the API itself, public_url + "/": its
    # built-in provider with accounts in DynamoDB (`udagram user add`).
    auth_issuer: str | None = None
    auth_audience: str = "udagram"  # the `aud` access tokens must carry (Auth0: the API identifier)
    auth_audience_claim: Literal["aud", "client_id"] = "aud"  # Cognito: client_id (its access tokens have no aud)
    auth_client_id: str = "udagram-web"  # the web page's client id at the issuer
    auth_scopes: str = "openid profile offline_access"  # offline_access: refresh tokens (Auth0)
    auth_role_claim: str = "roles"  # the access-token claim holding the user's roles (a list)
    auth_jwks_url: str | None = None  # overrides the discovery document's jwks_uri (rarely needed)
    # How long the issuer's key set is cached: a key it withdraws is refused at most this long after.
    auth_jwks_cache_seconds: float = Field(600.0, gt=0)
    # Origins besides the issuer's that the page fetches from to sign in (JSON list; Cognito: its
    # hosted-UI domain, where the token endpoint is); the page's CSP connect-src allows them.
    auth_connect_origins: list[str] = []
    auth_signup_enabled: bool = False  # built-in provider: anyone may create an account
    auth_access_token_ttl_seconds: int = 900  # built-in provider; the page renews before expiry
    auth_refresh_token_ttl_seconds: int = 14 * 24 * 3600  # a sign-in lasts this long unused
    auth_code_ttl_seconds: int = 60  # authorization codes: single use, redeemed at once
    token_ttl_seconds: int = 12 * 3600  # `udagram token` (the local admin path for scripts)
    # Failed sign-ins at the built-in provider, counted per account and per address.
    signin_max_failures_per_account: int = 5
    signin_max_failures_per_address: int = 20
    signin_failure_window_seconds: int = 900

    # --- AWS resources (same names locally and on AWS) -----------------------------------------
    aws_region: str = Field("us-east-1",
                            validation_alias=_aws("AWS_REGION", "AWS_DEFAULT_REGION", "UDAGRAM_AWS_REGION"))
    aws_endpoint_url: str | None = Field(None, validation_alias=_aws("AWS_ENDPOINT_URL"))
    s3_endpoint_url: str | None = Field(None, validation_alias=_aws("AWS_ENDPOINT_URL_S3"))
    sqs_endpoint_url: str | None = Field(None, validation_alias=_aws("AWS_ENDPOINT_URL_SQS"))
    dynamodb_endpoint_url: str | None = Field(None, validation_alias=_aws("AWS_ENDPOINT_URL_DYNAMODB"))
    aws_access_key_id: str | None = Field(None, validation_alias=_aws("AWS_ACCESS_KEY_ID"))
    aws_secret_access_key: str | None = Field(None, validation_alias=_aws("AWS_SECRET_ACCESS_KEY"))
    originals_bucket: str = "udagram-originals"
    processed_bucket: str = "udagram-processed"
    queue_name: str = "udagram-uploads"
    dead_letter_queue_name: str = "udagram-uploads-dlq"
    queue_max_receive_count: int = 5  # redrive to the DLQ after this many receives
    groups_table: str = "udagram-groups"
    images_table: str = "udagram-images"
    jobs_table: str = "udagram-jobs"  # admin bulk re-runs and their progress
    users_table: str = "udagram-users"  # built-in provider: accounts
    auth_grants_table: str = "udagram-auth-grants"  # built-in provider: codes, refresh tokens, sessions
    rate_limits_table: str = "udagram-rate-limits"  # udagram/ratelimit.py: fixed-window counters (TTL)
    image_labels_table: str = "udagram-image-labels"  # the search index: label -> images (udagram/labels.py)
    label_counts_table: str = "udagram-label-counts"  # how many images carry each label (autocomplete)
    create_resources: bool = True  # create tables/buckets/queues if missing (off for locked-down AWS)
    # mode=local: whose generated keys (<data_dir>/secrets/<identity>.json) this process uses when no
    # AWS keys are given; the local stack gives the API "api", the worker "worker", others "none".
    local_identity: credentials.Identity = "admin"

    # --- processes of the stack (`udagram up`; docs/local-stack.md) ------------------------------
    # API processes share api_port (SO_REUSEPORT when more than one); process i (from 0) serves its
    # metrics on api_metrics_port + 10 * i, worker i on worker_metrics_port + 10 * i.
    api_processes: int = Field(1, ge=1)
    worker_processes: int = Field(1, ge=1)

    # --- local stand-ins (mode=local) ----------------------------------------------------------
    s3_port: int = 8333
    sqs_port: int = 9324
    dynamodb_port: int = 4567
    s3_events_port: int = 8334  # the small bridge turning SeaweedFS filer events into S3 events
    seaweedfs_port_base: int = 9330  # SeaweedFS's internal ports (master, volume, filer, gRPC): base..base+9

    # --- TorchServe ----------------------------------------------------------------------------
    torchserve_inference_port: int = 8080
    torchserve_management_port: int = 8081
    torchserve_metrics_port: int = 8082
    torchserve_grpc_inference_port: int = 7075  # gRPC is unused; moved off 7070/7071, loopback
    torchserve_grpc_management_port: int = 7076
    torchserve_inference_url: str = ""  # empty: http://host:inference_port
    torchserve_management_url: str = ""  # empty: http://host:management_port
    model_name: str = "classifier"
    model_store: Path = Path("model-store")
    # The default version `udagram model serve` starts with when the model registry
    # (<data_dir>/torchserve/registry.json) has none; set in the environment, it wins over the registry.
    model_default_version: str = "1.0"
    torchserve_config: Path | None = None  # config.properties template; default: the repository's

    # --- worker ----------------------------------------------------------------------------------
    worker_concurrency: int = 8  # messages in flight; keeps TorchServe's batches full
    worker_metrics_port: int = 9400
    worker_visibility_timeout_seconds: int = 60
    worker_max_attempts: int = 5  # tries before a poison image ends FAILED
    # Deliveries of one message (carried across re-sends) before its image is finished with the last
    # transient error and the message dead-lettered: about an hour of back-off with the defaults.
    worker_max_message_tries: int = Field(16, ge=1)
    # An original with no image record is deleted if it still has none this long after its event
    # (re-queued with this DelaySeconds, so at most SQS's 900).
    worker_orphan_grace_seconds: int = Field(60, ge=0, le=900)
    # TorchServe answering 404 for the default model is taken for one still registering it (intake
    # paused) this long; then intake resumes and such messages end after worker_max_message_tries.
    worker_model_missing_grace_seconds: float = 120
    worker_stale_processing_seconds: int = 300  # PROCESSING this long without a live lease: re-queued
    worker_stale_upload_seconds: int = 30  # original uploaded, record still AWAITING_UPLOAD this long: re-queued
    max_original_bytes: int = 50 * 1024 * 1024
    processed_width: int = 1000
    worker_poll_seconds: int = 20  # SQS long-poll wait
    worker_retry_base_seconds: float = 5  # transient-failure back-off: base * 2^n, capped
    worker_retry_max_seconds: float = 300
    worker_shutdown_grace_seconds: float = 20  # on SIGTERM, in-flight work gets this long to finish
    worker_reconcile_on_start: bool = True
    # Lost events and a queue server that lost its messages are found by a periodic pass (0: only on
    # start); a queue found missing (a local SQS restarted empty) is re-created and triggers one at once.
    worker_reconcile_interval_seconds: float = 60
    max_image_pixels: int = 90_000_000  # larger images are refused (decompression-bomb guard)
    classifier_input_short_side: int = 584  # downscaled copy sent to TorchServe (2x its 292 px resize)
    torchserve_timeout_seconds: float = 30
    reprocess_max_outstanding: int = 16  # re-runs wait while the queue holds more: uploads stay first
    # Canary: this share of new uploads is classified by canary_version (None: off). A file written by
    # `udagram model canary` (<data_dir>/canary.json) overrides both while it exists (workers/canary.py).
    canary_version: str | None = None
    canary_share: float = Field(0.0, ge=0.0, le=1.0)
    # A label below this probability is "unsure": the title says "Probably <label> - 14.0%" and the
    # search index leaves the label out (the overlay and `predictions` keep every number).
    confidence_threshold: float = Field(0.2, ge=0, le=1)

    @model_validator(mode="after")
    def _local_defaults(self) -> Settings:
        if not self.public_url:
            self.public_url = f"http://{self.host}:{self.api_port}"
        self.public_url = self.public_url.rstrip("/")
        if not self.torchserve_inference_url:
            self.torchserve_inference_url = f"http://{self.host}:{self.torchserve_inference_port}"
        if not self.torchserve_management_url:
            self.torchserve_management_url = f"http://{self.host}:{self.torchserve_management_port}"
        if self.mode == "local":
            base = self.aws_endpoint_url
            self.s3_endpoint_url = self.s3_endpoint_url or base or f"http://{self.host}:{self.s3_port}"
            self.sqs_endpoint_url = self.sqs_endpoint_url or base or f"http://{self.host}:{self.sqs_port}"
            self.dynamodb_endpoint_url = (
                self.dynamodb_endpoint_url or base or f"http://{self.host}:{self.dynamodb_port}"
            )
            if self.aws_access_key_id is None and self.aws_secret_access_key is None:
                keys = credentials.read(self.data_dir, self.local_identity)  # None before the first `up`
                if keys:
                    self.aws_access_key_id, self.aws_secret_access_key = keys["accessKeyId"], keys["secretAccessKey"]
            if self.auth_issuer is None:
                self.auth_issuer = self.public_url + "/"
        else:
            # On AWS, boto3 resolves AWS_ENDPOINT_URL itself; keep the per-service ones explicit.
            self.s3_endpoint_url = self.s3_endpoint_url or self.aws_endpoint_url
            self.sqs_endpoint_url = self.sqs_endpoint_url or self.aws_endpoint_url
            self.dynamodb_endpoint_url = self.dynamodb_endpoint_url or self.aws_endpoint_url
        return self

    @property
    def model_registry_path(self) -> Path:
        """The versions TorchServe serves, re-applied when it restarts (handlers/registry.py)."""
        return self.data_dir / "torchserve" / "registry.json"

    @property
    def canary_path(self) -> Path:
        """The live canary setting written by `udagram model canary` (workers/canary.py)."""
        return self.data_dir / "canary.json"

    @property
    def page_origins(self) -> list[str]:
        """Origins the web page runs on: public_url, and on loopback its localhost twin too."""
        origins = [str(self.public_url)]
        for a, b in (("//127.0.0.1:", "//localhost:"), ("//localhost:", "//127.0.0.1:")):
            if a in origins[0]:
                origins.append(origins[0].replace(a, b))
        return origins + [o.rstrip("/") for o in self.extra_page_origins if o.rstrip("/") not in origins]

    def as_local_identity(self, identity: credentials.Identity) -> Settings:
        """These settings with the keys of another local identity (e.g. `udagram up` creating the
        buckets as admin). Only in mode=local, where the stand-ins know no other keys."""
        if self.mode != "local":
            return self
        keys = credentials.read(self.data_dir, identity)  # None before the first `up`
        return self.model_copy(update={"local_identity": identity,
                                       "aws_access_key_id": keys["accessKeyId"] if keys else None,
                                       "aws_secret_access_key": keys["secretAccessKey"] if keys else None})

    @property
    def builtin_idp(self) -> bool:
        """Whether the API is its own OpenID provider (local mode, no other issuer configured)."""
        return self.mode == "local" and self.auth_issuer == self.public_url + "/"

    @property
    def local_signing_key_path(self) -> Path:
        """Private key the API signs local-mode tokens with (created on first use)."""
        return self.data_dir / "auth" / "local-signing-key.pem"


@lru_cache
def get_settings() -> Settings:
    return Settings()
