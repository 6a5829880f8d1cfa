#!/bin/bash
# Run by the broker in the sandbox after a successful turn (core/src/broker/git.rs).
# Commits what is uncommitted (the message on stdin), then pushes the branch if it has
# commits the remote does not. Prints `airlock:pushed <commit> <base>` or `airlock:unchanged`.
# Input: AIRLOCK_BRANCH, AIRLOCK_GIT_NAME, AIRLOCK_GIT_EMAIL.
set -eu
cd /workspace/repo
msg=$(cat)
git add -A
if ! git diff --cached --quiet; then
  git commit --quiet -m "$msg"
fi
if git rev-parse -q --verify "refs/remotes/origin/$AIRLOCK_BRANCH" >/dev/null; then
  since="refs/remotes/origin/$AIRLOCK_BRANCH"
else
  since=$(git config airlock.start)
fi
if [ "$(git rev-list --count "$since..HEAD")" = 0 ]; then
  echo "airlock:unchanged"
  exit 0
fi
git push --quiet origin "HEAD:refs/heads/$AIRLOCK_BRANCH"
echo "airlock:pushed $(git rev-parse HEAD) $(git config airlock.base)"
