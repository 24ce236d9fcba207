"""Porchlight settings: environment variables only (see ../shared/contracts/configuration.md).

Embedded mode (the default) needs nothing: SQLite, an in-memory channel layer, eager Celery,
console SMS and email. Production mode starts when DATABASE_URL and REDIS_URL point at
PostgreSQL and Redis.
"""

from __future__ import annotations

import warnings
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import environ
import structlog
import xstatic.pkg.leaflet
from csp.constants import NONCE, NONE, SELF
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

DEBUG = env.bool("DJANGO_DEBUG", default=False)

SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set it to a long random string "
            "(python -c 'import secrets; print(secrets.token_urlsafe(50))'), "
            "or set DJANGO_DEBUG=1 for local development."
        )
    SECRET_KEY = "django-insecure-porchlight-dev-key-never-use-in-production"  # noqa: S105 (debug only)

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])

PORCHLIGHT_PUBLIC_URL = env.str("PORCHLIGHT_PUBLIC_URL", default="http://localhost:8000").rstrip("/")
PORCHLIGHT_ROUTING_SECRETS = env.list(
    "PORCHLIGHT_ROUTING_SECRETS", default=["dev-routing-secret"] if DEBUG else []
)
PORCHLIGHT_ROUTING_URL = env.str("PORCHLIGHT_ROUTING_URL", default="")
PORCHLIGHT_OUTBOUND_SECRET = env.str("PORCHLIGHT_OUTBOUND_SECRET", default="")
PORCHLIGHT_LIVE_MAP_STOPS = env.int("PORCHLIGHT_LIVE_MAP_STOPS", default=3)
# How far a signature's timestamp may be from our clock (contract: 300 s).
PORCHLIGHT_SIGNATURE_TOLERANCE = 300
# Outbound events are retried for at least this long before staff are asked to look.
PORCHLIGHT_OUTBOUND_GIVE_UP_AFTER = env.int("PORCHLIGHT_OUTBOUND_GIVE_UP_AFTER", default=26 * 3600)
PORCHLIGHT_OUTBOUND_TIMEOUT = env.float("PORCHLIGHT_OUTBOUND_TIMEOUT", default=10.0)
# Slot booking (scheduling): customers may book up to this many hours before a slot starts,
# change a booking this many times, and see slots this many days ahead.
PORCHLIGHT_BOOKING_CUTOFF_HOURS = env.float("PORCHLIGHT_BOOKING_CUTOFF_HOURS", default=12.0)
PORCHLIGHT_BOOKING_MAX_CHANGES = env.int("PORCHLIGHT_BOOKING_MAX_CHANGES", default=3)
PORCHLIGHT_SLOT_DAYS_AHEAD = env.int("PORCHLIGHT_SLOT_DAYS_AHEAD", default=14)

REDIS_URL = env.str("REDIS_URL", default="")
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)

MAP_TILE_URL = env.str("MAP_TILE_URL", default="https://tile.openstreetmap.org/{z}/{x}/{y}.png")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "channels",
    "anymail",
    "csp",
    "axes",
    "tracking",
    "notifications",
    "scheduling",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Static files (Leaflet, htmx, the page scripts) from the web process itself, compressed.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # A request id for every log line of the request, returned as X-Request-ID.
    "config.middleware.RequestIdMiddleware",
    "config.middleware.CSPMiddleware",
    # The headers of every page under a customer's link /t/<token>/ (no-referrer, no-store...).
    "config.middleware.TokenUrlHeadersMiddleware",
    "config.middleware.DatabaseUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    # One narrow exception to the CSRF check for the token URLs (see the class), then Django's.
    "config.middleware.TokenUrlCsrfMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: turns a lockout into its 429 answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    }
]

