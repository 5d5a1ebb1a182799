#!/usr/bin/env bash
# Installs Debian's chromium for the dashboard's browser tests when it is missing.
# Playwright drives it through executable_path; `playwright install` is never used.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "chromium is missing and this user cannot apt-get install it: run 'sudo apt-get install -y chromium'" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq || true
apt-get install -y -qq --no-install-recommends chromium >/dev/null
test -x /usr/bin/chromium
