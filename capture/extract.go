package capture

import (
	"bytes"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
)

// manifestTmpName is the name the manifest has until the backup is complete
// (pg_basebackup uses the same).
const manifestTmpName = "backup_manifest.tmp"

// layout says where the archives of one backup go.
type layout struct {
	// root is the (temporary) directory of the main data directory.
	root string
	// inPlace keeps tablespaces inside root as pg_tblspc/OID directories.
	inPlace bool
	// mapping relocates tablespaces (-T), old location → new.
	mapping map[string]string
	// byLocation finds a tablespace's OID from its location.
	byLocation map[string]uint32
}

// archiveDir is the directory an archive for the tablespace at location
// ("" for the main data directory) is extracted into.
func (l *layout) archiveDir(location string) (string, error) {
	if location == "" {
		return l.root, nil
	}
	if !filepath.IsAbs(location) {
		// An in-place tablespace on the server: pg_tblspc/OID, relative to
		// the data directory, which is where it goes here too.
		rel, err := cleanRel(location)
		if err != nil {
			return "", protocolErrorf("tablespace location %q: %v", location, err)
		}
		return filepath.Join(l.root, rel), nil
	}
	if l.inPlace {
		oid, ok := l.byLocation[location]
		if !ok {
			return "", protocolErrorf("archive for tablespace %q, which the server did not announce", location)
		}
		return filepath.Join(l.root, "pg_tblspc", strconv.FormatUint(uint64(oid), 10)), nil
	}
	return l.mapped(location), nil
}

// mapped applies -T to a tablespace location.
func (l *layout) mapped(location string) string {
	clean := filepath.Clean(location)
	for old, nu := range l.mapping {
		if filepath.Clean(old) == clean {
			return filepath.Clean(nu)
		}
	}
	return location
}

// cleanRel cleans a relative slash-separated path from an archive and
// refuses one that is absolute or climbs out of its directory.
func cleanRel(name string) (string, error) {
	if name == "" || strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("absolute or empty path %q", name)
	}
	c := path.Clean(name)
	if c == ".." || strings.HasPrefix(c, "../") {
		return "", fmt.Errorf("path %q leaves its directory", name)
	}
	return c, nil
}

// extractor is the streamSink that unpacks archives into directories as they
// arrive (untar.go) and writes the manifest.
type extractor struct {
	layout *layout
	out    output
	// memManifest keeps the manifest in memory instead of a file, for an
	// output that checks it before it writes it (storeOut).
	memManifest *bytes.Buffer
	// onData is called with the archive bytes received so far.
	onData func(done int64, archive string)
	// onProgress is called with the server's own count.
	onProgress func(done int64)

	received int64
	archive  string
	u        *untar // the archive being unpacked

	manifest     outFile
	manifestSize int64
}

func (x *extractor) beginArchive(name, location string) error {
	dir, err := x.layout.archiveDir(location)
	if err != nil {
		return err
	}
	if err := x.out.mkdirAll(dir); err != nil {
		return err
	}
	x.archive = name
	x.u = newUntar(x, dir, location == "")
	x.onData(x.received, x.archive)
	return nil
}

func (x *extractor) archiveData(p []byte) error {
	x.received += int64(len(p))
	if err := x.u.push(p); err != nil {
		return fmt.Errorf("archive %s: %w", x.archive, err)
	}
	x.onData(x.received, x.archive)
	return nil
}

func (x *extractor) endArchive() error {
	if x.u == nil {
		return nil
	}
	err := x.u.finish()
	if err != nil {
		x.u.abort()
		err = fmt.Errorf("archive %s: %w", x.archive, err)
	}
	x.u = nil
	return err
}

func (x *extractor) beginManifest() error {
	if x.memManifest != nil {
		return nil
	}
	f, err := x.out.create(filepath.Join(x.layout.root, manifestTmpName), 0o600, 0)
	if err != nil {
		return err
	}
	x.manifest = f
	return nil
}

func (x *extractor) manifestData(p []byte) error {
	if x.memManifest != nil {
		x.memManifest.Write(p)
		x.manifestSize += int64(len(p))
		return nil
	}
	n, err := x.manifest.WriteAt(p, x.manifestSize)
	x.manifestSize += int64(n)
	return err
}

func (x *extractor) endManifest() error {
	if x.memManifest != nil {
		if x.manifestSize == 0 {
			return protocolErrorf("empty backup manifest")
		}
		return nil
	}
	if x.manifest == nil {
		return nil
	}
	f := x.manifest
	x.manifest = nil
	if x.manifestSize == 0 {
		f.abort()
		return protocolErrorf("empty backup manifest")
	}
	return f.close()
}

func (x *extractor) progress(done int64) {
	if x.onProgress != nil {
		x.onProgress(done)
	}
}

// abort closes open files after a failure; the caller then removes the
// directories.
func (x *extractor) abort() {
	if x.u != nil {
		x.u.abort()
		x.u = nil
	}
	if x.manifest != nil {
		x.manifest.abort()
		x.manifest = nil
	}
}

// symlink handles a symlink entry: only pg_tblspc/OID in the main archive
// may be one, pointing at the tablespace's location, which -T may map. In
// in-place mode the tablespace is a directory instead.
func (x *extractor) symlink(main bool, name, linkname, target string) error {
	dirName, oid := path.Split(name)
	if !main || dirName != "pg_tblspc/" || !isDigits(oid) {
		return protocolErrorf("unexpected symlink %q -> %q in the archive", name, linkname)
	}
	dest, err := x.layout.archiveDir(linkname)
	if err != nil {
		return err
	}
	if x.layout.inPlace || !filepath.IsAbs(linkname) {
		// The tablespace archive came first and is in place already; make
		// the directory in case it was empty (dropped during the backup).
		return x.out.mkdirAll(target)
	}
	if err := x.out.mkdirAll(filepath.Dir(target)); err != nil {
		return err
	}
	return os.Symlink(dest, target)
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
