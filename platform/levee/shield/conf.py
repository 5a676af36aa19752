"""The shield's defaults, read from the environment. `levee.settings` star-imports this module, so
every name here is a Django setting (override any of them in the environment or in test settings).

Rates are (limit, period in seconds); concurrency is a plain count.
"""
from levee.env import env_bool, env_int

_MIN = 60
_HOUR = 3600
_DAY = 24 * _HOUR


def _smooth(per_minute: int) -> tuple[int, float]:
    """A per-minute rate as (limit, period) with a burst of about one second's worth, not a minute's."""
    limit = max(1, per_minute // 60)
    return limit, limit * 60 / per_minute

SHIELD_REDIS_TIMEOUT = 0.25  # seconds; a dead Redis must not hold a request for long
# Opening a connection gets longer: a refused port fails at once anyway, and a burst of new
# connections on a busy box (300 concurrent admissions) can take longer than 0.25 s to be accepted.
SHIELD_REDIS_CONNECT_TIMEOUT = 1.0
# Redis Cluster: decide a multi-subject request one subject (one slot) at a time, with give-backs.
SHIELD_REDIS_CLUSTER = env_bool("SHIELD_REDIS_CLUSTER", False)
# Per process, per connection set: the limiter's decisions (store.Lane) and the shield's other
# commands (the client's pool) each have up to this many; the async twins one set per event loop.
SHIELD_REDIS_MAX_CONNECTIONS = env_int("SHIELD_REDIS_MAX_CONNECTIONS", 64, minimum=4)
# How long a process trusts what it read of the mode and the address rules (effect within 1 s).
SHIELD_STATE_CACHE_SECONDS = 0.5

_HASH_BURST = env_int("SHIELD_HASH_BURST_SECONDS", 3, minimum=1)  # see hash.known / hash.pass below
# Per subject and action: rule name -> (limit, period) or a count for "jobs" (concurrency).
SHIELD_LIMITS = {
    "api.key": {"requests": (env_int("SHIELD_KEY_RPM", 60, minimum=1), _MIN),
                "tokens": (env_int("SHIELD_KEY_TPM", 200_000, minimum=1), _MIN),
                "jobs": env_int("SHIELD_KEY_JOBS", 8, minimum=1)},
    "api.account": {"requests": (env_int("SHIELD_ACCOUNT_RPM", 120, minimum=1), _MIN),
                    "tokens": (env_int("SHIELD_ACCOUNT_TPM", 400_000, minimum=1), _MIN),
                    "jobs": env_int("SHIELD_ACCOUNT_JOBS", 16, minimum=1)},
    # Many people may share an address (offices, carrier NAT): address limits are wide.
    "api.address": {"requests": (env_int("SHIELD_API_ADDRESS_RPM", 600, minimum=1), _MIN),
                    "jobs": env_int("SHIELD_API_ADDRESS_JOBS", 64, minimum=1)},
    "api.subnet": {"requests": (env_int("SHIELD_API_SUBNET_RPM", 2400, minimum=1), _MIN)},
    "signup.address": {"requests": (env_int("SHIELD_SIGNUP_ADDRESS_PER_HOUR", 5, minimum=1), _HOUR)},
    "signup.subnet": {"requests": (env_int("SHIELD_SIGNUP_SUBNET_PER_HOUR", 30, minimum=1), _HOUR)},
    "signup.global": {"requests": (env_int("SHIELD_SIGNUP_GLOBAL_PER_MINUTE", 120, minimum=1), _MIN)},
    # Attempts (not failures) per address: bounds the password-hashing work one address can cause.
    "login.address": {"requests": (env_int("SHIELD_LOGIN_ADDRESS_PER_MINUTE", 30, minimum=1), _MIN)},
    # Log-ins from browsers that have never logged in to that account, site-wide, per second. Each
    # costs an Argon2 hash (~0.1-1 s of CPU), so a flood of them is a CPU flood; returning browsers
    # (the known-device cookie) are never counted here. Size it to a fraction of the web tier's cores.
    "login.global": {"requests": _smooth(env_int("SHIELD_LOGIN_NEW_DEVICE_PER_MINUTE", 1200, minimum=1))},
    # The admission layer's doors (levee.shield.admission), decided before Django sees the request.
    # POSTs per address at each browser door, and at all of them per /24 (IPv6 /64).
    "door.login.address": {"requests": (env_int("SHIELD_DOOR_LOGIN_PER_MINUTE", 30, minimum=1), _MIN)},
    "door.signup.address": {"requests": (env_int("SHIELD_DOOR_SIGNUP_PER_MINUTE", 10, minimum=1), _MIN)},
    "door.reset.address": {"requests": (env_int("SHIELD_DOOR_RESET_PER_MINUTE", 5, minimum=1), _MIN)},
    "door.admin.address": {"requests": (env_int("SHIELD_DOOR_ADMIN_PER_MINUTE", 10, minimum=1), _MIN)},
    "door.subnet": {"requests": (env_int("SHIELD_DOOR_SUBNET_PER_MINUTE", 300, minimum=1), _MIN)},
    # Password hashes per second, site-wide, by what the browser holds: a known-device cookie, a
    # pass, or nothing (only in calm times: under pressure a bare browser earns a pass first).
    # Separate budgets, so bare browsers and pass holders can never spend the known devices' share.
    # Argon2 costs about 0.1-0.15 s of a core here (the 2-worker tier of `make run`): 4 + 2 + 2 a
    # second is at most about 1.2 cores. Bare browsers get the least: in calm times bots that fetched
    # the form (and its CSRF token) spend it, in the seconds before the mode rises. A spike of real
    # new browsers beyond 2/s is shown the interstitial (a second of its own CPU), not refused.
    # Size them to the tier's cores. The returning users' two may be spent in bursts of up to
    # SHIELD_HASH_BURST_SECONDS (3) seconds' worth at the same rate: users who earned their passes
    # during the same seconds come back together (measured: the pass budget's 429 at 1 s of burst was
    # the flood benchmark's slowest log-ins). A burst costs at most about a second of both cores.
    "hash.known.global": {"requests": (env_int("SHIELD_HASH_KNOWN_PER_SECOND", 4, minimum=1) * _HASH_BURST,
                                       float(_HASH_BURST))},
    "hash.pass.global": {"requests": (env_int("SHIELD_HASH_PASS_PER_SECOND", 2, minimum=1) * _HASH_BURST,
                                      float(_HASH_BURST))},
    "hash.new.global": {"requests": (env_int("SHIELD_HASH_NEW_PER_SECOND", 2, minimum=1), 1.0)},
    # Door pages (log-in, sign-up, reset, the admin's) Django renders per second, site-wide, for
    # browsers with neither a known-device cookie nor a pass, in calm times (in any other mode those
    # browsers see the interstitial first). Past it a bare browser is shown the interstitial
    # instead: a render costs ~15 ms of a core, so 10/s is about a sixth of one. Size it to the tier.
    "page.new.global": {"requests": (env_int("SHIELD_PAGE_NEW_PER_SECOND", 10, minimum=1), 1.0)},
    # Bearer requests to the key-authenticated API per address and subnet, before the key is looked at.
    "apikey.address": {"requests": (env_int("SHIELD_APIKEY_ADDRESS_RPM", 1200, minimum=1), _MIN)},
    "apikey.subnet": {"requests": (env_int("SHIELD_APIKEY_SUBNET_RPM", 6000, minimum=1), _MIN)},
    # The staff door (/admin/login/): the same guard as login, tighter.
    "admin_login.address": {"requests": (env_int("SHIELD_ADMIN_LOGIN_ADDRESS_PER_MINUTE", 10, minimum=1), _MIN)},
    "admin_login.global": {"requests": _smooth(env_int("SHIELD_ADMIN_LOGIN_NEW_DEVICE_PER_MINUTE", 120, minimum=1))},
    # Web chat messages per account (each is tokenized and queued for the model).
    "chat.account": {"requests": (env_int("SHIELD_CHAT_MESSAGES_PER_MINUTE", 20, minimum=1), _MIN)},
    # Password reset requests per address (each may queue a mail).
    "reset.address": {"requests": (env_int("SHIELD_RESET_ADDRESS_PER_HOUR", 10, minimum=1), _HOUR)},
    "reset.subnet": {"requests": (env_int("SHIELD_RESET_SUBNET_PER_HOUR", 60, minimum=1), _HOUR)},
    # Mail Levee sends on a stranger's say-so (verification, "someone tried to sign up", password
    # reset), per recipient (its canonical form) and per recipient domain: the sign-up and reset
    # forms must not be a mail cannon aimed at one inbox or one organisation.
    "mail.recipient": {"requests": (env_int("SHIELD_MAIL_PER_RECIPIENT_PER_DAY", 5, minimum=1), _DAY)},
    "mail.domain": {"requests": (env_int("SHIELD_MAIL_PER_DOMAIN_PER_DAY", 2000, minimum=1), _DAY)},
}
# The admission layer's browser pass: proof-of-work bits by mode (normal: asked only under pressure),
# plus extra bits once the share of the subnet's door allowance used reaches each step.
SHIELD_PASS_BITS = {"normal": env_int("SHIELD_PASS_BITS_NORMAL", 14, minimum=1),
                    "elevated": env_int("SHIELD_PASS_BITS_ELEVATED", 16, minimum=1),
                    "under_attack": env_int("SHIELD_PASS_BITS_UNDER_ATTACK", 18, minimum=1)}
SHIELD_PASS_SUBNET_BITS = [(0.5, 2), (0.9, 2)]
# The interstitial itself (tests/e2e/test_browser.py logs in through it under_attack); off, bare
# browsers are counted against the new-browser hashing budget in every mode and never see it.
SHIELD_BROWSER_PASS = env_bool("SHIELD_BROWSER_PASS", True)
SHIELD_PASS_TTL = env_int("SHIELD_PASS_TTL", 3600, minimum=60)  # seconds a pass lasts
SHIELD_PASS_USES = env_int("SHIELD_PASS_USES", 30, minimum=1)  # door POSTs one pass may make
# Access-log lines per second (per web process) for the answers the admission layer gives itself; past
# it, answers are still counted in /metrics and one line a second says how many went unlogged, so a
# flood costs neither a log line per bot request nor the disk it would fill.
SHIELD_ADMISSION_LOG_PER_SECOND = env_int("SHIELD_ADMISSION_LOG_PER_SECOND", 20, minimum=0)
# Seconds the API-key filter's ready marker lasts (it is rebuilt from the database before then).
SHIELD_KEY_FILTER_TTL = env_int("SHIELD_KEY_FILTER_TTL", 900, minimum=60)
# In elevated and under_attack, subnet sign-up limits are divided by this.
SHIELD_ELEVATED_SUBNET_DIVISOR = 4
# under_attack: sign-ups admitted per minute, site-wide, each with a hard proof of work.
SHIELD_SIGNUP_TRICKLE_PER_MINUTE = env_int("SHIELD_SIGNUP_TRICKLE_PER_MINUTE", 5, minimum=0)
# Seconds a client is told to wait when registration is busy.
SHIELD_SIGNUP_BUSY_RETRY_AFTER = 60

# Concurrency leases outlive the longest job (10 min in the queue + generation), then lapse.
SHIELD_LEASE_TTL = env_int("SHIELD_LEASE_TTL", 20 * _MIN, minimum=10)
# Redis unreachable: the paid API falls back to this per-process limit per key (requests/minute).
SHIELD_FALLBACK_REQUESTS_PER_MINUTE = env_int("SHIELD_FALLBACK_REQUESTS_PER_MINUTE", 30, minimum=1)

# Proof of work: leading zero bits of SHA-256 asked of a sign-up, per mode (0 = none).
# Normal mode asks for a light one too: without it every address of a botnet gets its sign-up
# allowance for free until the mode rises (a browser solves 12 bits in well under a second).
SHIELD_POW_BITS = {"normal": env_int("SHIELD_POW_BITS_NORMAL", 12, minimum=0),
                   "elevated": env_int("SHIELD_POW_BITS_ELEVATED", 16, minimum=1),
                   "under_attack": env_int("SHIELD_POW_BITS_UNDER_ATTACK", 20, minimum=1)}
SHIELD_POW_TTL = 600  # seconds a challenge stays valid

# Login: failures in a window -> cool-off, tier by tier: [(failures, cool-off seconds), ...].
SHIELD_LOGIN_PAIR_WINDOW = 24 * _HOUR  # per (account, address)
SHIELD_LOGIN_PAIR_TIERS = [(5, 60), (10, 10 * _MIN), (20, _HOUR)]
SHIELD_LOGIN_ADDRESS_WINDOW = _HOUR  # per address, any account
SHIELD_LOGIN_ADDRESS_TIERS = [(30, 5 * _MIN), (100, _HOUR)]
# Per account from everywhere: high, and never applied to a browser that has logged in before.
SHIELD_LOGIN_ACCOUNT_WINDOW = _HOUR
SHIELD_LOGIN_ACCOUNT_TIERS = [(env_int("SHIELD_LOGIN_ACCOUNT_CEILING", 200, minimum=10), 15 * _MIN)]
# The staff door counts the same failures (the same account and address) against tighter tiers.
SHIELD_ADMIN_LOGIN_PAIR_TIERS = [(3, 5 * _MIN), (6, _HOUR), (12, _DAY)]
SHIELD_ADMIN_LOGIN_ADDRESS_TIERS = [(10, 15 * _MIN), (30, _DAY)]
SHIELD_ADMIN_LOGIN_ACCOUNT_TIERS = [(50, _HOUR)]
SHIELD_KNOWN_DEVICE_MAX_AGE = 90 * 24 * _HOUR

# Automatic mitigation (levee.shield.escalation): sliding windows evaluated every INTERVAL seconds
# by one web process; a signal raises the mode when its window reaches the mode's floor and, from
# below that mode, BASELINE_FACTOR times its mean over the BASELINE seconds before. Sign-ups alone
# never go past elevated (a launch-day spike must not close registration).
SHIELD_AUTO_ENABLED = True
SHIELD_ESCALATION_IN_WEB = env_bool("SHIELD_ESCALATION_IN_WEB", True)
SHIELD_ESCALATION_INTERVAL = 1.0
SHIELD_ESCALATION_WINDOW = 10
SHIELD_ESCALATION_BASELINE = 600
SHIELD_ESCALATION_BASELINE_FACTOR = 5
SHIELD_ESCALATION_FLOORS = {
    "elevated": {"signup": env_int("SHIELD_AUTO_SIGNUPS_ELEVATED", 100, minimum=1),
                 "failed_login": env_int("SHIELD_AUTO_FAILED_LOGINS_ELEVATED", 50, minimum=1),
                 "refused": env_int("SHIELD_AUTO_REFUSALS_ELEVATED", 50, minimum=1),
                 "challenged": env_int("SHIELD_AUTO_CHALLENGES_ELEVATED", 50, minimum=1),
                 "lag_ms": env_int("SHIELD_AUTO_LAG_MS_ELEVATED", 1000, minimum=1)},
    "under_attack": {"failed_login": env_int("SHIELD_AUTO_FAILED_LOGINS_UNDER_ATTACK", 300, minimum=1),
                     "refused": env_int("SHIELD_AUTO_REFUSALS_UNDER_ATTACK", 100, minimum=1),
                     "lag_ms": env_int("SHIELD_AUTO_LAG_MS_UNDER_ATTACK", 3000, minimum=1)},
}
SHIELD_AUTO_COOLDOWN = env_int("SHIELD_AUTO_COOLDOWN", 15 * _MIN, minimum=0)

# Load shedding per model: queue depth (jobs) and oldest wait (ms) at which each priority is shed.
# Lower priorities shed first; a priority is restored once both fall below RESTORE_RATIO of its
# thresholds and stay there HOLD seconds, then readmitted gradually over RAMP seconds.
SHIELD_SHED_DEPTH = {"anon_page": 200, "free_chat": 200, "free_api": 500, "paid_api": 2000}
SHIELD_SHED_WAIT_MS = {"anon_page": 30_000, "free_chat": 30_000, "free_api": 90_000, "paid_api": 300_000}
SHIELD_SHED_RESTORE_RATIO = 0.7
SHIELD_SHED_HOLD = 10
SHIELD_SHED_RAMP = 30
SHIELD_SHED_RETRY_AFTER = 15
# Models whose queues anonymous page shedding watches.
SHIELD_MODELS = ["deepseek-chat", "deepseek-reasoner"]
