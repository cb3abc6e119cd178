#!/usr/bin/env bash
# Checks the Debian packages the integration tests need. As root it
# installs the missing ones; otherwise it fails naming them, so `make test`
# never silently skips a real-server test.
set -euo pipefail

# One dependency a line: "<package(s) to install>|<shell test that passes when present>".
# Add servers here as the suite grows, e.g.:
#   openssh-server|test -x /usr/sbin/sshd
#   chromium|command -v chromium
DEPS='
postgresql|compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
postgresql-client|command -v psql >/dev/null
mariadb-server|command -v mariadbd >/dev/null || test -x /usr/sbin/mariadbd
mariadb-client|command -v mariadb >/dev/null
openssh-server|test -x /usr/sbin/sshd
openssh-client|command -v ssh >/dev/null && command -v scp >/dev/null && command -v sftp >/dev/null
chromium|command -v chromium >/dev/null
rsync|command -v rsync >/dev/null
'

missing=()
while IFS='|' read -r pkg check; do
	[ -z "$pkg" ] && continue
	if ! bash -c "$check" >/dev/null 2>&1; then
		missing+=("$pkg")
	fi
done <<<"$DEPS"

if [ ${#missing[@]} -eq 0 ]; then
	exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
	echo "test-deps: missing Debian packages: ${missing[*]}" >&2
	echo "test-deps: install them with: sudo apt-get install -y ${missing[*]}" >&2
	exit 1
fi

echo "test-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Try the cached package lists first: an update is slow and often needless.
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Fail now, naming the package, rather than later in a confusing test.
still=()
while IFS='|' read -r pkg check; do
	[ -z "$pkg" ] && continue
	if ! bash -c "$check" >/dev/null 2>&1; then
		still+=("$pkg")
	fi
done <<<"$DEPS"
if [ ${#still[@]} -ne 0 ]; then
	echo "test-deps: still missing after apt-get install: ${still[*]}" >&2
	exit 1
fi
