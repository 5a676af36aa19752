"""Levee settings: one module, driven by the environment.

Safe defaults for a laptop (SQLite in ./var, the embedded Redis that `make run` starts, mail written
to files); production is a handful of variables (see docs/operations.md). A bad value fails loudly.
"""
from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from levee.core.logging import logging_config
from levee.env import env_bool, env_cidrs, env_int, env_list, env_secret, env_str, local_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent.parent  # the repository root
DATA_DIR = Path(env_str("LEVEE_DATA_DIR") or BASE_DIR / "var")

LEVEE_ENV = env_str("LEVEE_ENV", "development")
if LEVEE_ENV not in {"development", "production", "test"}:
    raise ImproperlyConfigured(f"LEVEE_ENV={LEVEE_ENV!r}: use development, production or test")
PRODUCTION = LEVEE_ENV == "production"

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_secret("SECRET_KEY") or ""  # a str for every reader: unset is handled just below
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) is required when LEVEE_ENV=production")
    SECRET_KEY = local_secret_key(DATA_DIR)
elif PRODUCTION and len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters in production")
# Rotation: the new key signs, the old ones (comma-separated) still verify until they are dropped.
SECRET_KEY_FALLBACKS = [k.strip() for k in (env_secret("SECRET_KEY_FALLBACKS") or "").split(",") if k.strip()]

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
SITE_URL = (env_str("SITE_URL") or "http://127.0.0.1:8000").rstrip("/")

# Addresses of reverse proxies whose X-Forwarded-For we believe (see levee.core.client_ip).
TRUSTED_PROXY_CIDRS = env_cidrs("TRUSTED_PROXY_CIDRS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "levee.core",
    "levee.accounts",
    "levee.keys",
    "levee.api",
    "levee.billing",
    "levee.shield",
    "levee.chat",
    "levee.home",
]

MIDDLEWARE = [
    "levee.core.middleware.RequestIdMiddleware",
    "levee.core.middleware.RequestLogMiddleware",
    "levee.core.middleware.BodySizeLimitMiddleware",
    "levee.core.middleware.LocaleMiddleware",  # before the shield: its refusal pages are translated too
    "levee.shield.middleware.ShieldMiddleware",
    # Django's own, adapted (levee/core/middleware.py): those that only compute run inline; the
    # browser ones are skipped on @sessionless routes (the key-authenticated API, probes). In an
    # async stack each plain Django middleware costs a thread hop per hook.
    "levee.core.middleware.SecurityMiddleware",
    "levee.core.middleware.CSPMiddleware",
    "levee.core.middleware.StaticFilesMiddleware",
    "levee.core.middleware.SessionMiddleware",
    "levee.core.middleware.CommonMiddleware",
    "levee.core.middleware.CsrfViewMiddleware",
    "levee.core.middleware.AuthenticationMiddleware",
    "levee.core.middleware.MessageMiddleware",
    "levee.core.middleware.XFrameOptionsMiddleware",
    "levee.core.middleware.DatabaseUnavailableMiddleware",  # innermost: a view's DatabaseError is a 503
]

ROOT_URLCONF = "levee.urls"
ASGI_APPLICATION = "levee.asgi.application"
WSGI_APPLICATION = "levee.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "platform" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "levee.shield.context.mitigation",
                "levee.chat.context.free_chat",
                "levee.core.context.preferences",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_secret("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'levee.sqlite3'}",
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Many short writers (web, worker, beat) share one file locally: wait instead of failing.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The embedded Redis that `make run` starts listens here; production points REDIS_URL elsewhere.
# DATABASE_URL, REDIS_URL and CELERY_BROKER_URL may come from files (NAME_FILE): they hold passwords.
REDIS_URL = env_secret("REDIS_URL") or "redis://127.0.0.1:6380/0"
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "levee:cache",
        "TIMEOUT": 300,
    }
}

CELERY_BROKER_URL = env_secret("CELERY_BROKER_URL") or REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_DEFAULT_QUEUE = "platform"
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE: dict = {}
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # keep LOGGING's JSON handler and redaction in workers too
# Celery's Django fixup closes the database connection before and after every task unless this is
# set: each settlement then opened a new PostgreSQL session (a backend process; `connect` was 15% of
# the platform worker's profile). With it, the fixup closes the running thread's connection once per
# thousand tasks of the worker, and levee.celery applies Django's own rule before each task
# (CONN_MAX_AGE, broken connections).
CELERY_DB_REUSE_MAX = 1000

