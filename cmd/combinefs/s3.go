package main

import (
	"github.com/spf13/pflag"

	"github.com/combinefs/combinefs/repo"
)

// s3Flags binds the flags of an s3:// --repo beyond the standard AWS
// environment and configuration (credentials, region, AWS_ENDPOINT_URL).
func s3Flags(f *pflag.FlagSet) *repo.S3Options {
	o := &repo.S3Options{}
	f.StringVar(&o.Endpoint, "s3-endpoint", "", "for an s3:// repository: the `URL` of an S3-compatible store, addressed path-style (default: AWS_ENDPOINT_URL, else AWS)")
	return o
}
