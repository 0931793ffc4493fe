package repo

import (
	"context"
	"io/fs"
	"os"
	"path"
	"path/filepath"
)

// CopyPoint copies the point name of the local repository dir into the
// repository of dst as a capture to an object store leaves it: every file
// as an object, a directory marker for every empty directory, and with
// publish the point's marker object last (without it the copy is a
// leftover, as a capture cut short leaves). Each file is read whole into
// memory for its Put.
func CopyPoint(ctx context.Context, dst Storage, dir, name string, publish bool) error {
	root := filepath.Join(dir, name)
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		obj := filepath.ToSlash(rel)
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
		return dst.Put(ctx, path.Clean(obj), data)
	})
	if err != nil || !publish {
		return err
	}
	return dst.Put(ctx, MarkerName(name), []byte(name+"\n"))
}