# The shield (rate limits, shedding, mitigation modes): its defaults live beside it.
from levee.shield.conf import *  # noqa: E402,F403

SHIELD_REDIS_URL = env_str("SHIELD_REDIS_URL") or REDIS_URL
CELERY_BEAT_SCHEDULE["shield-evaluate-mode"] = {"task": "levee.shield.evaluate_mode", "schedule": 10.0,
                                                "options": {"queue": "platform", "expires": 10}}

AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "home"
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
PASSWORD_RESET_TIMEOUT = env_int("PASSWORD_RESET_TIMEOUT", 3600, minimum=60)
EMAIL_VERIFICATION_MAX_AGE = env_int("EMAIL_VERIFICATION_MAX_AGE", 3 * 24 * 3600, minimum=60)

EMAIL_HOST = env_str("EMAIL_HOST")
if EMAIL_HOST:
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_PORT = env_int("EMAIL_PORT", 587)
    EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
    EMAIL_HOST_PASSWORD = env_secret("EMAIL_HOST_PASSWORD", "")
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
else:
    EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
    EMAIL_FILE_PATH = str(Path(env_str("EMAIL_FILE_PATH") or DATA_DIR / "mail"))
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Levee <noreply@localhost>")

# Request bodies: the API's largest legitimate body is a long chat; anything above is refused early.
LEVEE_MAX_BODY_BYTES = env_int("LEVEE_MAX_BODY_BYTES", 4 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = LEVEE_MAX_BODY_BYTES
DATA_UPLOAD_MAX_NUMBER_FIELDS = 200

LEVEE_MAX_ACTIVE_KEYS = env_int("LEVEE_MAX_ACTIVE_KEYS", 10, minimum=1)
# A key's last-used time is written at most this often, so a hot key costs no write per request.
LEVEE_KEY_LAST_USED_RESOLUTION = env_int("LEVEE_KEY_LAST_USED_RESOLUTION", 60, minimum=1)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["levee.core.jsonbody.JSONParser"],  # hostile JSON is a 400
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "levee.core.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "DEFAULT_THROTTLE_CLASSES": ["levee.shield.throttles.ApiKeyThrottle"],
}

# Pages in English or Simplified Chinese (docs/web.md): the levee_language cookie (the switch, or the
# account's preference copied at log-in), else Accept-Language. The API always answers in English.
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "platform" / "locale"]  # compiled by ops/compile_messages.py (make run/test)
LANGUAGE_COOKIE_NAME = "levee_language"
LANGUAGE_COOKIE_AGE = 365 * 24 * 3600
LANGUAGE_COOKIE_SAMESITE = "Lax"
FORMAT_MODULE_PATH = ["levee.formats"]  # English dates in ISO order; Chinese keeps Django's
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT") or DATA_DIR / "static")
STATICFILES_DIRS = [BASE_DIR / "platform" / "static"]
if not PRODUCTION:
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # whitenoise warns at every start without it
    # Off production nobody runs collectstatic (make run, the e2e stack): whitenoise serves the
    # source folders directly. Production serves what the image's collectstatic gathered.
    WHITENOISE_USE_FINDERS = True
    WHITENOISE_AUTOREFRESH = DEBUG

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
# Content-Security-Policy (django-csp), everywhere, so development and the browser tests meet the
# policy production serves: scripts only from our own static files (no inline script or handler
# anywhere in the templates; data reaches scripts through json_script blocks and data-attributes).
# Styles allow inline attributes (Django admin's templates use them; a style cannot run code).
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        # No form-action: browsers apply it to the redirect after a POST too, and a top-up's
        # redirects to the payment provider's checkout page.
        "frame-ancestors": ["'none'"],
    },
}
if PRODUCTION:
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
    # Believed only when a configured proxy sent it: RequestIdMiddleware drops the header from any
    # other peer, so a client cannot claim HTTPS for itself.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # Probes and scrapes reach the web tier directly over plain HTTP inside the deployment.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 365 * 24 * 3600, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)

