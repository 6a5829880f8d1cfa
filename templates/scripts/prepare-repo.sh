#!/bin/bash
# Run by the broker in the sandbox before a turn (core/src/broker/git.rs).
# Clones (unless the files are there from an earlier turn), checks out the branch, and
# installs the commit hook that adds the trailers. Prints `airlock:branch … from …`.
# Input: AIRLOCK_CLONE_URL (through the gateway), AIRLOCK_BRANCH, AIRLOCK_BASE (empty: the
# remote's default), AIRLOCK_EXISTING (1: the branch exists), AIRLOCK_GIT_NAME,
# AIRLOCK_GIT_EMAIL, AIRLOCK_TRAILERS (one per line).
set -eu
if [ ! -d /workspace/repo/.git ]; then
  git clone --quiet --no-tags "$AIRLOCK_CLONE_URL" /workspace/repo
  cd /workspace/repo
  base="$AIRLOCK_BASE"
  if [ -z "$base" ]; then
    base=$(git symbolic-ref --short refs/remotes/origin/HEAD 2>/dev/null | sed 's#^origin/##')
    base=${base:-main}
  fi
  # The branch may exist already: a pull request's, or an earlier turn's whose files are gone.
  if [ "$AIRLOCK_EXISTING" = 1 ] || git rev-parse -q --verify "refs/remotes/origin/$AIRLOCK_BRANCH" >/dev/null; then
    git checkout --quiet -B "$AIRLOCK_BRANCH" "origin/$AIRLOCK_BRANCH"
  else
    git checkout --quiet -b "$AIRLOCK_BRANCH" "origin/$base"
  fi
  git config airlock.base "$base"
  git config airlock.start "$(git rev-parse HEAD)"
fi
cd /workspace/repo
# Byproducts of running tests, and the agents' own files (Aider's history and caches), are
# never part of the change (the repository's own .gitignore still applies on top).
printf '%s\n' '__pycache__/' '*.pyc' '.pytest_cache/' 'node_modules/' '.DS_Store' '.aider*' >> .git/info/exclude
sort -u -o .git/info/exclude .git/info/exclude
git config user.name "$AIRLOCK_GIT_NAME"
git config user.email "$AIRLOCK_GIT_EMAIL"
printf '%s\n' "$AIRLOCK_TRAILERS" > .git/airlock-trailers
cat > .git/hooks/commit-msg <<'HOOK'
#!/bin/sh
# Airlock: every commit of this session names the requester and the session.
while IFS= read -r t; do
  [ -n "$t" ] && git interpret-trailers --in-place --if-exists addIfDifferent --trailer "$t" "$1"
done < "$(git rev-parse --git-dir)/airlock-trailers"
HOOK
chmod +x .git/hooks/commit-msg
echo "airlock:branch $(git rev-parse --abbrev-ref HEAD) from $(git config airlock.base)"
