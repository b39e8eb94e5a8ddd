package bench

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// machine describes where the run happened, for readers of the table.
func machine(b *bed) string {
	var u unix.Utsname
	_ = unix.Uname(&u)
	model := "unknown CPU"
	for _, line := range strings.Split(readFile("/proc/cpuinfo"), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			model = strings.TrimSpace(v)
			break
		}
	}
	mem := ""
	for _, line := range strings.Split(readFile("/proc/meminfo"), "\n") {
		if strings.HasPrefix(line, "MemTotal:") {
			mem = strings.Join(strings.Fields(line)[1:], " ")
		}
	}
	load := strings.Join(strings.Fields(readFile("/proc/loadavg"))[:3], " ")
	layout := "cgroup v2 only"
	if b.v1 != "" {
		layout = "hybrid (cgroup v2 at /sys/fs/cgroup/unified, v1 controllers)"
	}
	lx := "not installed"
	if out, err := os.ReadFile("/usr/share/doc/lxcfs/changelog.Debian.gz"); err == nil && len(out) > 0 {
		lx = "Debian's lxcfs package"
	}
	return fmt.Sprintf("Linux %s on %d × %s, %s memory, load %s; %s; %s; LXCFS: %s; %s. "+
		"%v per round, the fastest of %d rounds per cell",
		unix.ByteSliceToString(u.Release[:]), runtime.NumCPU(), model, mem, load, layout,
		runtime.Version(), lx, b.leafNote, b.o.Time, b.o.Rounds)
}

const preamble = `# Benchmarks

Written by ` + "`sudo cgfs bench`" + ` (see README.md): µs per operation, on the same
host cgroups in one run, reached natively, through the *floor* (the least any
go-fuse server can cost: a loopback built with cgfs's mount options, entries
and attributes cached for an hour, read-only opens by kernel passthrough, no
flush at close), through a cgfs view read by host root, through the view a
container's root reads at its /sys/fs/cgroup (bind-mounted by ` + "`cgfs run`" + `),
and, for the v1 reads it serves, through LXCFS's cgroup tree. ×native and
×floor are ratios to those columns in the same run. The tasks of the
cgroup.procs rows live in the container's pid namespace.
`

// writeMarkdown puts res into the file at path as the section titled
// label, replacing one of that title and keeping the others.
func writeMarkdown(path, label string, res *Result) error {
	old, _ := os.ReadFile(path)
	sections := splitSections(string(old))
	var s strings.Builder
	fmt.Fprintf(&s, "## %s\n\n", label)
	fmt.Fprintf(&s, "%s, %s.\n\n", time.Now().UTC().Format("2006-01-02"), res.Machine)
	s.WriteString(Table(res))
	if len(res.Daemon) > 0 {
		s.WriteString("\nThe daemon with views attached (each owner a container of its own):\n\n")
		s.WriteString("| views | resident | threads | CPU while idle | one scrape of /metrics |\n|---|---|---|---|---|\n")
		for _, d := range res.Daemon {
			fmt.Fprintf(&s, "| %d | %.1f MiB | %d | %v in %v | %.1f ms (%d samples) |\n", d.Views, float64(d.RSS)/(1<<20), d.Threads,
				d.CPU.Round(time.Millisecond), d.Idle.Round(100*time.Millisecond), float64(d.Scrape.Microseconds())/1e3, d.Series)
		}
	}
	s.WriteString("\n")
	replaced := false
	for i, sec := range sections {
		if sectionTitle(sec) == label {
			sections[i], replaced = s.String(), true
		}
	}
	if !replaced {
		sections = append(sections, s.String())
	}
	out := preamble + "\n" + strings.Join(sections, "")
	return os.WriteFile(path, []byte(out), 0o644)
}

// splitSections returns the "## " sections of a file, each with its
// text, without what comes before the first.
func splitSections(text string) []string {
	var out []string
	cur := -1
	for _, line := range strings.SplitAfter(text, "\n") {
		if strings.HasPrefix(line, "## ") {
			out = append(out, "")
			cur++
		}
		if cur >= 0 {
			out[cur] += line
		}
	}
	return out
}

func sectionTitle(sec string) string {
	first, _, _ := strings.Cut(sec, "\n")
	return strings.TrimPrefix(first, "## ")
}

// Table renders res as a markdown table.
func Table(res *Result) string {
	var s strings.Builder
	s.WriteString("| operation |")
	sep := "|---|"
	native, floor := -1, -1
	for i, c := range res.Columns {
		switch c.name {
		case "native":
			native = i
		case "floor":
			floor = i
		}
		fmt.Fprintf(&s, " %s |", c.name)
		sep += "---:|"
		if strings.HasPrefix(c.name, "cgfs") || c.name == "LXCFS" {
			s.WriteString(" ×native | ×floor |")
			sep += "---:|---:|"
		}
	}
	s.WriteString("\n" + sep + "\n")
	for i, o := range res.Ops {
		fmt.Fprintf(&s, "| %s |", o.title)
		row := res.Cells[i]
		for j, c := range res.Columns {
			fmt.Fprintf(&s, " %s |", us(row[j]))
			if strings.HasPrefix(c.name, "cgfs") || c.name == "LXCFS" {
				fmt.Fprintf(&s, " %s | %s |", ratio(row[j], row, native), ratio(row[j], row, floor))
			}
		}
		s.WriteString("\n")
	}
	return s.String()
}

func us(c cell) string {
	switch {
	case c.err == "n/a":
		return ""
	case c.err != "":
		return "failed: " + strings.ReplaceAll(c.err, "|", "/")
	case c.us >= 100:
		return fmt.Sprintf("%.0f", c.us)
	}
	return fmt.Sprintf("%.1f", c.us)
}

func ratio(c cell, row []cell, to int) string {
	if to < 0 || c.err != "" || row[to].err != "" || row[to].us == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f", c.us/row[to].us)
}
