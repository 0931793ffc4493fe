package repo

import "context"

// CopyPoint copies the backup directory src into the repository of dst as
// its point name, as a capture to an object store leaves it: every file
// as an object, a directory marker for every empty directory, and with
// publish the point's marker object last (without it the copy is a
// leftover, as a capture cut short leaves). It is UploadPoint with its
// defaults.
func CopyPoint(ctx context.Context, dst Storage, src, name string, publish bool) error {
	return UploadPoint(ctx, dst, src, name, UploadOptions{Publish: publish})
}
