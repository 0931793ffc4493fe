package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// largeFolioShare says which share of the first n bytes of a file's page
// cache is held in large folios (compound pages). Warm reads copy out of
// the page cache, and a kernel without large folios for FUSE copies the
// mount's files page by page while ext4 copies the reference's in folios of
// up to 2 MiB: this is the figure that tells the two apart. It maps the
// file, touches each page, and looks its frame up in /proc/self/pagemap and
// /proc/kpageflags, so it needs root (CAP_SYS_ADMIN for the frame numbers).
func largeFolioShare(path string, n int64) (float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	n = min(n, fi.Size()) / pageSize * pageSize
	if n == 0 {
		return 0, fmt.Errorf("%s: empty", path)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(n), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, err
	}
	defer unix.Munmap(mem)
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return 0, err
	}
	defer pm.Close()
	kf, err := os.Open("/proc/kpageflags")
	if err != nil {
		return 0, err
	}
	defer kf.Close()
	const (
		present      = 1 << 63
		pfnMask      = 1<<55 - 1
		compoundHead = 1 << 15 // KPF_COMPOUND_HEAD
		compoundTail = 1 << 16 // KPF_COMPOUND_TAIL
	)
	base := int64(uintptr(unsafe.Pointer(&mem[0]))) / pageSize
	var seen, large int
	var e [8]byte
	var touched byte
	for i := int64(0); i < n/pageSize; i++ {
		touched += mem[i*pageSize] // fault the page in (it is cached already)
		if _, err := pm.ReadAt(e[:], (base+i)*8); err != nil {
			return 0, err
		}
		ent := binary.LittleEndian.Uint64(e[:])
		if ent&present == 0 {
			continue
		}
		pfn := ent & pfnMask
		if pfn == 0 {
			return 0, fmt.Errorf("no page frame numbers in /proc/self/pagemap (needs CAP_SYS_ADMIN)")
		}
		if _, err := kf.ReadAt(e[:], int64(pfn)*8); err != nil {
			return 0, err
		}
		seen++
		if flags := binary.LittleEndian.Uint64(e[:]); flags&(compoundHead|compoundTail) != 0 {
			large++
		}
	}
	runtime.KeepAlive(touched)
	if seen == 0 {
		return 0, fmt.Errorf("%s: no page of it is mapped", path)
	}
	return float64(large) / float64(seen), nil
}

var pageSize = int64(os.Getpagesize())
