"""Settings come from the environment; a bad one is a one-line error naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from collab_billing.config import SettingsError, load_settings


def test_defaults_match_the_design(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DATABASE_URL",
        "ADMIN_TOKEN",
        "RECONCILE_INTERVAL_SECONDS",
        "STRIPE_API_BASE",
        "BILLING_PAST_DUE_GRACE_DAYS",
    ):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(_env_file=None)
    assert settings.database_url == "sqlite:///collab-billing.db"
    assert settings.admin_token is None
    assert settings.stripe_api_base == "https://api.stripe.com"
    assert settings.reconcile_interval_seconds == 5
    assert settings.billing_past_due_grace_days == 3


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RECONCILE_INTERVAL_SECONDS", "soon"),
        ("RECONCILE_INTERVAL_SECONDS", "-1"),
        ("RECONCILE_SAFETY_INTERVAL_SECONDS", "0"),
        ("RECONCILE_READ_BUDGET_SHARE", "1.5"),
        ("BILLING_SYNC_PER_MINUTE", "0"),
        ("DATABASE_URL", "mysql://nope"),
        ("STRIPE_API_BASE", "ftp://stripe"),
        ("BILLING_PAST_DUE_GRACE_DAYS", "-1"),
        ("BILLING_PAST_DUE_GRACE_DAYS", "a week"),
        ("BILLING_TRIAL_DAYS", "-1"),
        ("BILLING_TRIAL_DAYS", "731"),  # Stripe's longest trial is 730 days
        ("BILLING_TRIAL_REQUIRES_PAYMENT_METHOD", "maybe"),
        # An infinite or huge time failed inside a thread after the start (the notification
        # sender died, `serve` went on without it).
        ("BILLING_NOTIFY_POLL_SECONDS", "inf"),
        ("STRIPE_TIMEOUT_SECONDS", "inf"),
        ("API_STRIPE_TIMEOUT_SECONDS", "1e12"),
        ("RECONCILE_SAFETY_INTERVAL_SECONDS", "1e10"),
        # Each failed at the first connection, with a stack trace.
        ("DATABASE_URL", "postgresql://u:pw@127.0.0.1:notaport/db"),
        ("DATABASE_URL", "postgresql+asyncpg://127.0.0.1/db"),
        ("DATABASE_URL", "sqlitex:///f.db"),
        ("DATABASE_URL", "sqlite://"),
        ("BILLING_AUTOMATIC_TAX", "sometimes"),
    ],
)
def test_bad_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings(_env_file=None)


GOOD_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.mark.parametrize(
    ("urls", "secret"),
    [
        ("http://hook:s3cretpw@hooks.example.com:8O80/x?token=tok123", GOOD_SECRET),  # port
        ("https://hook:s3cretpw/tok123@hooks.example.com/x", GOOD_SECRET),  # a / in the password
        ("https://hook:s3cretpw#tok123@hooks.example.com/x", GOOD_SECRET),  # a # in it
        ("http://hook:s3cretpw@hooks.example.com:99999/x?token=tok123", GOOD_SECRET),
        ("http://hook:s3cretpw@hooks example.com/x?token=tok123", GOOD_SECRET),  # a space
        ("http://ok.example/a,http:///no-host", GOOD_SECRET),
        ("http://ok.example/a", "whsec_SuperSecret!!notbase64"),
        ("http://ok.example/a", "whsec_my secret with spaces"),
        ("http://ok.example/a", "whsec_QUJD"),  # 3 bytes: Standard Webhooks asks for 24+
        ("http://ok.example/a", f"{GOOD_SECRET},whsec_QUJD"),  # one of two, for rotation
        ("http://ok.example/a", " , "),
    ],
)
def test_bad_notification_settings_stop_the_start_without_their_secrets(
    monkeypatch: pytest.MonkeyPatch, urls: str, secret: str
) -> None:
    """Refused at start (they were accepted, then every delivery failed, some in a loop)."""
    monkeypatch.setenv("BILLING_NOTIFY_URLS", urls)
    monkeypatch.setenv("BILLING_NOTIFY_SECRET", secret)
    with pytest.raises(SettingsError, match="BILLING_NOTIFY") as refused:
        load_settings(_env_file=None)
    for part in ("s3cretpw", "tok123", secret.removeprefix("whsec_")):
        assert part not in str(refused.value)


def test_cli_reports_a_bad_setting_in_one_line_with_exit_2(tmp_path: object) -> None:
    env = {**os.environ, "RECONCILE_INTERVAL_SECONDS": "soon"}
    result = subprocess.run(
        [sys.executable, "-m", "collab_billing", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "RECONCILE_INTERVAL_SECONDS" in lines[0]
    assert "Traceback" not in result.stderr
