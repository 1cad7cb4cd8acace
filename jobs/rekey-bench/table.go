package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
)

// Row is one line of the results table. Figures are medians of Samples.
type Row struct {
	Key         string    `json:"key"`
	Section     string    `json:"section"` // limit, baseline, rekey, memory
	What        string    `json:"what"`
	Cell        int       `json:"cell_bytes,omitempty"`
	Workers     int       `json:"workers"`
	Runner      string    `json:"runner,omitempty"`
	Unit        string    `json:"unit"`
	Median      float64   `json:"median"`
	Samples     []float64 `json:"samples"`
	Spread      float64   `json:"spread"`
	RecordsPerS float64   `json:"records_per_s,omitempty"`
	WallS       float64   `json:"wall_s,omitempty"`
	PeakRSSMiB  float64   `json:"peak_rss_mib,omitempty"`
	RSSSamples  []float64 `json:"peak_rss_mib_samples,omitempty"`
	// CPUS is the child's CPU time (user + system) per run, CPUSeconds
	// its median. A process start and preflight are in it (not in Median).
	CPUS         []float64 `json:"cpu_s_samples,omitempty"`
	CPUSeconds   float64   `json:"cpu_s,omitempty"`
	DEKs         int64     `json:"deks,omitempty"`
	HSMOps       int64     `json:"hsm_ops,omitempty"`
	HSMOpsNote   string    `json:"hsm_ops_note,omitempty"`
	HSMOpsPerDEK int64     `json:"hsm_ops_per_dek,omitempty"`
	VsLimit      float64   `json:"vs_limit,omitempty"`
	LimitKey     string    `json:"limit,omitempty"`
	LimitValue   float64   `json:"limit_value,omitempty"`
	VsBaseline   float64   `json:"vs_baseline,omitempty"`
	// VsUserLoop and VsFloor are a rekey reencrypt row's median over the
	// per-file user loop's and the floor's at the same cell size (issue
	// 14's peers, peers.go), and the Pairs the same per repetition.
	VsUserLoop      float64   `json:"vs_user_loop,omitempty"`
	VsUserLoopPairs []float64 `json:"vs_user_loop_pairs,omitempty"`
	VsFloor         float64   `json:"vs_floor,omitempty"`
	VsFloorPairs    []float64 `json:"vs_floor_pairs,omitempty"`
	VsW1            float64   `json:"vs_workers1,omitempty"`
	// PeerKey is the row this one is set against (aes-gcm rows: the
	// rekey-v1 row of the same shape); VsPeer the ratio of the medians.
	PeerKey string  `json:"peer,omitempty"`
	VsPeer  float64 `json:"vs_peer,omitempty"`
	// VsBase is the ratio of this row's median to the same row run by the
	// --compare binary; VsBasePairs the ratio within each pair of runs
	// (same repetition), and VsBasePairMedian their median.
	VsBase           float64   `json:"vs_base,omitempty"`
	VsBasePairs      []float64 `json:"vs_base_pairs,omitempty"`
	VsBasePairMedian float64   `json:"vs_base_pair_median,omitempty"`
	// CPUVsBase is this row's median CPU time over the base row's (a
	// cost: 1.05 = 5% more CPU per run), CPUVsBasePairs per pair.
	CPUVsBase      float64   `json:"cpu_vs_base,omitempty"`
	CPUVsBasePairs []float64 `json:"cpu_vs_base_pairs,omitempty"`
	Note           string    `json:"note,omitempty"`
	// DefaultWorkers marks a rekey run made without --workers (rekey's
	// default). VsBest is this row's median over the best median of its
	// group (the KMS section: rekey or raw loop on one path, over the
	// worker counts), BestKey that row.
	DefaultWorkers bool    `json:"default_workers,omitempty"`
	VsBest         float64 `json:"vs_best,omitempty"`
	BestKey        string  `json:"best,omitempty"`
	// VsLimitPairs is VsLimit per repetition, for rows whose limit was
	// measured right beside them (the KMS section's raw loop), and
	// VsLimitPairMedian their median: steadier than the ratio of medians
	// on a busy machine.
	VsLimitPairs      []float64 `json:"vs_limit_pairs,omitempty"`
	VsLimitPairMedian float64   `json:"vs_limit_pair_median,omitempty"`
	// SourceGETBytes are, per run of an objects rewrap, the body bytes of
	// the source objects the fake S3 served during the run (asserted 0).
	SourceGETBytes []int64 `json:"source_get_body_bytes,omitempty"`

	recs, walls []float64
	group       string // rows compared by VsBest (and VsW1) with each other
}