# Structured logs (levee.core.logging): JSON lines in production, text on a terminal; secrets masked.
LOG_FORMAT = env_str("LOG_FORMAT") or ("json" if PRODUCTION else "text")
if LOG_FORMAT not in {"json", "text"}:
    raise ImproperlyConfigured(f"LOG_FORMAT={LOG_FORMAT!r}: use json or text")
LOGGING = logging_config(LOG_FORMAT, env_str("LOG_LEVEL", "INFO"))

# auth.E003: User.email is unique through a case-insensitive constraint (Lower(email)), which this
# check cannot see; a plain unique=True beside it would only add a second index.
# security.W001-W003 look for Django's security, clickjacking and CSRF middleware by their dotted
# names; MIDDLEWARE holds subclasses of each (levee.core.middleware), which a test keeps true.
SILENCED_SYSTEM_CHECKS = ["auth.E003", "security.W001", "security.W002", "security.W003"]

# Generation jobs (see docs/jobs.md).
LEVEE_JOB_QUEUE_TIMEOUT = env_int("LEVEE_JOB_QUEUE_TIMEOUT", 600, minimum=1)  # DeepSeek closes after 10 min
LEVEE_JOB_MAX_RUNTIME = env_int("LEVEE_JOB_MAX_RUNTIME", 600, minimum=1)
LEVEE_JOB_HEARTBEAT_TIMEOUT = env_int("LEVEE_JOB_HEARTBEAT_TIMEOUT", 10, minimum=1)
# The reader's lease on a job it follows (levee.api.jobs.Lease): a worker cancels a job nobody has
# refreshed the lease of for this long (its web process died), and bills at most what it last said
# was delivered. Longer than any pause of a web process's event loop, or a live stream is cut.
LEVEE_READER_LEASE_SECONDS = env_int("LEVEE_READER_LEASE_SECONDS", 10, minimum=1)
# A Server-Timing header on API answers: where the time went before the response started.
LEVEE_SERVER_TIMING = env_bool("LEVEE_SERVER_TIMING", True)
# Per-process memos of hot rows (levee.core.memo): unset = each memo's own bound; 0 = off.
LEVEE_MEMO_SECONDS = float(memo_seconds) if (memo_seconds := env_str("LEVEE_MEMO_SECONDS")) else None
# Billing (docs/billing.md). Money is integer nano-units of LEVEE_CURRENCY (1 USD = 10**9 nano).
LEVEE_CURRENCY = (env_str("LEVEE_CURRENCY") or "USD").strip().upper()
# Granted once an account's address is verified: a decimal in LEVEE_CURRENCY ("0" = none).
LEVEE_SIGNUP_CREDIT = (env_str("LEVEE_SIGNUP_CREDIT") or "0").strip()
LEVEE_SIGNUP_CREDIT_EXPIRY_DAYS = env_int("LEVEE_SIGNUP_CREDIT_EXPIRY_DAYS", 30, minimum=0)  # 0 = never
# An open hold is released this long after its job's deadline (the job is presumed dead).
LEVEE_HOLD_SWEEP_GRACE_SECONDS = env_int("LEVEE_HOLD_SWEEP_GRACE_SECONDS", 60, minimum=0)
LEVEE_USAGE_MAX_DAYS = env_int("LEVEE_USAGE_MAX_DAYS", 366, minimum=1)
# The most rows one per-request or ledger CSV export may hold (a longer range is refused up front).
LEVEE_EXPORT_MAX_ROWS = env_int("LEVEE_EXPORT_MAX_ROWS", 1_000_000, minimum=1)
# Top-ups through Stripe Checkout (docs/billing.md): offered when both keys are set and the
# currency is USD or CNY. STRIPE_API_BASE points the stripe library elsewhere (tests: a local stand-in).
STRIPE_SECRET_KEY = env_secret("STRIPE_SECRET_KEY") or ""
STRIPE_WEBHOOK_SECRET = env_secret("STRIPE_WEBHOOK_SECRET") or ""
STRIPE_API_BASE = env_str("STRIPE_API_BASE") or "https://api.stripe.com"
LEVEE_STRIPE_WEBHOOK_TOLERANCE = env_int("LEVEE_STRIPE_WEBHOOK_TOLERANCE", 300, minimum=1)  # seconds
LEVEE_TOPUP_AMOUNTS = env_list("LEVEE_TOPUP_AMOUNTS", ["5", "10", "20", "50", "100"])
LEVEE_TOPUP_MIN = env_str("LEVEE_TOPUP_MIN") or "1"
LEVEE_TOPUP_MAX = env_str("LEVEE_TOPUP_MAX") or "1000"
# Alerts (docs/billing.md): webhook deliveries retry with back-off base × 2^(n−1) seconds.
LEVEE_ALERT_QUEUE = "platform"
LEVEE_ALERT_WEBHOOK_MAX_ATTEMPTS = env_int("LEVEE_ALERT_WEBHOOK_MAX_ATTEMPTS", 8, minimum=1)
LEVEE_ALERT_WEBHOOK_BACKOFF_SECONDS = float(env_str("LEVEE_ALERT_WEBHOOK_BACKOFF_SECONDS") or 30)
LEVEE_ALERT_WEBHOOK_TIMEOUT = float(env_str("LEVEE_ALERT_WEBHOOK_TIMEOUT") or 10)
# Allow webhook URLs on private or loopback addresses (and plain http): development and tests only.
LEVEE_ALERT_WEBHOOK_ALLOW_PRIVATE = env_bool("LEVEE_ALERT_WEBHOOK_ALLOW_PRIVATE", not PRODUCTION)
# Inference workers sign each job's settlement with this (HMAC-SHA256); the web and the platform
# refuse settlements it does not sign. Unset outside production: derived from SECRET_KEY (ops/run.py
# and the test stack hand the same value to their workers).
LEVEE_WORKER_SECRET = env_secret("LEVEE_WORKER_SECRET") or ""
if not LEVEE_WORKER_SECRET:
    if PRODUCTION:
        raise ImproperlyConfigured("LEVEE_WORKER_SECRET (or LEVEE_WORKER_SECRET_FILE) is required when "
                                   "LEVEE_ENV=production")
    import hmac as _hmac

    LEVEE_WORKER_SECRET = _hmac.new(SECRET_KEY.encode(), b"levee-worker-secret", "sha256").hexdigest()
