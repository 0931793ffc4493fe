package repo

import (
	"context"
	"io/fs"
	"os"
	"path"
	"path/filepath"
)

// CopyPoint copies the backup directory src into the repository of dst as
// its point name, as a capture to an object store leaves it: every file
// as an object, a directory marker for every empty directory, and with
// publish the point's marker object last (without it the copy is a
// leftover, as a capture cut short leaves). Each file is read whole into
// memory for its Put.
func CopyPoint(ctx context.Context, dst Storage, src, name string, publish bool) error {
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		obj := path.Join(name, filepath.ToSlash(rel))
		switch {
		case d.IsDir():
			ents, err := os.ReadDir(p)
			if err != nil || len(ents) > 0 {
				return err
			}
			return dst.Put(ctx, DirMarker(obj), nil)
		case !d.Type().IsRegular():
			return nil // an object store holds no symbolic links
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return dst.Put(ctx, obj, data)
	})
	if err != nil || !publish {
		return err
	}
	return dst.Put(ctx, MarkerName(name), []byte(name+"\n"))
}
