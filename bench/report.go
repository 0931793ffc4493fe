package main

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

func fmtVal(v float64, unit string) string {
	if math.IsNaN(v) {
		return "-"
	}
	switch unit {
	case "s":
		if v < 1 {
			return fmt.Sprintf("%.0f ms", v*1000)
		}
		return fmt.Sprintf("%.2f s", v)
	case "MiB/s":
		return fmt.Sprintf("%.0f MiB/s", v)
	case "TPS":
		return fmt.Sprintf("%.0f", v)
	case "MiB":
		return fmt.Sprintf("%.1f MiB", v)
	}
	return fmt.Sprintf("%.3g %s", v, unit)
}

func fmtRatio(r *float64) string {
	if r == nil || math.IsNaN(*r) || math.IsInf(*r, 0) {
		return "-"
	}
	return fmt.Sprintf("%.2fx", *r)
}

func (b *bench) printTable(w io.Writer) {
	r := &b.res
	fmt.Fprintf(w, "\ncombinefs benchmark: %s, %s\n", r.Combinefs, r.PostgreSQL)
	m := r.Machine
	fmt.Fprintf(w, "machine: %s, %d CPUs, %s RAM, kernel %s, %s on %s", m.CPU, m.CPUs, human(m.MemBytes), m.Kernel, m.Filesystem, m.Device)
	if m.Virt != "" {
		fmt.Fprintf(w, " (%s)", m.Virt)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "chain: pgbench scale %v, %s\n", r.Settings["scale"], r.Sizes.describe())
	fmt.Fprintf(w, "each figure: median of %v runs per side, order alternated; sync before every timed run", r.Settings["runs"])
	if b.canDrop {
		fmt.Fprint(w, ", page cache dropped before cold ones")
	} else {
		fmt.Fprint(w, "; drop_caches NOT permitted: cold figures are not cold")
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "ratio: how many times better ours is (reference/ours for times and memory, ours/reference for rates); A/A: the reference against itself in the same alternation (ideal 1.00x); cpu/io stall: share of the figure's time some task waited for a CPU / for I/O (/proc/pressure), i.e. how busy the machine was")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tours\treference\tratio\tA/A\truns\tcpu/io stall\ttarget\tmet")
	for _, f := range r.Figures {
		if f.Error != "" {
			fmt.Fprintf(tw, "%s\tFAILED\t\t\t\t\t\t%s\t\n", f.Name, f.Target)
			continue
		}
		if f.Unsupported {
			fmt.Fprintf(tw, "%s\tunsupported\tunsupported\t-\t-\t-\t-\t\t\n", f.Name)
			continue
		}
		ref := "-"
		if f.Ref != nil {
			ref = fmtVal(*f.Ref, f.Unit)
		}
		met := ""
		if f.TargetMet != nil {
			met = map[bool]string{true: "yes", false: "NO"}[*f.TargetMet]
		}
		cold := ""
		if f.Cold {
			cold = " cold"
		}
		load := "-"
		if f.Pressure != nil {
			load = fmt.Sprintf("%.0f%%/%.0f%%", 100*f.Pressure.CPU, 100*f.Pressure.IO)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d%s\t%s\t%s\t%s\n", f.Name, fmtVal(f.Ours, f.Unit), ref, fmtRatio(f.Ratio), fmtRatio(f.AA), f.Runs, cold, load, f.Target, met)
	}
	tw.Flush()
	var notes []string
	for _, f := range r.Figures {
		if f.Error != "" {
			notes = append(notes, fmt.Sprintf("%s: FAILED: %s", f.Name, f.Error))
		} else if f.Note != "" {
			notes = append(notes, fmt.Sprintf("%s: %s", f.Name, f.Note))
		}
		if len(f.Parts) > 0 && strings.HasPrefix(f.ID, "ttfq") {
			notes = append(notes, fmt.Sprintf("%s: ours = mount %s + server start %s; reference = pg_combinebackup %s + server start %s",
				f.Name, fmtVal(f.Parts["ours.mount_s"], "s"), fmtVal(f.Parts["ours.server_start_s"], "s"),
				fmtVal(f.Parts["ref.combine_s"], "s"), fmtVal(f.Parts["ref.server_start_s"], "s")))
		}
	}
	notes = append(notes, r.Notes...)
	if len(notes) > 0 {
		fmt.Fprintln(w)
		for _, n := range notes {
			fmt.Fprintf(w, "- %s\n", n)
		}
	}
}
