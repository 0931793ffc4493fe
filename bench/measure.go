package main

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A variant is one side of a comparison: setup and teardown are not
// timed; timed returns the figure of one run (seconds, or a rate) and may
// record a peak RSS.
type variant struct {
	setup    func(t *benchTB, run int)
	timed    func(t *benchTB, run int) sample
	teardown func(t *benchTB, run int)
}

type sample struct {
	v     float64
	rssKB int64              // peak RSS of the measured combinefs / reference process, 0 if none
	parts map[string]float64 // optional breakdown (e.g. mount and server start)
}

// figSpec describes one figure.
type figSpec struct {
	id, name string
	unit     string // "s", "MB/s", "TPS", "MiB"
	higher   bool   // a higher value is better (rates); else lower (times, memory)
	cold     bool   // drop the page cache before each timed run
	// warmup runs each side once, untimed, before the timed runs: the first
	// timed capture of a figure was the slowest of its six in three runs
	// out of three (1.4x to 2x the median), and the first run is ours.
	warmup bool
	target string // quoted from the issues
	// targetMet decides from the ratio whether the target is met; nil: no target.
	targetMet func(f *Figure) bool
}

// Figure is one line of the table (and of results.json).
type Figure struct {
	ID        string             `json:"id"`
	Name      string             `json:"figure"`
	Unit      string             `json:"unit"`
	Better    string             `json:"better"`
	Ours      float64            `json:"ours"`
	Ref       *float64           `json:"reference"`
	Ratio     *float64           `json:"ratio"`
	AA        *float64           `json:"aa_ratio"`
	Runs      int                `json:"runs"`
	Cold      bool               `json:"cold"`
	OursRuns  []float64          `json:"ours_samples"`
	RefRuns   []float64          `json:"reference_samples,omitempty"`
	AARuns    [2][]float64       `json:"aa_samples"`
	Parts     map[string]float64 `json:"parts,omitempty"`
	Target    string             `json:"target,omitempty"`
	TargetMet *bool              `json:"target_met,omitempty"`
	Note      string             `json:"note,omitempty"`
	// Unsupported: neither tool can do this here (e.g. --clone on ext4).
	Unsupported bool    `json:"unsupported,omitempty"`
	Error       string  `json:"error,omitempty"`
	OursLabel   string  `json:"ours_label,omitempty"`
	RefLabel    string  `json:"reference_label,omitempty"`
	ElapsedSec  float64 `json:"elapsed_s"`
	// LoadAvg is the 1-minute load average when the figure started and
	// ended: other work on the machine shows up here.
	LoadAvg [2]float64 `json:"loadavg_1m"`
	// Pressure is the share of the figure's wall time during which some
	// task waited for a CPU, and for I/O (/proc/pressure): how much other
	// work competed with the runs.
	Pressure *pressure `json:"pressure,omitempty"`
}

type pressure struct {
	CPU float64 `json:"cpu_some"`
	IO  float64 `json:"io_some"`
}

func (f *Figure) errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if f.Error != "" {
		f.Error += "; "
	}
	f.Error += msg
}

