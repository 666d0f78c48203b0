"""Secure by default: an admin password made once and kept private, MLflow's auth config, no leaks."""

from __future__ import annotations

import configparser
import stat
from pathlib import Path

import pytest

from supervisor.auth import bootstrap
from supervisor.settings import Settings


def test_admin_password_is_made_once_and_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    password, created = bootstrap.ensure_admin_password(settings)
    assert created and len(password) >= 20
    assert stat.S_IMODE(settings.admin_password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.auth_dir.stat().st_mode) == 0o700
    assert bootstrap.ensure_admin_password(settings) == (password, False)
    assert Settings(data_dir=tmp_path).resolved_admin_password() == password
    assert bootstrap.ensure_admin_password(Settings(data_dir=tmp_path, admin_password="chosen-one")) == (
        "chosen-one", False)


def test_mlflows_old_default_password_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        bootstrap.ensure_admin_password(Settings(data_dir=tmp_path, admin_password="password1234"))


def test_mlflow_auth_config(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, auth_default_permission="NO_PERMISSIONS")
    env = bootstrap.mlflow_server_env(settings, "pw")
    config = configparser.ConfigParser()
    config.read(env["MLFLOW_AUTH_CONFIG_PATH"])
    assert config["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    assert config["mlflow"]["authorization_function"] == bootstrap.PLUGIN
    assert str(settings.auth_dir) in config["mlflow"]["database_uri"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "pw" and len(env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) >= 32
    assert bootstrap.mlflow_server_env(settings, "pw")["MLFLOW_FLASK_SERVER_SECRET_KEY"] == \
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"]  # kept across starts
    with pytest.raises(SystemExit):
        bootstrap.mlflow_server_env(Settings(data_dir=tmp_path, auth_default_permission="ALL"), "pw")


def test_model_hosts_get_no_secrets() -> None:
    env = {"PATH": "/bin", **bootstrap.client_env(Settings(), "pw"), "MLFLOW_TRACKING_TOKEN": "t"}
    assert bootstrap.without_secrets(env) == {"PATH": "/bin"}