# --- database ---------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # WAL with synchronous=NORMAL, and BEGIN IMMEDIATE so that concurrent writers wait for
    # the lock instead of failing with "database is locked" halfway through a transaction.
    _db["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
elif _db["ENGINE"] == "django.db.backends.postgresql":
    # Under ASGI every thread would keep its own persistent connection and exhaust the
    # server ("too many clients"); Django's psycopg pool shares a bounded set instead.
    _db["CONN_MAX_AGE"] = 0
    _db.setdefault("OPTIONS", {})["pool"] = {
        "min_size": 2,
        "max_size": env.int("DATABASE_POOL_MAX", default=20),
        "timeout": 10,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- channels, cache, celery: in-process without Redis ----------------------------------
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            # Redis pub/sub channels ignore the db number: a prefix keeps apart deployments (and
            # test sessions) that share one Redis.
            "CONFIG": {"hosts": [REDIS_URL], "prefix": env.str("CHANNEL_LAYER_PREFIX", default="asgi")},
        }
    }
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "porchlight",
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_BROKER_URL = CELERY_BROKER_URL or "memory://"
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 120
CELERY_TASK_SOFT_TIME_LIMIT = 90
# Longer than the longest task; long waits live in the database (next_attempt_at), never in
# Celery countdowns, so nothing is scheduled beyond this.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=300),
    # A stalled Redis must not hold a request: publishing gives up quickly, the row stays in
    # its outbox and the beat sweeper queues it again later.
    "socket_timeout": 5,
    "socket_connect_timeout": 2,
}
CELERY_TASK_PUBLISH_RETRY_POLICY = {
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "outbound-sweep": {"task": "tracking.tasks.outbound_sweep", "schedule": 30.0},
    "slots-generate": {"task": "scheduling.tasks.slots_generate", "schedule": 3600.0},
}

# --- messages ---------------------------------------------------------------------------
SMS_BACKEND = env.str("SMS_BACKEND", default="notifications.backends.console.SMSBackend")
SMS_FILE_PATH = env.str("SMS_FILE_PATH", default="")
TWILIO_ACCOUNT_SID = env.str("TWILIO_ACCOUNT_SID", default="")
TWILIO_AUTH_TOKEN = env.str("TWILIO_AUTH_TOKEN", default="")
TWILIO_FROM = env.str("TWILIO_FROM", default="")
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
EMAIL_FILE_PATH = env.str("EMAIL_FILE_PATH", default="") or None
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Porchlight <no-reply@localhost>")
ANYMAIL = {
    key.removeprefix("ANYMAIL_"): value for key, value in env.ENVIRON.items() if key.startswith("ANYMAIL_")
}
# Notifications: no SMS in these local hours of the delivery's timezone ("" turns them off).
NOTIFY_QUIET_HOURS = env.str("NOTIFY_QUIET_HOURS", default="21:00-08:00")
NOTIFY_MAX_ATTEMPTS = env.int("NOTIFY_MAX_ATTEMPTS", default=12)
NOTIFY_SWEEP_INTERVAL = env.float("NOTIFY_SWEEP_INTERVAL", default=30.0)
# A sender holds a message this long; past it, the sweeper hands it to another worker.
NOTIFY_LEASE_SECONDS = env.int("NOTIFY_LEASE_SECONDS", default=120)
CELERY_BEAT_SCHEDULE["notifications-sweep"] = {
    "task": "notifications.tasks.notifications_sweep",
    "schedule": NOTIFY_SWEEP_INTERVAL,
}
CELERY_BEAT_SCHEDULE["notifications-reminders"] = {
    "task": "notifications.tasks.reminders_queue",
    "schedule": 3600.0,
}

# --- i18n, static -----------------------------------------------------------------------
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("es", "Español")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
# Leaflet comes from a package (xstatic-leaflet), served as /static/leaflet/leaflet.js.
STATICFILES_DIRS = [BASE_DIR / "static", ("leaflet", xstatic.pkg.leaflet.BASE_DIR)]
STATIC_ROOT = BASE_DIR / "staticfiles"
# Deploys run collectstatic, which writes gzip/brotli copies that WhiteNoise serves. Without a
# STATIC_ROOT (tests, the demo) it serves straight from the apps and packages, uncompressed.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = DEBUG or not STATIC_ROOT.is_dir()
if WHITENOISE_USE_FINDERS:
    warnings.filterwarnings("ignore", message="No directory at")

