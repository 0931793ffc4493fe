package repo

import (
	"context"
	"fmt"
	"strings"
)

// Find returns the point ref names: its full name, or a prefix of exactly
// one point's name, with its chain checked (Chain, or Problem). It reads
// the labels of every point but checks only that chain, so that a lookup
// costs little in a repository of many points.
func (r *Repo) Find(ctx context.Context, ref string) (*Point, error) {
	points, err := r.scan(ctx, false)
	if err != nil {
		return nil, err
	}
	linkParents(points)
	p, err := match(r.Dir, points, ref)
	if err != nil {
		return nil, err
	}
	byName := map[string]*Point{}
	for _, q := range points {
		byName[q.Name] = q
	}
	ancestors := []*Point{p}
	for q := byName[p.Parent]; q != nil; q = byName[q.Parent] {
		ancestors = append([]*Point{q}, ancestors...)
	}
	var chain []string
	for _, q := range ancestors {
		chain = append(chain, q.Name)
	}
	if err := r.prefetchChain(ctx, chain); err != nil {
		return nil, err
	}
	r.checkChains(ctx, ancestors)
	return p, nil
}

// match finds ref among points by name or unique prefix.
func match(dir string, points []*Point, ref string) (*Point, error) {
	var found []*Point
	for _, p := range points {
		if p.Name == ref {
			return p, nil
		}
		if ref != "" && strings.HasPrefix(p.Name, ref) {
			found = append(found, p)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		if len(points) == 0 {
			return nil, fmt.Errorf("repository %s has no point named %q (it has no points)", dir, ref)
		}
		return nil, fmt.Errorf("repository %s has no point named %q (its points: %s)", dir, ref, names(points, 6))
	default:
		return nil, fmt.Errorf("point %q of repository %s is ambiguous: it begins %s", ref, dir, names(found, 6))
	}
}

// names lists up to max names, oldest first, with the count of the rest.
func names(points []*Point, max int) string {
	var s []string
	for i, p := range points {
		if i == max {
			s = append(s, fmt.Sprintf("and %d more", len(points)-max))
			break
		}
		s = append(s, p.Name)
	}
	return strings.Join(s, ", ")
}

// ChainDirs turns a point reference (a name or a unique prefix of one) into
// the directories of its chain, full backup first: what mount, flatten and
// verify read. A point whose chain is broken is an error saying why.
func (r *Repo) ChainDirs(ctx context.Context, ref string) ([]string, *Point, error) {
	p, err := r.Find(ctx, ref)
	if err != nil {
		return nil, nil, err
	}
	if p.Problem != "" {
		return nil, nil, fmt.Errorf("point %s of %s cannot be restored: %s", p.Name, r.Dir, p.Problem)
	}
	dirs := make([]string, len(p.Chain))
	for i, n := range p.Chain {
		dirs[i] = r.pointDir(n)
	}
	return dirs, p, nil
}
