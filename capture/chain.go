package capture

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/combinefs/combinefs/format"
	"github.com/combinefs/combinefs/resolver"
)

// This file is where capture leans on format and resolver: reading one
// backup's label and manifest, and checking a chain as pg_combinebackup
// would.

// readPoint fills in what p's backup_label and backup_manifest say, or
// sets p.Problem.
func readPoint(p *Point) {
	labelPath := filepath.Join(p.Dir, "backup_label")
	data, err := os.ReadFile(labelPath)
	if err != nil {
		p.Problem = fmt.Sprintf("not a complete backup: %v", pathErr(err))
		return
	}
	l, err := format.ParseBackupLabel(data, labelPath)
	if err != nil {
		p.Problem = err.Error()
		return
	}
	p.StartLSN, p.StartTLI = LSN(l.StartLSN), l.StartTLI
	if l.Incremental {
		p.PrevLSN, p.PrevTLI = LSN(l.PrevLSN), l.PrevTLI
	}
	if want := l.Incremental; want != (p.Kind == KindIncremental) {
		p.Problem = fmt.Sprintf("named %s, but its backup_label says otherwise", p.Kind)
		return
	}
	manPath := filepath.Join(p.Dir, "backup_manifest")
	data, err = os.ReadFile(manPath)
	if err != nil {
		p.Problem = fmt.Sprintf("not a complete backup: %v", pathErr(err))
		return
	}
	m, err := format.ParseManifest(data, manPath)
	if err != nil {
		p.Problem = err.Error()
		return
	}
	if m.HasSystemIdentifier {
		p.SystemID = m.SystemIdentifier
	}
	if n := len(m.WALRanges); n > 0 {
		p.EndLSN = LSN(m.WALRanges[n-1].End)
	}
}

// checkChain checks backup directories, full backup first, as
// pg_combinebackup does before it writes anything.
func checkChain(dirs []string) error {
	_, err := resolver.OpenChain(dirs, resolver.ChainOptions{RequireV2Manifests: true})
	return err
}

// chainErrorBackup is the directory a chain error blames, or "".
func chainErrorBackup(err error) string {
	var ce *resolver.ChainError
	if errors.As(err, &ce) {
		return ce.Backup
	}
	return ""
}

// pathErr shortens a *PathError to "backup_label: no such file or directory".
func pathErr(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return filepath.Base(pe.Path) + ": " + pe.Err.Error()
	}
	return err.Error()
}
