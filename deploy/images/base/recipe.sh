#!/usr/bin/env bash
# Airlock sandbox base image recipe. Builds a minimal Debian root filesystem into "$1" using
# only Debian's package archive (no image registry). `airlock image build` runs this and
# imports the result as airlock/base:<hash of this file>; edit it and the tag changes.
#
# Contents: bash, git, curl, ca-certificates, python3 (with venv), nodejs + npm (fetch made proxy-aware
# with undici), and an unprivileged
# `agent` user (uid 1000) that agents run as.
set -euo pipefail

root="${1:?usage: recipe.sh ROOTFS_DIR}"
suite="${AIRLOCK_DEBIAN_SUITE:-bookworm}"
mirror="${AIRLOCK_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

debootstrap --variant=minbase \
  --include=bash,git,curl,ca-certificates,python3,procps,less,openssh-client,patch,xz-utils \
  "$suite" "$root" "$mirror"

# debootstrap's resolver cannot install npm's dependency tree; apt inside the chroot can.
cp /etc/resolv.conf "$root/etc/resolv.conf"
chroot "$root" apt-get update
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y --no-install-recommends nodejs npm python3-venv

# Node's built-in fetch ignores HTTP(S)_PROXY before Node 24. undici (the library behind it)
# ships an agent that reads them; a preload installs it as fetch's global dispatcher, so
# `fetch` goes through the gateway like every other client. sandboxd sets NODE_OPTIONS to
# load it only when the file exists; the preload never fails a program if undici is absent.
# Fetched on the host (whose trust store the network may need) and checked against a pinned
# hash; undici has no dependencies, so unpacking the package is the whole install.
undici_url="${AIRLOCK_NPM_REGISTRY:-https://registry.npmjs.org}/undici/-/undici-6.29.1.tgz"
undici_sha512=12f46552dfd0a8012f5dd41e44c6147f0390b1fce90f3b7292b1b6a3018413fac1381a18bfdb85dfd673b0d0e1e254c51e14ebd973998ca91882e783d7666618
curl -fsSL --retry 3 -o "$root/tmp/undici.tgz" "$undici_url"
echo "$undici_sha512  $root/tmp/undici.tgz" | sha512sum -c - >/dev/null
mkdir -p "$root/usr/local/lib/node_modules/undici"
tar -xzf "$root/tmp/undici.tgz" -C "$root/usr/local/lib/node_modules/undici" --strip-components=1 --no-same-owner
rm "$root/tmp/undici.tgz"
mkdir -p "$root/usr/local/lib/airlock"
cat >"$root/usr/local/lib/airlock/node-proxy.cjs" <<'JS'
try {
  const undici = require('/usr/local/lib/node_modules/undici');
  undici.setGlobalDispatcher(new undici.EnvHttpProxyAgent());
} catch (e) {
  // No undici: fetch keeps Node's default (direct) dispatcher.
}
JS

chroot "$root" useradd --create-home --uid 1000 --user-group --shell /bin/bash agent
mkdir -p "$root/workspace"
chroot "$root" chown agent:agent /workspace
# Sandboxes run with no capabilities as the agent user, so sandboxd (also the agent user) can
# add the deployment CA to the system trust store at start only if the agent owns the bundle.
# This grants nothing: the sandbox trusts what it likes; the gateway decides what leaves.
mkdir -p "$root/usr/local/share/ca-certificates/airlock"
chroot "$root" chown agent:agent /etc/ssl/certs/ca-certificates.crt /usr/local/share/ca-certificates/airlock

chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/tmp/* "$root"/root/.npm
# The sandbox's resolver is set at run time; nothing from the build host stays.
: > "$root/etc/resolv.conf"
