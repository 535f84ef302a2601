#!/usr/bin/env bash
# Install everything the tests need (Debian peers, a virtualenv with the test extras),
# then run the static gates and the whole test suite. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Real peers we did not write: Postfix (smtp-source, smtp-sink) and swaks.
need=()
command -v swaks >/dev/null 2>&1 || need+=(swaks)
[ -x /usr/sbin/smtp-source ] || need+=(postfix)
[ -x /usr/sbin/nsd ] || need+=(nsd)          # the test DNS server (tests/dnszone.py)
command -v saslpasswd2 >/dev/null 2>&1 || need+=(sasl2-bin libsasl2-modules)  # smart host AUTH
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)   # a real PROXY protocol sender
perl -MMail::DKIM::Verifier -e1 >/dev/null 2>&1 || need+=(libmail-dkim-perl)  # checks our DKIM
python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing Debian packages: ${need[*]}"
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[test]'

echo "== ruff"
.venv/bin/ruff check src tests bench
echo "== mypy"
.venv/bin/mypy src/albatross
echo "== pytest"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
