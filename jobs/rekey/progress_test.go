package main

import (
	"strings"
	"testing"
	"time"

	"rekey/schemas"
)

// TestProgressLine (issue 15 item 14): done/total for what the plan
// counted, the share done, the rate and the time left; a bar on a
// terminal; no percent when no total is known.
func TestProgressLine(t *testing.T) {
	got := progressLine(10*time.Second, schemas.ModeRewrap, progressTotals{Files: 8, DEKs: 1000}, 2, 250, 0, 0, 1, true)
	for _, want := range []string{"files 2/8", "DEKs 250/1000", "(25/s)", " 25%", "ETA 30s", "[#####...............]", "failed 1"} {
		if !strings.Contains(got, want) {
			t.Errorf("rewrap line lacks %q: %s", want, got)
		}
	}
	got = progressLine(4*time.Second, schemas.ModeReencrypt, progressTotals{Files: 4, DEKs: 16, Records: 8000}, 1, 16, 6000, 1<<20, 0, false)
	for _, want := range []string{"files 1/4", "records 6000/8000", "(1500/s)", " 75%", "ETA 1s"} {
		if !strings.Contains(got, want) {
			t.Errorf("reencrypt line lacks %q: %s", want, got)
		}
	}
	if strings.Contains(got, "[#") {
		t.Errorf("a bar when not on a terminal: %s", got)
	}
	if got := progressLine(time.Second, "verify", progressTotals{}, 1, 2, 3, 0, 0, true); strings.Contains(got, "%") || strings.Contains(got, "ETA") {
		t.Errorf("percent without totals: %s", got)
	}
}
