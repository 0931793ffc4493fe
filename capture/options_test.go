package capture

import (
	"os"
	"testing"
)

func TestBaseBackupCommand(t *testing.T) {
	tests := []struct {
		name string
		o    Options
		want string
	}{
		{"defaults", Options{},
			"BASE_BACKUP (LABEL 'combinefs base backup', PROGRESS, CHECKPOINT 'spread', WAIT 0, MANIFEST 'yes', TARGET 'client')"},
		{"incremental, fast, fetch, throttled", Options{PriorManifest: []byte("{}"), FastCheckpoint: true, WAL: WALFetch, MaxRate: 1024, Label: "it's"},
			"BASE_BACKUP (INCREMENTAL, LABEL 'it''s', PROGRESS, CHECKPOINT 'fast', WAL, WAIT 0, MAX_RATE 1024, MANIFEST 'yes', TARGET 'client')"},
		{"checksums", Options{ManifestChecksums: "SHA256"},
			"BASE_BACKUP (LABEL 'combinefs base backup', PROGRESS, CHECKPOINT 'spread', WAIT 0, MANIFEST 'yes', MANIFEST_CHECKSUMS 'SHA256', TARGET 'client')"},
	}
	for _, tc := range tests {
		if got := baseBackupCommand(&tc.o); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}

func TestValidate(t *testing.T) {
	cfg, _ := ConnConfig("host=x", "", "", "")
	ok := Options{Conn: cfg, Dir: "d"}
	if err := ok.validate(); err != nil {
		t.Error(err)
	}
	for name, o := range map[string]Options{
		"no conn":        {Dir: "d"},
		"no dir":         {Conn: cfg},
		"rate too low":   {Conn: cfg, Dir: "d", MaxRate: 31},
		"rate too high":  {Conn: cfg, Dir: "d", MaxRate: 1048577},
		"bad checksums":  {Conn: cfg, Dir: "d", ManifestChecksums: "MD5"},
		"bad wal method": {Conn: cfg, Dir: "d", WAL: 7},
		"relative map":   {Conn: cfg, Dir: "d", TablespaceMap: map[string]string{"/a": "b"}},
	} {
		if err := o.validate(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestLSN(t *testing.T) {
	for s, want := range map[string]LSN{"0/3000028": 0x3000028, "16/B374D848": 0x16B374D848, "0/0300A028": 0x300A028, "FFFFFFFF/FFFFFFFF": ^LSN(0)} {
		got, err := ParseLSN(s)
		if err != nil || got != want {
			t.Errorf("ParseLSN(%q) = %s, %v", s, got, err)
		}
	}
	if s := LSN(0x16B374D848).String(); s != "16/B374D848" {
		t.Errorf("String = %s", s)
	}
	for _, bad := range []string{"", "/", "0/", "/1", "1", "g/1", "0/1/2", "123456789/0", "-1/0"} {
		if _, err := ParseLSN(bad); err == nil {
			t.Errorf("ParseLSN(%q) accepted", bad)
		}
	}
}

func TestParseSize(t *testing.T) {
	for s, want := range map[string]int64{"16MB": 16 << 20, "1GB": 1 << 30, "512kB": 512 << 10, "8192": 8192, "64B": 64} {
		if got, err := parseSize(s); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v", s, got, err)
		}
	}
}

func TestConnConfig(t *testing.T) {
	os.Unsetenv("PGSERVICE")
	t.Setenv("PGHOST", "envhost")
	t.Setenv("PGPORT", "5999")
	t.Setenv("PGUSER", "envuser")
	t.Setenv("PGPASSWORD", "secret")
	tests := []struct {
		conn, host, port, user string
		wantHost, wantUser     string
		wantPort               uint16
	}{
		{"", "", "", "", "envhost", "envuser", 5999},
		{"host=h1 port=5433 user=u1", "", "", "", "h1", "u1", 5433},
		{"host=h1 port=5433 user=u1", "h2", "5434", "u2", "h2", "u2", 5434},
		{"postgres://u1@h1:5433/db?sslmode=disable", "", "", "", "h1", "u1", 5433},
		{"postgresql://u1@h1:5433/db", "h2", "", "u2", "h2", "u2", 5433},
		{`host='with space' user='o\'brien'`, "", "", "", "with space", "o'brien", 5999},
	}
	for _, tc := range tests {
		cfg, err := ConnConfig(tc.conn, tc.host, tc.port, tc.user)
		if err != nil {
			t.Errorf("ConnConfig(%q): %v", tc.conn, err)
			continue
		}
		if cfg.Host != tc.wantHost || cfg.User != tc.wantUser || cfg.Port != tc.wantPort {
			t.Errorf("ConnConfig(%q, %q, %q, %q) = %s@%s:%d", tc.conn, tc.host, tc.port, tc.user, cfg.User, cfg.Host, cfg.Port)
		}
		if cfg.RuntimeParams["replication"] != "true" || cfg.RuntimeParams["application_name"] != "combinefs" {
			t.Errorf("ConnConfig(%q) runtime params %v", tc.conn, cfg.RuntimeParams)
		}
		if cfg.Password != "secret" {
			t.Errorf("ConnConfig(%q) did not take PGPASSWORD", tc.conn)
		}
	}
	if _, err := ConnConfig("host=x port=notaport", "", "", ""); err == nil {
		t.Error("bad port accepted")
	}
	if cfg, _ := ConnConfig("application_name=mine", "", "", ""); cfg.RuntimeParams["application_name"] != "mine" {
		t.Error("application_name overridden")
	}
}

func TestManifestSystemID(t *testing.T) {
	if id, ok := manifestSystemID([]byte(testManifest)); !ok || id != 7000000000000000001 {
		t.Errorf("manifestSystemID = %d, %v", id, ok)
	}
	if _, ok := manifestSystemID([]byte(`{ "PostgreSQL-Backup-Manifest-Version": 1, "Files": []}`)); ok {
		t.Error("found a system identifier in a version 1 manifest")
	}
}