type table struct {
	rows  []*Row
	byKey map[string]*Row
}

func newTable() *table { return &table{byKey: map[string]*Row{}} }

func keyAES(cell, g int) string       { return fmt.Sprintf("limit/aes/%d/g%d", cell, g) }
func keyAESVerify(cell, g int) string { return fmt.Sprintf("limit/aes-verify/%d/g%d", cell, g) }
func keyPQ(cell, g int) string        { return fmt.Sprintf("limit/parquet/%d/g%d", cell, g) }
func keyPQRaw(cell, g int) string     { return fmt.Sprintf("limit/parquet-raw/%d/g%d", cell, g) }
func keyBound(cell, g int) string     { return fmt.Sprintf("limit/bound/%d/g%d", cell, g) }
func keyHSM(g int, verify bool) string {
	if verify {
		return fmt.Sprintf("limit/hsm3/g%d", g)
	}
	return fmt.Sprintf("limit/hsm2/g%d", g)
}

// keyHSMRaw is the raw PKCS#11 loop's row (hsmio.RawGCMRewrapLoop), with
// session copies of the keys or their token objects.
func keyHSMRaw(g int, copies bool) string {
	if copies {
		return fmt.Sprintf("limit/hsm3-raw-copy/g%d", g)
	}
	return fmt.Sprintf("limit/hsm3-raw-token/g%d", g)
}

// keyRwRaw is the raw PKCS#11 session-copy loop run next to rekey's rewrap
// runs (the rewrap goal's peer).
func keyRwRaw(g int) string { return fmt.Sprintf("peer/rewrap-raw-copy/g%d", g) }

// keyRwRawOne is the same loop making its AES-GCM calls as rekey's keys
// do (hsmio.OneCallGCM): for information, rekey's own cost per DEK.
func keyRwRawOne(g int) string { return fmt.Sprintf("peer/rewrap-raw-copy-onecall/g%d", g) }

func keyBase(cell int) string { return fmt.Sprintf("baseline/%d", cell) }
func keyRe(cell int, runner string, w int) string {
	return fmt.Sprintf("rekey/reencrypt/%d/%s/w%d", cell, runner, w)
}
func keyRw(runner string, w int) string { return fmt.Sprintf("rekey/rewrap/%s/w%d", runner, w) }

// baseKey is the key of row k run by the --compare binary.
func baseKey(k string) string { return "base/" + k }

// add records one sample of the row with key k (created from proto on
// first use).
func (t *table) add(k string, proto *Row, v, recPerS float64) *Row {
	r := t.byKey[k]
	if r == nil {
		r = proto
		r.Key = k
		t.byKey[k] = r
		t.rows = append(t.rows, r)
	}
	r.Samples = append(r.Samples, v)
	if recPerS > 0 {
		r.recs = append(r.recs, recPerS)
	}
	return r
}

