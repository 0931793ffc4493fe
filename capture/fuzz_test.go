package capture

import (
	"context"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// sliceSource replays messages, then reports a lost connection.
type sliceSource struct{ msgs []pgproto3.BackendMessage }

func (s *sliceSource) ReceiveMessage(context.Context) (pgproto3.BackendMessage, error) {
	if len(s.msgs) == 0 {
		return nil, io.ErrUnexpectedEOF
	}
	m := s.msgs[0]
	s.msgs = s.msgs[1:]
	return m, nil
}

// fuzzMessages cuts data into CopyData payloads, each prefixed by a 2-byte
// length, and ends the stream with CopyDone.
func fuzzMessages(data []byte) []pgproto3.BackendMessage {
	var msgs []pgproto3.BackendMessage
	for len(data) >= 2 {
		n := int(binary.BigEndian.Uint16(data))
		data = data[2:]
		n = min(n, len(data))
		msgs = append(msgs, &pgproto3.CopyData{Data: data[:n]})
		data = data[n:]
	}
	return append(msgs, &pgproto3.CopyDone{})
}

func encodeFuzz(payloads ...[]byte) []byte {
	var b []byte
	for _, p := range payloads {
		b = binary.BigEndian.AppendUint16(b, uint16(len(p)))
		b = append(b, p...)
	}
	return b
}

// FuzzCopyStream feeds arbitrary copy streams, tar archives included, to the
// stream reader and the extractor: they must fail cleanly, never panic,
// hang, or write outside the backup directory.
func FuzzCopyStream(f *testing.F) {
	base := baseTar(f)
	f.Add(encodeFuzz([]byte("nbase.tar\x00\x00"), append([]byte{'d'}, base...), []byte("m"), []byte("d{}")))
	f.Add(encodeFuzz([]byte("nbase.tar\x00\x00"), append([]byte{'d'}, base[:700]...), []byte("m")))
	f.Add(encodeFuzz([]byte("n1.tar\x00/x\x00"), []byte("d"), []byte("p\x00\x00\x00\x00\x00\x00\x00\x01"), []byte("m")))
	f.Add(encodeFuzz(append([]byte("nbase.tar\x00\x00d"), buildTar(f, tarEntry{name: "pg_tblspc/1", link: "/x"}, tarEntry{name: "../y", body: "z"})...)))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<20 {
			return
		}
		top := t.TempDir()
		root := filepath.Join(top, "backup")
		if err := os.Mkdir(root, 0o700); err != nil {
			t.Fatal(err)
		}
		s := newSyncer(true)
		x := &extractor{layout: &layout{root: root, inPlace: true, byLocation: map[string]uint32{"/x": 1}}, out: &localOut{sync: s},
			onData: func(int64, string) {}}
		msgs := fuzzMessages(data)
		r := &streamReader{ctx: context.Background(), src: &sliceSource{msgs: msgs}}
		err := r.readCopy(x, 2)
		if err != nil {
			x.abort()
		} else {
			x.endArchive()
		}
		s.wait()
		// Nothing may be written next to the backup directory.
		entries, _ := os.ReadDir(top)
		if len(entries) != 1 {
			t.Fatalf("%d entries beside the backup directory", len(entries))
		}
	})
}