# The platform's settle task retries until it succeeds; past this many tries it alerts (a log line
# at ERROR and levee_settle_retry_alerts_total) on every further try.
LEVEE_SETTLE_ALERT_RETRIES = env_int("LEVEE_SETTLE_ALERT_RETRIES", 8, minimum=1)
CELERY_BEAT_SCHEDULE.update({
    "billing-alert-digests": {"task": "levee.billing.alert_digests", "schedule": 3600.0,
                              "options": {"queue": "platform", "expires": 3500}},
    "billing-sweep-holds": {"task": "levee.billing.sweep_holds", "schedule": 60.0,
                            "options": {"queue": "platform", "expires": 55}},
    "billing-expire-grants": {"task": "levee.billing.expire_grants", "schedule": 600.0,
                              "options": {"queue": "platform", "expires": 550}},
    "chat-sweep-stale-replies": {"task": "levee.chat.sweep_stale_replies", "schedule": 300.0,
                                 "options": {"queue": "platform", "expires": 290}},
})

# Operations (docs/operations.md, docs/observability.md).
# Probes and scrapes: the shield exempts these paths from rate limits and the mode gate.
LEVEE_UNLIMITED_PATHS = ["/healthz", "/readyz", "/metrics"]
# /metrics answers these networks (the client address after trusted proxies), or a bearer token.
LEVEE_METRICS_CIDRS = env_cidrs("LEVEE_METRICS_CIDRS", ["127.0.0.1/32", "::1/128"])
LEVEE_METRICS_TOKEN = env_secret("LEVEE_METRICS_TOKEN") or ""
# /readyz reuses one answer per process for this long, so probes cost at most one check a second.
LEVEE_READYZ_CACHE_MS = env_int("LEVEE_READYZ_CACHE_MS", 1000, minimum=0)

# Free web chat (docs/web.md): tokens (prompt + reply) per account per UTC day, and the longest message.
LEVEE_WEB_CHAT_DAILY_TOKENS = env_int("LEVEE_WEB_CHAT_DAILY_TOKENS", 100_000, minimum=0)
LEVEE_WEB_CHAT_MAX_MESSAGE_CHARS = env_int("LEVEE_WEB_CHAT_MAX_MESSAGE_CHARS", 16_000, minimum=1)
