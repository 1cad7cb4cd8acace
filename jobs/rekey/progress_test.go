package main

import (
	"bytes"
	"regexp"
	"strconv"
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

// TestRunProgressTotals (issue 15 item 14): the totals of a real run's
// progress lines are the dataset's. A reencrypt of 3 files of 40 records:
// every line that shows a records total shows 120 (the preflight of a run
// reads only the first file's footer when nothing predicts failures; that
// count, 40, is no total), and done never exceeds it.
func TestRunProgressTotals(t *testing.T) {
	dir := t.TempDir()
	src := env.KEK("source", "kek-aes")
	rekey(t, exitOK, "gen", "--data", dir+"/src/data", "--deks", dir+"/src/deks", "--kek", src, "--files", "3", "--records", "40", "--num-deks", "5")
	resetFlags()
	var stdout, stderr bytes.Buffer
	code := mainExit([]string{"run", "--run-id", "p1", "--progress", "1ms", "--source-data", dir + "/src/data", "--source-deks", dir + "/src/deks",
		"--source-kek", src, "--target-data", dir + "/dst/data", "--target-deks", dir + "/dst/deks", "--target-kek", env.KEK("target", "kek-aes"),
		"--ledger", dir + "/ledger", "--mode", "reencrypt"}, &stdout, &stderr)
	if code != exitOK {
		t.Fatalf("run: exit %d\n%s\n%s", code, stdout.String(), stderr.String())
	}
	re := regexp.MustCompile(`records (\d+)/(\d+)`)
	totals := 0
	for _, line := range strings.Split(stderr.String(), "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		totals++
		done, _ := strconv.Atoi(m[1])
		if m[2] != "120" || done > 120 {
			t.Fatalf("progress line with a wrong records total: %q\n%s", line, stderr.String())
		}
	}
	if totals == 0 {
		t.Fatalf("no progress line showed a records total:\n%s", stderr.String())
	}
}
