package integration

import (
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// TestFlattenBadInput feeds flatten broken chains: each must fail with one
// line naming the culprit, exit non-zero and leave no output behind. Run as
// pg_combinebackup it must fail where pg_combinebackup fails, with the same
// message for the chain checks.
func TestFlattenBadInput(t *testing.T) {
	e := Provision(t)
	ch := BuildChain(t, e, ChainSpec{})
	full, inc1, inc2 := ch.Backups[0], ch.Backups[1], ch.Backups[2]

	// A full backup of another cluster.
	other := e.InitCluster(t, ClusterOptions{Dir: path.Join(ch.Dir, "other-data")})
	otherFull := path.Join(ch.Dir, "other-full")
	other.BaseBackup(t, otherFull, "")
	other.Stop(t, "fast")

	// Damaged copies of inc2.
	damaged := func(name string, damage func(dir string)) string {
		dir := path.Join(ch.Dir, name)
		e.Run(t, true, "cp", "-a", inc2, dir)
		damage(e.Host(dir))
		return dir
	}
	var victim string // an INCREMENTAL file with blocks, relative to the backup
	filepath.Walk(e.Host(inc2), func(p string, info os.FileInfo, err error) error {
		if err == nil && victim == "" && strings.HasPrefix(info.Name(), "INCREMENTAL.") && info.Size() > 3*8192 {
			victim, _ = filepath.Rel(e.Host(inc2), p)
		}
		return nil
	})
	if victim == "" {
		t.Fatal("inc2 has no INCREMENTAL file with blocks to damage")
	}
	truncated := damaged("inc2-truncated", func(dir string) {
		p := filepath.Join(dir, victim)
		st, _ := os.Stat(p)
		if err := os.Truncate(p, st.Size()-8192-100); err != nil {
			t.Fatal(err)
		}
	})
	badMagic := damaged("inc2-badmagic", func(dir string) {
		f, err := os.OpenFile(filepath.Join(dir, victim), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt([]byte{0xde, 0xad, 0xbe, 0xef}, 0)
		f.Close()
	})
	badManifest := damaged("inc2-badmanifest", func(dir string) {
		p := filepath.Join(dir, "backup_manifest")
		data, _ := os.ReadFile(p)
		i := strings.Index(string(data), `"Size": `) + len(`"Size": `)
		data[i] = '9'
		os.WriteFile(p, data, 0o600)
	})

	cases := []struct {
		name    string
		inputs  []string
		culprit string // must appear in the message
		// samePgMessage: pg_combinebackup must fail with exactly our
		// pg_combinebackup-mode message.
		samePgMessage bool
	}{
		{"reordered", []string{full, inc2, inc1}, inc2, true},
		{"missing-middle", []string{full, inc2}, full, true},
		{"incremental-first", []string{inc1, inc2}, inc1, true},
		{"full-in-middle", []string{full, full, inc1}, full, true},
		{"other-cluster", []string{otherFull, inc1, inc2}, otherFull, true},
		{"truncated-incremental", []string{full, inc1, truncated}, filepath.Join(truncated, victim), false},
		{"corrupt-incremental", []string{full, inc1, badMagic}, filepath.Join(badMagic, victim), true},
		{"corrupt-manifest", []string{full, inc1, badManifest}, path.Join(badManifest, "backup_manifest"), false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out := path.Join(ch.Dir, "out-"+c.name)
			msg, code := runCombinefs(t, e, append([]string{"flatten", "-o", out}, c.inputs...)...)
			msg = strings.TrimSpace(msg)
			if code == 0 {
				t.Fatalf("flatten succeeded on a bad chain:\n%s", msg)
			}
			if strings.Count(msg, "\n") != 0 {
				t.Errorf("want a one-line error, got:\n%s", msg)
			}
			if !strings.Contains(msg, c.culprit) {
				t.Errorf("error does not name the culprit %s:\n%s", c.culprit, msg)
			}
			mustNotExist(t, e.Host(out), "a failed flatten")
			t.Logf("combinefs: %s", msg)

			// Drop-in behaviour.
			refOut, refErr := e.CombineBackupErr(t, out+"-ref", c.inputs)
			if refErr == nil {
				t.Fatalf("pg_combinebackup accepted the bad chain, the case is wrong")
			}
			mustNotExist(t, e.Host(out+"-ref"), "a failed pg_combinebackup")
			linkOut, linkErr := e.Command(t.Context(), true, e.CombinefsAsPgCombinebackup(), append([]string{"-o", out + "-link"}, c.inputs...)...).CombinedOutput()
			if linkErr == nil {
				t.Fatalf("combinefs as pg_combinebackup accepted the bad chain")
			}
			mustNotExist(t, e.Host(out+"-link"), "a failed combinefs run as pg_combinebackup")
			refLine, linkLine := errorLine(refOut), errorLine(string(linkOut))
			t.Logf("pg_combinebackup: %s", refLine)
			if c.samePgMessage && refLine != linkLine {
				t.Errorf("as pg_combinebackup, combinefs says\n  %s\nwhere pg_combinebackup says\n  %s", linkLine, refLine)
			}
			if !strings.HasPrefix(linkLine, "pg_combinebackup: error: ") {
				t.Errorf("as pg_combinebackup the error line is %q", linkLine)
			}
		})
	}

	t.Run("output-not-empty", func(t *testing.T) {
		out := path.Join(ch.Dir, "out-not-empty")
		e.MkdirAll(t, out)
		os.WriteFile(filepath.Join(e.Host(out), "keep"), []byte("x"), 0o600)
		msg, code := runCombinefs(t, e, "flatten", "-o", out, full, inc1)
		if code == 0 || !strings.Contains(msg, "exists but is not empty") {
			t.Fatalf("flatten into a non-empty directory: exit %d %s", code, msg)
		}
		if _, err := os.Stat(filepath.Join(e.Host(out), "keep")); err != nil {
			t.Fatalf("flatten touched a non-empty output directory: %v", err)
		}
	})

	t.Run("output-empty-kept", func(t *testing.T) {
		// An existing empty output directory is used; on failure only its
		// contents go, as with pg_combinebackup.
		out := path.Join(ch.Dir, "out-empty")
		e.MkdirAll(t, out)
		_, code := runCombinefs(t, e, "flatten", "-o", out, full, inc1, truncated)
		if code == 0 {
			t.Fatal("flatten of a chain with a truncated file succeeded")
		}
		ents, err := os.ReadDir(e.Host(out))
		if err != nil || len(ents) != 0 {
			t.Fatalf("output directory after failure: %v entries, err %v; want it empty and kept", len(ents), err)
		}
	})
}

// errorLine is the first "error:" line of a tool's output.
func errorLine(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "error: ") {
			return strings.TrimSpace(l)
		}
	}
	return strings.TrimSpace(out)
}
