#!/bin/sh
# The image's base from Debian's own packages, for hosts that reach Debian's archive but no image registry:
# bookworm with its Python 3.11 (uv then finds a Python and downloads none). Where a registry is reachable, any
# image with these packages does as well: set BASE_IMAGE (README, Deployment).
#   deploy/container/base-image.sh [TAG]        (ENGINE=docker to import into Docker instead of podman)
set -eu
tag=${1:-clipdlut-base:bookworm}
engine=${ENGINE:-podman}
packages=python3,python3-venv,python3-pip,ca-certificates,passwd  # (passwd: useradd, for the image's own user)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mmdebstrap --quiet --variant=apt --include="$packages" bookworm "$work/rootfs.tar"
"$engine" import --change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --change "CMD [\"/bin/bash\"]" "$work/rootfs.tar" "$tag" >/dev/null
echo "$tag"
