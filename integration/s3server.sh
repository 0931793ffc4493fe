#!/usr/bin/env bash
# Provision the real S3 server of combinefs's tests: SeaweedFS's weed
# command, built from the Go module proxy at the version that
# integration/s3server/go.mod pins (a module of its own, so that SeaweedFS's
# dependencies stay out of combinefs's go.mod). The first build takes about
# 5 minutes and gives a binary of about 230 MB; it is reused afterwards
# (until the pinned version changes).
#
# Prints the binary's path. internal/s3test starts it (`weed server -s3` on
# loopback ports in a temporary directory) for each test that needs it.
set -euo pipefail
cd "$(dirname "$0")/s3server"

dest=${COMBINEFS_WEED:-/var/lib/combinefs/weed/weed}
version=$(go list -m -f '{{.Version}}' github.com/seaweedfs/seaweedfs)
stamp=$dest.version

if [ ! -x "$dest" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$version" ]; then
	echo "s3server.sh: building SeaweedFS $version into $dest (about 5 minutes the first time)" >&2
	mkdir -p "$(dirname "$dest")"
	tmp=$dest.partial
	go build -o "$tmp" github.com/seaweedfs/seaweedfs/weed
	mv -f "$tmp" "$dest"
	echo "$version" >"$stamp"
fi
echo "$dest"
