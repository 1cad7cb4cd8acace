package main

import (
	"fmt"
	"strings"
	"testing"
)

// TestOtherGoals: issue 14's goals for workers, rewrap, prism and memory
// are computed from the run's medians and pairs, and a goal whose rows
// are missing says so instead of passing.
func TestOtherGoals(t *testing.T) {
	c := &config{Cells: []int{4096}, Runners: []string{"direct", "prism"}, Workers: 2, RewrapDEKs: 100000,
		Sections: map[string]bool{"reencrypt": true, "rewrap": true, "limits": true, "memory": true}}
	tb := newTable()
	run := func(k string, proto *Row, rss int64, vs ...float64) {
		for _, v := range vs {
			tb.addRun(k, proto, v, 0, childResult{MaxRSS: rss << 20})
		}
	}
	re := func() *Row { return &Row{Section: "rekey", What: "reencrypt", Cell: 4096, Unit: "MB/s"} }
	run(keyRe(4096, "direct", 2), re(), 200, 100, 120, 110)
	run(keyRe(4096, "direct", 1), re(), 200, 80, 70, 60) // 2 vs 1: 110/70 = 1.57x: missed
	run(keyRe(4096, "prism", 2), re(), 260, 90, 95, 100) // prism: 95/110 = 0.86x: met
	rw := func() *Row { return &Row{Section: "rekey", What: "rewrap", Unit: "DEKs/s"} }
	run(keyRw("direct", 2), rw(), 250, 15000, 16000, 14000) // vs raw 20,000: 0.75x: missed
	run(keyRw("prism", 2), rw(), 270, 13000, 13500, 14000)  // prism: 13,500/15,000 = 0.9x: met
	tb.add(keyHSMRaw(1, true), &Row{Section: "limit", Unit: "DEKs/s"}, 20000, 0)
	tb.add(keyHSMRaw(2, true), &Row{Section: "limit", Unit: "DEKs/s"}, 17000, 0)
	mem := []*dataset{newDataset(t.TempDir(), "mem-512MiB", 4096, 2, 131072, 8), newDataset(t.TempDir(), "mem-1024MiB", 4096, 2, 262144, 8)}
	run("mem/mem-512MiB", &Row{Section: "memory", Unit: "MB/s"}, 220, 100)
	tb.addRun("mem/mem-512MiB", nil, 100, 0, childResult{MaxRSS: 230 << 20}) // the goal is on the highest run
	// mem-1024MiB was not run.
	tb.ratios(c, mem)
	lines, goals := otherGoals(tb, c, mem)
	if len(lines) != len(goals) {
		t.Fatalf("%d lines for %d goals", len(lines), len(goals))
	}
	want := []struct {
		prefix, verdict string
		ratio           float64
	}{
		{"reencrypt 2 workers", "missed", 110.0 / 70},
		{"reencrypt prism vs direct", "met", 95.0 / 110},
		{"rewrap aes-gcm", "missed", 15000.0 / 20000},
		{"rewrap prism vs direct", "met", 13500.0 / 15000},
		{"rewrap of " + inum(100000) + " DEKs", "info: the goal is for " + inum(4000000) + " DEKs", 0},
		{fmt.Sprintf("reencrypt %d MiB", mem[0].payloadBytes()>>20), "met", 0},
		{fmt.Sprintf("reencrypt %d MiB", mem[1].payloadBytes()>>20), "not measured", 0},
	}
	if len(goals) != len(want) {
		t.Fatalf("goals:\n%s", strings.Join(lines, "\n"))
	}
	for i, w := range want {
		g := goals[i]
		if !strings.HasPrefix(g.Goal, w.prefix) || !strings.HasPrefix(g.Verdict, w.verdict) {
			t.Errorf("goal %d: %q %q, want %q... %q", i, g.Goal, g.Verdict, w.prefix, w.verdict)
		}
		if d := g.Ratio - w.ratio; d > 1e-9 || d < -1e-9 {
			t.Errorf("goal %d (%s): ratio %v, want %v", i, g.Goal, g.Ratio, w.ratio)
		}
	}
	if g := goals[0]; len(g.Pairs) != 3 || g.Pairs[0] != 100.0/80 {
		t.Errorf("pairs of %q: %v, want per repetition", g.Goal, g.Pairs)
	}
	if g := goals[5]; g.RekeyValue != 230 || !strings.Contains(lines[5], "230 MiB") {
		t.Errorf("memory goal: %+v, line %q", g, lines[5])
	}
	// A smaller rewrap already over the ceiling is a miss, not info.
	tb.addRun(keyRw("direct", 2), nil, 15000, 0, childResult{MaxRSS: 310 << 20})
	tb.ratios(c, mem)
	if _, goals := otherGoals(tb, c, mem); goals[4].Verdict != "missed" {
		t.Errorf("rewrap of 100,000 DEKs at 310 MiB: %q, want missed", goals[4].Verdict)
	}
	// The raw loop run next to the rewrap runs is the peer when there is
	// one, whatever the limits section measured earlier.
	tb.add(keyRwRaw(1), &Row{Section: "peer", Unit: "DEKs/s"}, 12000, 0)
	tb.add(keyRwRaw(2), &Row{Section: "peer", Unit: "DEKs/s"}, 15000, 0)
	tb.ratios(c, mem)
	if _, goals := otherGoals(tb, c, mem); goals[2].Peer != keyRwRaw(2) || goals[2].Verdict != "met" {
		t.Errorf("rewrap goal with the adjacent raw loop: %+v, want its g2 row (15,000) as the peer, met", goals[2])
	}
	// Without the limits section there is no raw loop to compare with:
	// the rewrap goal is left out, not passed.
	delete(c.Sections, "limits")
	if _, goals := otherGoals(tb, c, mem); len(goals) != len(want)-1 {
		t.Errorf("without limits: %d goals, want %d", len(goals), len(want)-1)
	}
}
