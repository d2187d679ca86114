#!/usr/bin/env bash
# Assembles the root filesystem of deploy/Dockerfile's runtime stage without a Docker engine:
# the same Debian release (debootstrap, minbase variant), the packages the stage installs
# and the group and user it creates, all read from the Dockerfile. tests/deploy.rs puts
# the photoq binary in it and runs it there (chroot) as the Dockerfile's user.
#
#   deploy/rootfs.sh DIR     (as root; does nothing when DIR already matches the Dockerfile)
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${1:?usage: deploy/rootfs.sh DIR}
dockerfile=deploy/Dockerfile
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

release=$(sed -n 's/^ARG DEBIAN_RELEASE=//p' "$dockerfile")
# The runtime stage, continued lines joined.
stage=$(awk '/^FROM .* AS runtime$/ { on = 1 } on' "$dockerfile" | sed -e ':a' -e '/\\$/ { N; s/\\\n//; ta }')
packages=$(grep -o 'apt-get install -y --no-install-recommends [a-z0-9.+ -]*' <<<"$stage" \
  | sed 's/.*--no-install-recommends //; s/ *$//; s/  */,/g')
groupadd=$(grep -o 'groupadd [^&]*' <<<"$stage" | sed 's/ *$//')
useradd=$(grep -o 'useradd [^&]*' <<<"$stage" | sed 's/ *$//')
if [ -z "$release" ] || [ -z "$packages" ] || [ -z "$groupadd" ] || [ -z "$useradd" ]; then
  echo "deploy/rootfs.sh: cannot read the runtime stage of $dockerfile" >&2
  exit 1
fi

stamp="$dir/.photoq-rootfs"
want="$release $packages $groupadd $useradd"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
echo "==> assembling the image's root filesystem in $dir ($release; $packages)" >&2
rm -rf "$dir"
mkdir -p "$dir"
debootstrap --variant=minbase --include="$packages" "$release" "$dir" "$mirror" >/dev/null
# Word splitting intended: the Dockerfile's own arguments.
# shellcheck disable=SC2086
chroot "$dir" $groupadd
# shellcheck disable=SC2086
chroot "$dir" $useradd
printf '%s' "$want" >"$stamp"
