#!/bin/sh
# pip-install-missing PIN...: installs each pinned requirement unless the base image constrains that package
# (NGC images from 25.03 pin their own builds in /etc/pip/constraint.txt; re-pinning one stops pip with
# ResolutionImpossible), so the image's build wins and everything else is installed as pinned, under the constraints.
set -eu
constraints=${PIP_CONSTRAINT_FILE:-/etc/pip/constraint.txt}  # overridable for the tests
install=""
for pin in "$@"; do
  name=$(printf '%s' "${pin%%==*}" | sed 's/\[.*//')
  if [ -f "$constraints" ] && grep -qiE "^${name}[[:space:]]*([=<>~!;]|$)" "$constraints"; then
    echo "pip-install-missing: keeping the base image's ${name} ($(grep -iE "^${name}[[:space:]]*[=<>~!]" "$constraints" | head -n 1))" >&2
  else
    install="$install $pin"
  fi
done
if [ -f "$constraints" ]; then
  # shellcheck disable=SC2086 # one word per requirement
  exec pip install --no-cache-dir --constraint "$constraints" $install
fi
# shellcheck disable=SC2086
exec pip install --no-cache-dir $install
