"""Settings come from the environment; a bad one is a one-line error naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from collab_billing.config import SettingsError, load_settings


def test_defaults_match_the_design(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "ADMIN_TOKEN", "RECONCILE_INTERVAL_SECONDS", "STRIPE_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings(_env_file=None)
    assert settings.database_url == "sqlite:///collab-billing.db"
    assert settings.admin_token is None
    assert settings.stripe_api_base == "https://api.stripe.com"
    assert settings.reconcile_interval_seconds == 5


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("RECONCILE_INTERVAL_SECONDS", "soon"),
        ("RECONCILE_INTERVAL_SECONDS", "-1"),
        ("DATABASE_URL", "mysql://nope"),
        ("STRIPE_API_BASE", "ftp://stripe"),
        ("BILLING_TRIAL_DAYS", "-1"),
        ("BILLING_TRIAL_DAYS", "731"),  # Stripe's longest trial is 730 days
        ("BILLING_TRIAL_REQUIRES_PAYMENT_METHOD", "maybe"),
        ("BILLING_AUTOMATIC_TAX", "sometimes"),
    ],
)
def test_bad_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings(_env_file=None)


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
