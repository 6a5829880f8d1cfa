#!/usr/bin/env bash
# Airlock sandbox base image recipe. Builds a minimal Debian root filesystem into "$1" using
# only Debian's package archive (no image registry). `airlock image build` runs this and
# imports the result as airlock/base:<hash of this file>; edit it and the tag changes.
#
# Contents: bash, git, curl, ca-certificates, python3, nodejs + npm, and an unprivileged
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
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y --no-install-recommends nodejs npm

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
