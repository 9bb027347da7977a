from udagram.settings import Settings


def test_local_mode_points_at_local_servers(monkeypatch):
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_DYNAMODB"):
        monkeypatch.delenv(var, raising=False)
    s = Settings(_env_file=None, s3_port=9999)
    assert s.s3_endpoint_url == "http://127.0.0.1:9999"
    assert s.auth_issuer == "http://127.0.0.1:8000/"


def test_standard_aws_variables_win(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1234")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("UDAGRAM_MODE", "aws")
    s = Settings()
    assert s.s3_endpoint_url == "http://127.0.0.1:1234"
    assert s.aws_region == "eu-west-1"
    assert s.sqs_endpoint_url is None  # left to boto3 on AWS



def test_the_api_is_its_own_issuer_only_locally_and_only_when_no_other_is_configured(tmp_path):
    own = Settings(_env_file=None, data_dir=tmp_path)
    other = Settings(_env_file=None, data_dir=tmp_path, auth_issuer="https://tenant.example.auth0.com/")
    production = Settings(_env_file=None, data_dir=tmp_path, mode="aws", auth_issuer="https://tenant.example.auth0.com/")
    assert [s.builtin_idp for s in (own, other, production)] == [True, False, False]


def test_page_origins_are_public_url_its_loopback_twin_and_the_extra_ones(monkeypatch, tmp_path):
    monkeypatch.setenv("UDAGRAM_EXTRA_PAGE_ORIGINS", '["http://127.0.0.1:9100/", "http://localhost:8000"]')
    settings = Settings(mode="local", data_dir=tmp_path, api_port=8000)
    assert settings.page_origins == ["http://127.0.0.1:8000", "http://localhost:8000", "http://127.0.0.1:9100"]
    monkeypatch.delenv("UDAGRAM_EXTRA_PAGE_ORIGINS")
    assert Settings(mode="local", data_dir=tmp_path, api_port=8000).page_origins == [
        "http://127.0.0.1:8000", "http://localhost:8000"]
