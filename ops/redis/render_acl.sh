#!/bin/sh
# Write Redis's ACL file from ops/redis/users.acl.in: render_acl.sh TEMPLATE OUT
# Passwords come from REDIS_PASSWORD (the operator's), REDIS_WEB_PASSWORD, REDIS_PLATFORM_PASSWORD,
# REDIS_WORKER_PASSWORD; the worker's model from LEVEE_MODEL_NAME (deepseek-chat). Passwords must
# be made of letters, digits, '-' and '_' (openssl rand -hex 32).
set -eu
for name in REDIS_PASSWORD REDIS_WEB_PASSWORD REDIS_PLATFORM_PASSWORD REDIS_WORKER_PASSWORD; do
  eval "value=\${$name:-}"
  case "$value" in
    ''|*[!A-Za-z0-9_-]*) echo "render_acl.sh: $name must be set to letters, digits, '-' or '_'" >&2; exit 1 ;;
  esac
done
grep -v '^#' "$1" | sed -e "s|@ADMIN_PASSWORD@|$REDIS_PASSWORD|g" -e "s|@WEB_PASSWORD@|$REDIS_WEB_PASSWORD|g" \
  -e "s|@PLATFORM_PASSWORD@|$REDIS_PLATFORM_PASSWORD|g" -e "s|@WORKER_PASSWORD@|$REDIS_WORKER_PASSWORD|g" \
  -e "s|@MODEL@|${LEVEE_MODEL_NAME:-deepseek-chat}|g" > "$2"