// compare runs spec's figure: rounds of (ours, ref) and an A/A pair
// (ref, ref), in alternating order: even rounds ours, ref, A, B; odd rounds
// ref, ours, B, A. So ours and A take the same positions, as do ref and B,
// and the A/A ratio shows what the order alone does to the ratio. With
// ref == nil (nothing to compare with), the A/A pair is ours against
// itself and ours is the median of both. rss, if not nil, receives the RSS
// figure from the same runs.
func (b *bench) compare(t *benchTB, spec figSpec, ours, ref *variant, rss *figSpec) (fig *Figure, rssFig *Figure) {
	start := time.Now()
	fig = &Figure{ID: spec.id, Name: spec.name, Unit: spec.unit, Runs: b.runs, Cold: spec.cold && b.canDrop, Target: spec.target}
	fig.LoadAvg[0] = loadAvg()
	cpu0, io0 := psiTotal("cpu"), psiTotal("io")
	defer func() {
		fig.LoadAvg[1] = loadAvg()
		if el := time.Since(start).Microseconds(); el > 0 && cpu0 >= 0 && io0 >= 0 {
			fig.Pressure = &pressure{CPU: float64(psiTotal("cpu")-cpu0) / float64(el), IO: float64(psiTotal("io")-io0) / float64(el)}
		}
	}()
	fig.Better = "lower"
	if spec.higher {
		fig.Better = "higher"
	}
	aa := ref
	if ref == nil {
		aa = ours
	}
	var oursS, refS, aS, bS []sample
	do := func(name string, v *variant, run int, into *[]sample) error {
		return t.run(fmt.Sprintf("%s/%s#%d", spec.id, name, run), func(t *benchTB) {
			if v.setup != nil {
				v.setup(t, run)
			}
			if v.teardown != nil {
				defer v.teardown(t, run)
			}
			b.settle(t, spec.cold)
			s := v.timed(t, run)
			t.Logf("%s %s run %d: %.4g %s", spec.id, name, run, s.v, spec.unit)
			*into = append(*into, s)
		})
	}
	if spec.warmup {
		var discard []sample
		for _, v := range []*variant{ref, ours} {
			if v == nil {
				continue
			}
			if err := do("warm-up", v, 0, &discard); err != nil {
				fig.errorf("warm-up: %v", firstLine(err.Error()))
				fig.ElapsedSec = time.Since(start).Seconds()
				return fig, nil
			}
		}
	}
	for r := 0; r < b.runs; r++ {
		var steps []step
		if ref != nil {
			steps = alternate(r, step{"ours", ours, &oursS}, step{"ref", ref, &refS})
		}
		steps = append(steps, alternate(r, step{"aa-A", aa, &aS}, step{"aa-B", aa, &bS})...)
		for _, s := range steps {
			if err := do(s.name, s.v, r, s.into); err != nil {
				fig.errorf("%s run %d: %v", s.name, r, firstLine(err.Error()))
				fig.ElapsedSec = time.Since(start).Seconds()
				return fig, nil
			}
		}
	}
	if ref == nil {
		oursS = append(append([]sample(nil), aS...), bS...)
	}
	summarize(fig, spec, values(oursS), values(refS), [2][]float64{values(aS), values(bS)}, ref != nil)
	fig.Parts = medianParts(oursS, "ours")
	for k, v := range medianParts(refS, "ref") {
		fig.Parts[k] = v
	}
	if len(fig.Parts) == 0 {
		fig.Parts = nil
	}
	if spec.targetMet != nil {
		fig.TargetMet = ptr(spec.targetMet(fig))
	}
	fig.ElapsedSec = time.Since(start).Seconds()
	if rss != nil {
		rssFig = &Figure{ID: rss.id, Name: rss.name, Unit: "MiB", Better: "lower", Runs: b.runs, Target: rss.target}
		summarize(rssFig, figSpec{}, rssMiB(oursS), rssMiB(refS), [2][]float64{rssMiB(aS), rssMiB(bS)}, ref != nil)
	}
	return fig, rssFig
}

// step is one timed run of a figure: a variant and where its sample goes.
type step struct {
	name string
	v    *variant
	into *[]sample
}

// alternate orders a pair of steps for run r: a first in even runs, b
// first in odd ones, so neither side always has the machine's first turn.
func alternate(r int, a, b step) []step {
	if r%2 == 0 {
		return []step{a, b}
	}
	return []step{b, a}
}

// summarize sets a figure's runs, medians, ratio (when there is a
// reference) and A/A ratio from its samples.
func summarize(fig *Figure, spec figSpec, ours, ref []float64, aa [2][]float64, hasRef bool) {
	fig.OursRuns, fig.RefRuns, fig.AARuns = ours, ref, aa
	fig.Ours = median(ours)
	if hasRef {
		fig.Ref = ptr(median(ref))
		fig.Ratio = ptr(ratio(spec.higher, fig.Ours, *fig.Ref))
	}
	fig.AA = ptr(ratio(spec.higher, median(aa[0]), median(aa[1])))
}

// rssMiB is the peak RSS of each sample, in MiB.
func rssMiB(ss []sample) []float64 {
	var out []float64
	for _, s := range ss {
		out = append(out, float64(s.rssKB)/1024)
	}
	return out
}

// settle runs before every timed run: sync, and for cold figures drop the
// page cache, dentries and inodes.
func (b *bench) settle(t *benchTB, cold bool) {
	syscall.Sync()
	if cold && b.canDrop {
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
			t.Fatalf("drop_caches: %v", err)
		}
	}
}

// ratio is "how many times better ours is": ref/ours for lower-is-better
// figures, ours/ref for rates. Above 1, ours is better.
func ratio(higher bool, ours, ref float64) float64 {
	if higher {
		return ours / ref
	}
	return ref / ours
}

func values(ss []sample) []float64 {
	var out []float64
	for _, s := range ss {
		out = append(out, s.v)
	}
	return out
}

func medianParts(ss []sample, prefix string) map[string]float64 {
	acc := map[string][]float64{}
	for _, s := range ss {
		for k, v := range s.parts {
			acc[k] = append(acc[k], v)
		}
	}
	out := map[string]float64{}
	for k, vs := range acc {
		out[prefix+"."+k] = median(vs)
	}
	return out
}

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func ptr[T any](v T) *T { return &v }

// loadAvg is the 1-minute load average.
func loadAvg() float64 {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	var v float64
	fmt.Sscanf(string(data), "%f", &v)
	return v
}

// psiTotal is the "some" stall total (µs) of /proc/pressure/kind, -1 if
// the kernel has no PSI.
func psiTotal(kind string) int64 {
	data, err := os.ReadFile("/proc/pressure/" + kind)
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(data), "\n") {
		if !strings.HasPrefix(l, "some ") {
			continue
		}
		for _, f := range strings.Fields(l) {
			if v, ok := strings.CutPrefix(f, "total="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				return n
			}
		}
	}
	return -1
}