# --- security: on when the public URL is https --------------------------------------------
_public_https = urlsplit(PORCHLIGHT_PUBLIC_URL).scheme == "https"
CSRF_TRUSTED_ORIGINS = [PORCHLIGHT_PUBLIC_URL]
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = _public_https
SECURE_SSL_REDIRECT = _public_https
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]  # load balancers probe over plain http
SECURE_HSTS_SECONDS = 31536000 if _public_https else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = _public_https
SECURE_HSTS_PRELOAD = _public_https
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if _public_https else None
# Site-wide (the admin): "same-origin". Pages under a customer's link send "no-referrer"
# (config.middleware.TokenUrlHeadersMiddleware), and their forms still pass CSRF (see
# config.middleware.TokenUrlCsrfMiddleware and docs/deployment.md).
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024  # the intake's 1 MiB body limit

# --- logs: structured (JSON) in production, readable in DEBUG, a request id on each line ------
# structlog renders every record, ours and the libraries' (stdlib logging goes through the same
# formatter), with the request id bound by config.middleware.RequestIdMiddleware (which also
# writes one request_finished line per request). Nothing logs raw payloads, tokens or secrets:
# see docs/operations.md.
_log_chain: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "structured": {
            "()": structlog.stdlib.ProcessorFormatter,
            "processors": [
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.dev.ConsoleRenderer(colors=False),
            ]
            if DEBUG
            else [
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
            "foreign_pre_chain": _log_chain,
        }
    },
    "filters": {"redact_tokens": {"()": "config.middleware.RedactTokensFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "structured", "filters": ["redact_tokens"]}
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}
structlog.configure(
    processors=[
        structlog.stdlib.filter_by_level,  # a DEBUG line costs nothing at INFO
        *_log_chain,
        structlog.processors.StackInfoRenderer(),
        structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
    wrapper_class=structlog.stdlib.BoundLogger,
    cache_logger_on_first_use=True,
)

# --- websockets: limits of the tracking socket (h5-sockets; docs/scaling.md) ---------------
# Open tracking sockets per client IP, across all web processes when the cache is Redis (one
# process's count with the embedded LocMemCache). Generous: carrier NAT puts many phones on one IP.
PORCHLIGHT_WS_MAX_PER_IP = env.int("PORCHLIGHT_WS_MAX_PER_IP", default=200)
# Inbound frames or messages above this fail the connection (1009) as their header arrives.
PORCHLIGHT_WS_MAX_MESSAGE_BYTES = env.int("PORCHLIGHT_WS_MAX_MESSAGE_BYTES", default=64 * 1024)
# A socket with more than this unsent (past the kernel's buffer) is closed as over capacity.
PORCHLIGHT_WS_SEND_BUFFER_BYTES = env.int("PORCHLIGHT_WS_SEND_BUFFER_BYTES", default=256 * 1024)


# --- h3 (#7): security headers, abuse limits, privacy, retention ------------------------------
# Content-Security-Policy by django-csp, on every response (the admin too): no inline script or
# style anywhere, a per-request script nonce for any template that ever needs one (there is
# none today), the map tiles' origin for images, and no framing.
def _tile_origin(template: str) -> str:
    parts = urlsplit(template)
    if not parts.scheme or not parts.netloc:
        return ""
    return f"{parts.scheme}://{parts.netloc.replace('{s}', '*')}"


CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF, NONCE],
        "style-src": [SELF],
        "img-src": [SELF, "data:", *filter(None, [_tile_origin(MAP_TILE_URL)])],
        "connect-src": [SELF],
        "font-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# How many proxies (load balancer, CDN) in front of the web processes append to
# X-Forwarded-For. 0: the client is REMOTE_ADDR and X-Forwarded-For is ignored. N: the client is
# the N-th address from the right (anything further left is the client's own claim).
PORCHLIGHT_TRUSTED_PROXIES = env.int("PORCHLIGHT_TRUSTED_PROXIES", default=0)
# Unknown tracking tokens: a client (by IP) is refused with 429 after this many misses in the window.
PORCHLIGHT_TOKEN_MISS_LIMIT = env.int("PORCHLIGHT_TOKEN_MISS_LIMIT", default=30)
PORCHLIGHT_TOKEN_MISS_WINDOW = env.int("PORCHLIGHT_TOKEN_MISS_WINDOW", default=600)

# django-axes: admin logins lock out per client IP (the same client_ip as the throttle) after
# AXES_FAILURE_LIMIT failures, for AXES_COOLOFF_TIME. The database handler: every daphne process
# sees the same count, and a restart forgets nothing. Unlock: manage.py axes_reset[_ip].
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"
AXES_FAILURE_LIMIT = env.int("PORCHLIGHT_ADMIN_LOGIN_FAILURES", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("PORCHLIGHT_ADMIN_LOCKOUT_MINUTES", default=15))
# Per IP, not per username: a username lockout would let anyone lock staff out of the admin.
AXES_LOCKOUT_PARAMETERS = ["ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "config.middleware.client_ip"
AXES_USERNAME_CALLABLE = "config.middleware.axes_username"
AXES_SENSITIVE_PARAMETERS = ["password", "csrfmiddlewaretoken"]

# Retention (tracking/privacy.py, beat job "privacy-retention"): driver positions older than
# PING_DAYS are deleted; the personal data of deliveries finished more than PERSONAL_DAYS ago
# is erased (docs/operations.md says what is erased and what is kept).
PORCHLIGHT_RETENTION_PING_DAYS = env.int("PORCHLIGHT_RETENTION_PING_DAYS", default=7)
PORCHLIGHT_RETENTION_PERSONAL_DAYS = env.int("PORCHLIGHT_RETENTION_PERSONAL_DAYS", default=90)
PORCHLIGHT_RETENTION_BATCH = env.int("PORCHLIGHT_RETENTION_BATCH", default=500)
CELERY_BEAT_SCHEDULE["privacy-retention"] = {
    "task": "tracking.tasks.retention_run",
    "schedule": env.float("PORCHLIGHT_RETENTION_INTERVAL", default=3600.0),
}

# --- integrations: Onfleet and Spoke webhooks (issue #8; docs/integrations.md) ------------
# Comma-separated, for rotation. Onfleet's are hex (as Onfleet shows them); Spoke's are the team's secret.
ONFLEET_WEBHOOK_SECRETS = env.list("ONFLEET_WEBHOOK_SECRETS", default=[])
SPOKE_WEBHOOK_SECRETS = env.list("SPOKE_WEBHOOK_SECRETS", default=[])
# A delivery's time zone when the recipient's phone number does not name one.
INTEGRATIONS_TIMEZONE = env.str("INTEGRATIONS_TIMEZONE", default="UTC")
# Onfleet sends photo upload ids, not URLs: e.g. "https://photos.example.com/{id}.png" ("" = no proof photo).
ONFLEET_PHOTO_URL_TEMPLATE = env.str("ONFLEET_PHOTO_URL_TEMPLATE", default="")

# --- support desk (issue 6) ---------------------------------------------------------------
# A phone number searched without a country code ("(956) 555-0123") is read in this region.
PORCHLIGHT_SUPPORT_PHONE_REGION = env.str("PORCHLIGHT_SUPPORT_PHONE_REGION", default="US")

# --- reliability: chaos tests (issues #4, #7) ---------------------------------------------
# kombu puts back the tasks of a worker that died (unacked past the visibility timeout) only
# when it scans for them, by default every 10 x 10 s; every 5 s instead, so that a lost task
# runs again within the visibility timeout + 5 s (RELIABILITY.md O3), sweeper or not.
CELERY_BROKER_TRANSPORT_OPTIONS["unacked_restore_interval"] = 5
CELERY_BROKER_TRANSPORT_OPTIONS["unacked_restore_throttle"] = 1

# --- Publishing after commit (tracking.background) ---------------------------------------------
# With a broker, Celery publishes run on one thread per process instead of in the request, so a
# stalled Redis never holds a request; the sweepers hand out whatever such a publish missed.
PORCHLIGHT_PUBLISH_IN_BACKGROUND = env.bool("PORCHLIGHT_PUBLISH_IN_BACKGROUND", default=True)