func (t *table) addRun(k string, proto *Row, v, recPerS float64, cr childResult) {
	r := t.add(k, proto, v, recPerS)
	r.RSSSamples = append(r.RSSSamples, float64(cr.MaxRSS)/(1<<20))
	r.CPUS = append(r.CPUS, cr.CPU.Seconds())
	r.walls = append(r.walls, cr.Wall.Seconds())
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

func (t *table) get(k string) float64 {
	if r := t.byKey[k]; r != nil {
		return r.Median
	}
	return 0
}

// ratios computes medians, the composed bounds and every ratio.
func (t *table) ratios(c *config, mem []*dataset) {
	for _, r := range t.rows {
		r.Median = median(r.Samples)
		r.RecordsPerS = median(r.recs)
		r.PeakRSSMiB = median(r.RSSSamples)
		r.CPUSeconds = median(r.CPUS)
		r.WallS = median(r.walls)
		if len(r.Samples) > 1 && r.Median > 0 {
			lo, hi := r.Samples[0], r.Samples[0]
			for _, s := range r.Samples {
				lo, hi = min(lo, s), max(hi, s)
			}
			r.Spread = (hi - lo) / r.Median
		}
	}
	N := c.Workers
	gs := []int{1}
	if N > 1 {
		gs = append(gs, N)
	}
	// Composed bounds, inserted after the Parquet rows.
	var bounds []*Row
	for _, cell := range c.Cells {
		for _, g := range gs {
			a, p := t.get(keyAES(cell, g)), t.get(keyPQ(cell, g))
			if a == 0 || p == 0 {
				continue
			}
			b := &Row{Key: keyBound(cell, g), Section: "limit", What: "composed re-encrypt bound", Cell: cell, Workers: g, Unit: "MB/s",
				Median: composed(a, p), RecordsPerS: composed(a, p) * 1e6 / float64(cell), Note: "1/(1/AES + 1/Parquet)"}
			t.byKey[b.Key] = b
			bounds = append(bounds, b)
		}
	}
	if len(bounds) > 0 {
		at := len(t.rows)
		for i, r := range t.rows {
			if r.Section != "limit" {
				at = i
				break
			}
		}
		rows := append([]*Row{}, t.rows[:at]...)
		rows = append(rows, bounds...)
		t.rows = append(rows, t.rows[at:]...)
	}
	for _, r := range t.rows {
		switch {
		case r.Section == "baseline":
			r.setLimit(t, keyBound(r.Cell, 1))
		case r.Section == "rekey" && r.What == "reencrypt", r.Section == "memory":
			r.setLimit(t, keyBound(r.Cell, r.Workers))
			if b := t.get(keyBase(r.Cell)); b > 0 {
				r.VsBaseline = r.Median / b
			}
			if r.Section == "rekey" && r.Workers != 1 {
				if w1 := t.get(keyRe(r.Cell, r.Runner, 1)); w1 > 0 {
					r.VsW1 = r.Median / w1
				}
			}
			if r.Section == "rekey" {
				if p := t.byKey[keyLoop(r.Cell)]; p != nil && p.Median > 0 {
					r.VsUserLoop, r.VsUserLoopPairs = r.Median/p.Median, pairRatios(r.Samples, p.Samples)
				}
				if p := t.byKey[keyFloor(r.Cell)]; p != nil && p.Median > 0 {
					r.VsFloor, r.VsFloorPairs = r.Median/p.Median, pairRatios(r.Samples, p.Samples)
				}
			}
		case r.Section == "peer" && r.Key == keyLoop(r.Cell):
			// What one goroutine per file buys the baseline's program.
			if b := t.get(keyBase(r.Cell)); b > 0 {
				r.VsBaseline = r.Median / b
			}
		case r.Section == "rekey" && r.What == "rewrap":
			// Issue 14's peer: the best raw session-copy loop, whatever
			// its goroutines (one beats two on SoftHSM2); without one,
			// the providers/keys HSM limit.
			if k := t.bestRawCopy(c); k != "" {
				r.setLimit(t, k)
			} else {
				r.setLimit(t, keyHSM(r.Workers, true))
			}
			if r.Workers != 1 {
				if w1 := t.get(keyRw(r.Runner, 1)); w1 > 0 {
					r.VsW1 = r.Median / w1
				}
			}
		case r.Section == "limit" && (strings.HasPrefix(r.Key, "limit/hsm3/") || strings.HasPrefix(r.Key, "limit/hsm3-raw-token/")):
			// The same per-DEK token work through providers/keys, and
			// raw on the token objects, against the raw loop with session
			// copies at the same goroutines.
			r.setLimit(t, keyHSMRaw(r.Workers, true))
			r.limitVsW1(t)
		case r.Section == "limit":
			r.limitVsW1(t)
		case r.Section == "aes-gcm" && r.LimitKey != "":
			r.setLimit(t, r.LimitKey)
		case r.Section == "tink" && strings.HasPrefix(r.Key, "tink/rekey/"):
			// Against the best raw session-copy loop, 1 or N goroutines.
			if k := t.bestTinkRawCopy(c); k != "" {
				r.setLimit(t, k)
				r.pairLimit(t)
			}
		case r.Section == "tink" && strings.HasPrefix(r.Key, "tink/raw-token/"):
			r.setLimit(t, keyTinkRaw(r.Workers, true))
			r.limitVsW1(t)
		case r.Section == "tink":
			r.limitVsW1(t)
		case r.Section == "objects" && r.LimitKey != "":
			r.setLimit(t, r.LimitKey)
			r.pairLimit(t)
		case r.Section == "objects" && strings.HasPrefix(r.Key, "objects/copy/"):
			r.limitVsW1(t)
		case (r.Section == "kms" || r.Section == "base") && r.group != "":
			if tag, ok := strings.CutPrefix(strings.TrimPrefix(r.group, baseKey("")), "kms/rekey/"); ok {
				r.setLimit(t, keyKMSRaw(tag, r.Workers))
				// Samples of both rows are in repetition order, one per
				// repetition, made one right after the other: pair them.
				if raw := t.byKey[keyKMSRaw(tag, r.Workers)]; raw != nil {
					for i := 0; i < min(len(r.Samples), len(raw.Samples)); i++ {
						r.VsLimitPairs = append(r.VsLimitPairs, r.Samples[i]/raw.Samples[i])
					}
					r.VsLimitPairMedian = median(r.VsLimitPairs)
				}
			}
			if w1 := t.get(r.group + "/w1"); w1 > 0 && r.Workers != 1 {
				r.VsW1 = r.Median / w1
			}
		}
		if p := t.get(r.PeerKey); r.PeerKey != "" && p > 0 {
			r.VsPeer = r.Median / p
		}
		if b := t.byKey[baseKey(r.Key)]; b != nil && b.Median > 0 {
			r.VsBase = r.Median / b.Median
			// Samples of a row and its base row are in repetition order,
			// one of each per repetition: pair them.
			for i := 0; i < min(len(r.Samples), len(b.Samples)); i++ {
				r.VsBasePairs = append(r.VsBasePairs, r.Samples[i]/b.Samples[i])
			}
			r.VsBasePairMedian = median(r.VsBasePairs)
			if b.CPUSeconds > 0 {
				r.CPUVsBase = r.CPUSeconds / b.CPUSeconds
				for i := 0; i < min(len(r.CPUS), len(b.CPUS)); i++ {
					r.CPUVsBasePairs = append(r.CPUVsBasePairs, r.CPUS[i]/b.CPUS[i])
				}
			}
		}
	}
	best := map[string]*Row{}
	for _, r := range t.rows {
		if b := best[r.group]; r.group != "" && (b == nil || r.Median > b.Median) {
			best[r.group] = r
		}
	}
	for _, r := range t.rows {
		if b := best[r.group]; b != nil && b.Median > 0 {
			r.VsBest, r.BestKey = r.Median/b.Median, b.Key
		}
	}
	if len(mem) == 2 {
		a, b := t.byKey["mem/"+mem[0].Name], t.byKey["mem/"+mem[1].Name]
		if a != nil && b != nil && a.PeakRSSMiB > 0 {
			b.Note = fmt.Sprintf("peak RSS %.2fx the %d MiB run's (flat = within 1.10x)", b.PeakRSSMiB/a.PeakRSSMiB, mem[0].payloadBytes()>>20)
		}
	}
}

// bestRawCopy is the key of the fastest raw PKCS#11 loop row with session
// copies (1 or N goroutines): the one run next to rekey's rewrap runs when
// the rewrap section made it, else the limits section's; "" if there is
// none.
func (t *table) bestRawCopy(c *config) string {
	for _, key := range []func(int) string{keyRwRaw, func(g int) string { return keyHSMRaw(g, true) }} {
		best, bv := "", 0.0
		for _, g := range []int{1, c.Workers} {
			if v := t.get(key(g)); v > bv {
				best, bv = key(g), v
			}
		}
		if best != "" {
			return best
		}
	}
	return ""
}

// limitVsW1 sets a limit row's ratio to its 1-goroutine row.
func (r *Row) limitVsW1(t *table) {
	if r.Workers == 1 {
		return
	}
	k := strings.Replace(r.Key, fmt.Sprintf("/g%d", r.Workers), "/g1", 1)
	if w1 := t.get(k); w1 > 0 && k != r.Key {
		r.VsW1 = r.Median / w1
	}
}

// pairLimit sets VsLimitPairs: the row's samples over its limit row's,
// repetition by repetition (both measured one right after the other).
func (r *Row) pairLimit(t *table) {
	l := t.byKey[r.LimitKey]
	if l == nil {
		return
	}
	r.VsLimitPairs = nil
	for i := 0; i < min(len(r.Samples), len(l.Samples)); i++ {
		r.VsLimitPairs = append(r.VsLimitPairs, r.Samples[i]/l.Samples[i])
	}
	r.VsLimitPairMedian = median(r.VsLimitPairs)
}

func (r *Row) setLimit(t *table, k string) {
	if l := t.get(k); l > 0 {
		r.VsLimit, r.LimitKey, r.LimitValue = r.Median/l, k, l
	}
}

func (t *table) print(w io.Writer, res *Results) {
	m := res.Machine
	fmt.Fprintf(w, "\nrekey bench: %s, %d cores (GOMAXPROCS %d), %s, %s, %s, load %s -> %s, took %s\n",
		m.CPU, m.Cores, m.GOMAXPROCS, m.Kernel, m.Go, m.SoftHSM, m.LoadStart, m.LoadEnd, res.Took)
	fmt.Fprintf(w, "command: %s\n\n", res.Command)
	tw := tabwriter.NewWriter(w, 2, 0, 2, ' ', tabwriter.AlignRight)
	peers, bases, bests, loops := false, false, false, false
	for _, r := range t.rows {
		loops = loops || r.VsUserLoop > 0 || r.VsFloor > 0
		peers = peers || r.VsPeer > 0
		bases = bases || r.VsBase > 0
		bests = bests || r.VsBest > 0
	}
	head := "section\twhat\tcell\tw\trunner\tmedian\tunit\trecords/s\tspread\tpeak RSS MiB\tDEKs\tHSM ops\tvs limit\tvs baseline\tvs w=1\t"
	if loops {
		head += "vs user loop\tvs floor\t"
	}
	if peers {
		head += "vs rekey-v1\t"
	}
	if bests {
		head += "vs best\t"
	}
	if bases {
		head += "CPU s\tvs " + res.Config.CompareLabel + "\t" + res.Config.CompareLabel + " pairs\tCPU/" + res.Config.CompareLabel + "\tCPU pairs\t"
	}
	fmt.Fprintln(tw, head)
	// Each row run by the --compare binary is printed under its own.
	var rows []*Row
	for _, r := range t.rows {
		if r.Section == "base" {
			continue
		}
		rows = append(rows, r)
		if b := t.byKey[baseKey(r.Key)]; b != nil {
			rows = append(rows, b)
		}
	}
	last := ""
	for _, r := range rows {
		sec := r.Section
		if sec == "base" {
			sec = "rekey"
		}
		if last != "" && sec != last {
			fmt.Fprintln(tw, strings.Repeat("\t", strings.Count(head, "\t")))
		}
		last = sec
		hsm := ""
		switch {
		case r.HSMOps > 0 && strings.HasPrefix(r.HSMOpsNote, "estimate"):
			hsm = fmt.Sprintf("~%d", r.HSMOps)
		case r.HSMOps > 0:
			hsm = fmt.Sprint(r.HSMOps)
		case r.HSMOpsPerDEK > 0:
			hsm = fmt.Sprintf("%d/DEK", r.HSMOpsPerDEK)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t",
			r.Section, r.What, cellName(r.Cell), r.Workers, r.Runner, fnum(r.Median), r.Unit, fnum(r.RecordsPerS),
			pct(r.Spread, len(r.Samples) > 1), fnum(r.PeakRSSMiB), inum(r.DEKs), hsm, ratio(r.VsLimit), ratio(r.VsBaseline), ratio(r.VsW1))
		if loops {
			fmt.Fprintf(tw, "%s\t%s\t", ratio(r.VsUserLoop), ratio(r.VsFloor))
		}
		if peers {
			fmt.Fprintf(tw, "%s\t", ratio(r.VsPeer))
		}
		if bests {
			fmt.Fprintf(tw, "%s\t", ratio(r.VsBest))
		}
		if bases {
			var ps []string
			for _, p := range r.VsBasePairs {
				ps = append(ps, fmt.Sprintf("%.3f", p))
			}
			var cs []string
			for _, p := range r.CPUVsBasePairs {
				cs = append(cs, fmt.Sprintf("%.3f", p))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t", fnum(r.CPUSeconds), ratio3(r.VsBase), strings.Join(ps, " "), ratio3(r.CPUVsBase), strings.Join(cs, " "))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
	for _, r := range t.rows {
		if r.Note != "" && r.Section == "memory" {
			fmt.Fprintf(w, "\nmemory: %s\n", r.Note)
		}
	}
	for _, s := range []struct {
		name  string
		lines []string
	}{{"issue 14 goals", res.Reencrypt}, {"kms", res.KMS}, {"tink", res.Tink}, {"objects", res.Objects}} {
		if len(s.lines) > 0 {
			fmt.Fprintf(w, "\n%s:\n", s.name)
			for _, l := range s.lines {
				fmt.Fprintln(w, "  -", l)
			}
		}
	}
	fmt.Fprintln(w, "\nnotes:")
	for _, n := range res.Notes {
		fmt.Fprintln(w, "  -", n)
	}
}

func cellName(c int) string {
	switch {
	case c == 0:
		return "-"
	case c%1024 == 0:
		return fmt.Sprintf("%d KiB", c/1024)
	}
	return fmt.Sprintf("%d B", c)
}

func fnum(v float64) string {
	switch {
	case v == 0:
		return "-"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func inum(v int64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprint(v)
}

func pct(v float64, ok bool) string {
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", v*100)
}

// ratio3 is a ratio with the precision a few-percent comparison needs.
func ratio3(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.3fx", v)
}

func ratio(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", v)
}
