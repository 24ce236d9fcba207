"""Configuration as ../shared/contracts/configuration.md says: environment only, embedded by default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHOW = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({'engine': s.DATABASES['default']['ENGINE'],"
    " 'layer': s.CHANNEL_LAYERS['default']['BACKEND'],"
    " 'eager': s.CELERY_TASK_ALWAYS_EAGER, 'sms': s.SMS_BACKEND, 'email': s.EMAIL_BACKEND, 'debug': s.DEBUG,"
    " 'hosts': s.ALLOWED_HOSTS, 'pool': bool(s.DATABASES['default'].get('OPTIONS', {}).get('pool')),"
    " 'hsts': s.SECURE_HSTS_SECONDS, 'ssl_redirect': s.SECURE_SSL_REDIRECT}))"
)
CONFIG_NAMES = ("DJANGO_", "DATABASE_URL", "REDIS_URL", "CELERY_", "PORCHLIGHT_", "SMS_", "EMAIL_", "TWILIO_")


def settings_with(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_NAMES)}
    clean.update(DJANGO_SETTINGS_MODULE="config.settings", **env)
    return subprocess.run(
        [sys.executable, "-c", SHOW], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60
    )


def test_with_debug_off_and_no_secret_key_it_refuses_to_start_and_says_why():
    result = settings_with()
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in result.stderr


def test_with_nothing_configured_but_debug_it_runs_embedded():
    result = settings_with(DJANGO_DEBUG="1")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown == {
        "engine": "django.db.backends.sqlite3",
        "layer": "channels.layers.InMemoryChannelLayer",
        "eager": True,
        "sms": "notifications.backends.console.SMSBackend",
        "email": "django.core.mail.backends.console.EmailBackend",
        "debug": True,
        "hosts": ["localhost", "127.0.0.1"],
        "pool": False,
        "hsts": 0,
        "ssl_redirect": False,
    }


def test_database_and_redis_urls_switch_to_the_production_stack():
    result = settings_with(
        DJANGO_SECRET_KEY="k",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/porchlight",
        REDIS_URL="redis://127.0.0.1:6379/0",
        PORCHLIGHT_PUBLIC_URL="https://track.example.com",
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["engine"] == "django.db.backends.postgresql"
    assert shown["pool"] is True  # persistent per-thread connections exhaust PostgreSQL under ASGI
    assert shown["layer"].startswith("channels_redis.")
    assert shown["eager"] is False
    assert shown["debug"] is False
    assert shown["hsts"] >= 15_724_800 and shown["ssl_redirect"] is True


def test_the_deploy_checks_pass_with_production_settings():
    clean = {k: v for k, v in os.environ.items() if not k.startswith(CONFIG_NAMES)}
    clean.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_SECRET_KEY="a-long-random-production-key-" + "x7Qp" * 12,
        DJANGO_ALLOWED_HOSTS="track.example.com",
        PORCHLIGHT_PUBLIC_URL="https://track.example.com",
        PORCHLIGHT_ROUTING_SECRETS="routing-secret",
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_the_security_privacy_and_log_settings_come_from_the_environment():
    show = (
        "import json, django; django.setup(); from django.conf import settings as s; "
        "import logging; f = logging.getLogger().handlers[0].formatter; "
        "print(json.dumps({'proxies': s.PORCHLIGHT_TRUSTED_PROXIES, 'img': s.CONTENT_SECURITY_POLICY"
        "['DIRECTIVES']['img-src'], 'axes': s.AXES_FAILURE_LIMIT, 'cooloff': s.AXES_COOLOFF_TIME.seconds,"
        " 'pings': s.PORCHLIGHT_RETENTION_PING_DAYS, 'personal': s.PORCHLIGHT_RETENTION_PERSONAL_DAYS,"
        " 'beat': s.CELERY_BEAT_SCHEDULE['privacy-retention']['task'],"
        " 'renderer': type(f.processors[-1]).__name__}))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith((*CONFIG_NAMES, "MAP_TILE_URL"))}
    clean.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DJANGO_SECRET_KEY="k",
        PORCHLIGHT_TRUSTED_PROXIES="2",
        MAP_TILE_URL="https://{s}.tiles.example.com/{z}/{x}/{y}.png",
        PORCHLIGHT_ADMIN_LOGIN_FAILURES="7",
        PORCHLIGHT_ADMIN_LOCKOUT_MINUTES="30",
        PORCHLIGHT_RETENTION_PING_DAYS="3",
        PORCHLIGHT_RETENTION_PERSONAL_DAYS="60",
    )
    result = subprocess.run(
        [sys.executable, "-c", show], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout.splitlines()[-1])
    assert shown == {
        "proxies": 2,
        "img": ["'self'", "data:", "https://*.tiles.example.com"],
        "axes": 7,
        "cooloff": 1800,
        "pings": 3,
        "personal": 60,
        "beat": "tracking.tasks.retention_run",
        "renderer": "JSONRenderer",  # debug off: one JSON object per line
    }
