#!/bin/bash
# Run by the broker in the sandbox after a push (core/src/broker/git.rs): what the session's
# branch changed since it began, for the admin page. Prints `git diff --numstat`, a line
# `airlock:patch`, then the patch itself, cut at 256 KiB.
set -eu
cd /workspace/repo
start=$(git config airlock.start)
git diff --numstat "$start" HEAD | head -n 500
echo "airlock:patch"
git diff --no-color --no-ext-diff "$start" HEAD | head -c 262144
