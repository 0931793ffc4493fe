//go:build tools

// Package s3server pins the SeaweedFS version whose weed command the
// integration tests run as a real S3 server. It is a separate module so
// that SeaweedFS's many dependencies stay out of combinefs's own go.mod.
package s3server

import _ "github.com/seaweedfs/seaweedfs/weed"
