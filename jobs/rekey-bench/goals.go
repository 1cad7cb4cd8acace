package main

import (
	"fmt"
	"slices"
	"strings"
)

// Issue 14's goals beyond the reencrypt peers (peers.go), each stated as
// met or missed from the rows of the same run.
const (
	goalWorkers      = 1.7 // reencrypt at the default workers >= 1.7x --workers 1
	goalRewrapVsRaw  = 0.9 // rewrap >= 0.9x the best raw session-copy loop
	goalPrism        = 0.8 // prism >= 0.8x direct, reencrypt and rewrap
	goalReencryptRSS = 256 // MiB, reencrypt peak RSS, every size of the memory section
	goalRewrapRSS    = 300 // MiB, rewrap peak RSS of goalRewrapDEKs DEKs
	goalRewrapDEKs   = 4_000_000
)

// ratioGoal compares row rk with row pk (median over median, pairs per
// repetition) against min; name says what is compared.
func ratioGoal(t *table, name, rk, pk string, cell int, min float64) Goal {
	g := Goal{Goal: fmt.Sprintf("%s >= %.2fx", name, min), Cell: cell, Rekey: rk, Peer: pk, Min: min}
	r, p := t.byKey[rk], t.byKey[pk]
	if r == nil || r.Median == 0 || p == nil || p.Median == 0 {
		g.Verdict = "not measured"
		return g
	}
	g.Unit = r.Unit
	g.RekeyValue, g.PeerValue, g.Ratio = r.Median, p.Median, r.Median/p.Median
	g.Pairs = pairRatios(r.Samples, p.Samples)
	g.PairMedian = median(g.Pairs)
	g.Verdict = "missed"
	if g.Ratio >= min {
		g.Verdict = "met"
	}
	return g
}

// rssGoal states row k's peak RSS, the highest of its runs, against a
// ceiling in MiB.
func rssGoal(t *table, name, k string, cell int, ceiling float64) Goal {
	g := Goal{Goal: fmt.Sprintf("%s peak RSS < %.0f MiB", name, ceiling), Cell: cell, Rekey: k, Min: ceiling, Unit: "MiB"}
	r := t.byKey[k]
	if r == nil || len(r.RSSSamples) == 0 {
		g.Verdict = "not measured"
		return g
	}
	g.RekeyValue = slices.Max(r.RSSSamples)
	g.Pairs = r.RSSSamples
	g.Verdict = "missed"
	if g.RekeyValue < ceiling {
		g.Verdict = "met"
	}
	return g
}

// otherGoals states issue 14's goals for workers, rewrap, prism and memory
// from what the run measured; a goal whose rows the selected sections did
// not make is left out.
func otherGoals(t *table, c *config, mem []*dataset) ([]string, []Goal) {
	var goals []Goal
	has := func(r string) bool {
		for _, x := range c.Runners {
			if x == r {
				return true
			}
		}
		return false
	}
	N := c.Workers
	if c.Sections["reencrypt"] && has("direct") {
		for _, cell := range c.Cells {
			if N > 1 {
				goals = append(goals, ratioGoal(t, fmt.Sprintf("reencrypt %d workers (default) vs --workers 1, direct", N),
					keyRe(cell, "direct", N), keyRe(cell, "direct", 1), cell, goalWorkers))
			}
			if has("prism") {
				goals = append(goals, ratioGoal(t, "reencrypt prism vs direct, default workers",
					keyRe(cell, "prism", N), keyRe(cell, "direct", N), cell, goalPrism))
			}
		}
	}
	if c.Sections["rewrap"] && has("direct") {
		if c.Sections["limits"] {
			if k := t.bestRawCopy(c); k != "" {
				goals = append(goals, ratioGoal(t, "rewrap aes-gcm (direct, default workers, verify on) vs the best raw PKCS#11 session-copy loop",
					keyRw("direct", N), k, 0, goalRewrapVsRaw))
			}
		}
		if has("prism") {
			goals = append(goals, ratioGoal(t, "rewrap prism vs direct, default workers", keyRw("prism", N), keyRw("direct", N), 0, goalPrism))
		}
		g := rssGoal(t, fmt.Sprintf("rewrap of %s DEKs (direct)", inum(int64(c.RewrapDEKs))), keyRw("direct", N), 0, goalRewrapRSS)
		// Fewer DEKs than the goal's: under the ceiling says little, over
		// it is a miss already.
		if c.RewrapDEKs < goalRewrapDEKs && g.Verdict == "met" {
			g.Verdict = fmt.Sprintf("info: the goal is for %s DEKs (--rewrap-deks %d)", inum(goalRewrapDEKs), goalRewrapDEKs)
		}
		goals = append(goals, g)
	}
	if c.Sections["memory"] {
		for _, ds := range mem {
			goals = append(goals, rssGoal(t, fmt.Sprintf("reencrypt %d MiB (memory section, direct)", ds.payloadBytes()>>20), "mem/"+ds.Name, ds.Cell, goalReencryptRSS))
		}
	}
	if c.Sections["rewrap"] && has("direct") {
		// For information: against the raw loop that makes its AES-GCM
		// calls as rekey does, what rekey's own work per DEK costs.
		best, bv := "", 0.0
		for _, g := range []int{1, N} {
			if v := t.get(keyRwRawOne(g)); v > bv {
				best, bv = keyRwRawOne(g), v
			}
		}
		if best != "" {
			g := ratioGoal(t, "info: rewrap aes-gcm (direct) vs the raw session-copy loop with rekey's own AES-GCM calls", keyRw("direct", N), best, 0, goalRewrapVsRaw)
			g.Goal = strings.TrimSuffix(g.Goal, fmt.Sprintf(" >= %.2fx", goalRewrapVsRaw)) // no goal: information
			if g.Verdict == "met" || g.Verdict == "missed" {
				g.Verdict = "info: rekey's own work per DEK"
			}
			goals = append(goals, g)
		}
	}
	var lines []string
	for _, g := range goals {
		lines = append(lines, g.line())
	}
	return lines, goals
}

// line is how a goal of otherGoals reads in the summary.
func (g Goal) line() string {
	where := ""
	if g.Cell > 0 {
		where = cellName(g.Cell) + ": "
	}
	switch {
	case g.Unit == "MiB" && g.RekeyValue > 0:
		return fmt.Sprintf("%s%s: %s MiB (runs %s; %s)", where, g.Goal, fnum(g.RekeyValue), joinNums(g.Pairs), g.Verdict)
	case g.Ratio > 0:
		return fmt.Sprintf("%s%s: %s vs %s %s = %.2fx (pairs %s, median %.2f; %s)", where, g.Goal, fnum(g.RekeyValue), fnum(g.PeerValue), g.Unit, g.Ratio, pairs(g.Pairs), g.PairMedian, g.Verdict)
	}
	return fmt.Sprintf("%s%s: %s", where, g.Goal, g.Verdict)
}

func joinNums(xs []float64) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = fnum(x)
	}
	return strings.Join(s, ", ")
}
