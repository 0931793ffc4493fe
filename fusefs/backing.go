package fusefs

import (
	"sync"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// backingGuard wraps go-fuse's raw file system to keep its count of a
// node's passthrough opens right where opens of a node mix passthrough
// and direct I/O (cowNode.Open). go-fuse (v2.12.1) registers a backing
// file at a node's first passthrough open and counts every release of the
// node's files against it, those that never took it too. So the release
// of a direct open older than the passthrough one drops the count to zero:
// go-fuse closes the backing id while the kernel still uses it, registers
// a new one at the next open, and the kernel fails that open with EIO (it
// allows one backing file per inode). The guard keeps such a release from
// go-fuse (the kernel's reply goes at once) until the node's last
// passthrough open is released, when go-fuse no longer counts it.
type backingGuard struct {
	fuse.RawFileSystem
	mu    sync.Mutex
	nodes map[uint64]*guardNode
}

type guardNode struct {
	mu       sync.Mutex // held across go-fuse's open and release of the node's files
	refs     int        // calls using this entry (under backingGuard.mu)
	open     map[uint64]bool
	pt       int // open handles with passthrough
	deferred []fuse.ReleaseIn
}

// mountGuarded is gofs.Mount with the file system behind a backingGuard.
func mountGuarded(dir string, root gofs.InodeEmbedder, opts *gofs.Options) (*fuse.Server, error) {
	g := &backingGuard{RawFileSystem: gofs.NewNodeFS(root, opts), nodes: map[uint64]*guardNode{}}
	server, err := fuse.NewServer(g, dir, &opts.MountOptions)
	if err != nil {
		return nil, err
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		return nil, err
	}
	return server, nil
}

// node returns the entry of node id, locked, made if missing; done
// unlocks it.
func (g *backingGuard) node(id uint64) *guardNode {
	g.mu.Lock()
	n := g.nodes[id]
	if n == nil {
		n = &guardNode{open: map[uint64]bool{}}
		g.nodes[id] = n
	}
	n.refs++
	g.mu.Unlock()
	n.mu.Lock()
	return n
}

func (g *backingGuard) done(id uint64, n *guardNode) {
	empty := len(n.open) == 0 && len(n.deferred) == 0
	n.mu.Unlock()
	g.mu.Lock()
	if n.refs--; n.refs == 0 && empty && g.nodes[id] == n {
		delete(g.nodes, id)
	}
	g.mu.Unlock()
}

func (n *guardNode) opened(fh uint64, flags uint32) {
	pt := flags&fuse.FOPEN_PASSTHROUGH != 0
	n.open[fh] = pt
	if pt {
		n.pt++
	}
}

func (g *backingGuard) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	n := g.node(in.NodeId)
	defer g.done(in.NodeId, n)
	st := g.RawFileSystem.Open(cancel, in, out)
	if st == fuse.OK {
		n.opened(out.Fh, out.OpenFlags)
	}
	return st
}

func (g *backingGuard) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) fuse.Status {
	st := g.RawFileSystem.Create(cancel, in, name, out)
	if st == fuse.OK {
		// A new node: no other open of it can be released before this
		// returns.
		n := g.node(out.NodeId)
		n.opened(out.Fh, out.OpenFlags)
		g.done(out.NodeId, n)
	}
	return st
}

func (g *backingGuard) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	n := g.node(in.NodeId)
	defer g.done(in.NodeId, n)
	pt, known := n.open[in.Fh]
	delete(n.open, in.Fh)
	if known && !pt && n.pt > 0 {
		n.deferred = append(n.deferred, *in)
		return
	}
	g.RawFileSystem.Release(cancel, in)
	if known && pt {
		if n.pt--; n.pt == 0 {
			for i := range n.deferred {
				g.RawFileSystem.Release(nil, &n.deferred[i])
			}
			n.deferred = nil
		}
	}
}
