package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"rekey/schemas"
)

// The ledger section (issue 15 item 9): `rekey verify` (which compares the
// target with the run's ledger) and `rekey ledger --limit 5` on runs of 1M
// and 4M records (--ledger-records), with their peak RSS. A ledger holds a
// row per record (~1.2 KiB each in memory when read whole); both commands
// stream it, so their peak RSS must not grow with the number of records.
//
// Each dataset has small cells (the ledger, not the payload, is what is
// measured), is reencrypted once when the section starts (the run that
// writes the ledger), and is kept under DIR/ledger-runs until the next
// bench run.

// ledgerRun is a dataset reencrypted once, with its ledger kept.
type ledgerRun struct {
	ds              *dataset
	runID, out      string
	records, ledger int64 // records migrated, ledger rows
}

const ledgerCell = 16 // payload bytes per record

// ledgerRecordsPerFile keeps files of one shape whatever the total.
const ledgerRecordsPerFile = 250000

// setupLedgerRuns generates each dataset and runs the reencrypt that writes
// its ledger.
func setupLedgerRuns(ctx context.Context, c *config, logs string) ([]*ledgerRun, error) {
	var out []*ledgerRun
	for _, n := range c.LedgerRecords {
		files := max(1, n/ledgerRecordsPerFile)
		ds := newDataset(c.Dir, fmt.Sprintf("ledger-%s", recordsName(n)), ledgerCell, files, n/files, 256)
		if err := generate(ctx, c.Rekey, ds, c.Workers, logs); err != nil {
			return nil, err
		}
		lr := &ledgerRun{ds: ds, runID: "ledger-" + recordsName(n), out: filepath.Join(c.Dir, "ledger-runs", ds.Name)}
		if err := os.RemoveAll(lr.out); err != nil {
			return nil, err
		}
		args := append([]string{"run", "--run-id", lr.runID, "--progress", "-1s"}, lr.jobArgs()...)
		fmt.Fprintf(os.Stderr, "  %s: reencrypt %d records (the run whose ledger is read)\n", ds.Name, ds.records())
		if _, err := runChild(ctx, c.Rekey, args, filepath.Join(logs, lr.runID+"-run.log")); err != nil {
			return nil, err
		}
		m, err := readManifestFile(filepath.Join(lr.out, "ledger", "run_id="+lr.runID, "_manifest.json"))
		if err != nil {
			return nil, err
		}
		if m.Status != "succeeded" || m.Totals.RecordsMigrated != int64(ds.records()) {
			return nil, fmt.Errorf("ledger section: run %s: %s, %d of %d records migrated", lr.runID, m.Status, m.Totals.RecordsMigrated, ds.records())
		}
		lr.records, lr.ledger = m.Totals.RecordsMigrated, m.Totals.LedgerRows
		out = append(out, lr)
	}
	return out, nil
}

// jobArgs are the job flags of the run, shared by run and verify.
func (lr *ledgerRun) jobArgs() []string {
	return []string{"--mode", schemas.ModeReencrypt, "--source-kek", sourceKEK(), "--target-kek", targetKEK(),
		"--source-data", lr.ds.Data, "--source-deks", lr.ds.DEKs,
		"--target-data", filepath.Join(lr.out, "data"), "--target-deks", filepath.Join(lr.out, "deks"),
		"--ledger", filepath.Join(lr.out, "ledger")}
}

// ledgerRuns is one repetition: verify and ledger --limit 5 on each run.
func ledgerRuns(ctx context.Context, c *config, t *table, runs []*ledgerRun, rep int, logs string) error {
	for _, lr := range runs {
		id := fmt.Sprintf("%s-verify-r%d", lr.runID, rep)
		args := append([]string{"verify", "--run-id", lr.runID, "--progress", "-1s",
			"--report", filepath.Join(lr.out, id+".json")}, lr.jobArgs()...)
		cr, err := runChild(ctx, c.Rekey, args, filepath.Join(logs, id+".log"))
		if err != nil {
			return err
		}
		if !strings.Contains(cr.Stdout, "counts match run "+lr.runID) {
			return fmt.Errorf("verify %s: the ledger comparison did not run or did not match (log: %s)", lr.runID, filepath.Join(logs, id+".log"))
		}
		t.addRun("ledger/verify/"+lr.ds.Name, &Row{Section: "ledger", What: fmt.Sprintf("rekey verify, %s records (ledger %d rows)", recordsName(int(lr.records)), lr.ledger),
			Cell: ledgerCell, Workers: c.Workers, Runner: "direct", Unit: "records/s", DEKs: int64(lr.ds.NumDEKs)},
			float64(lr.records)/cr.Wall.Seconds(), float64(lr.records)/cr.Wall.Seconds(), cr)

		id = fmt.Sprintf("%s-ledger-r%d", lr.runID, rep)
		cr, err = runChild(ctx, c.Rekey, []string{"ledger", "--ledger", filepath.Join(lr.out, "ledger"), "--run-id", lr.runID, "--limit", "5"},
			filepath.Join(logs, id+".log"))
		if err != nil {
			return err
		}
		if !strings.Contains(cr.Stdout, "5 of ") {
			return fmt.Errorf("rekey ledger --limit 5 on %s printed no 5 rows (log: %s)", lr.runID, filepath.Join(logs, id+".log"))
		}
		t.addRun("ledger/ledger/"+lr.ds.Name, &Row{Section: "ledger", What: fmt.Sprintf("rekey ledger --limit 5, %s records (ledger %d rows)", recordsName(int(lr.records)), lr.ledger),
			Runner: "-", Unit: "rows/s", DEKs: int64(lr.ds.NumDEKs)},
			float64(lr.ledger)/cr.Wall.Seconds(), 0, cr)
	}
	return nil
}

// ledgerSummary says how each command's peak RSS changes from the
// smallest to the largest run: flat means streaming.
func ledgerSummary(t *table, runs []*ledgerRun) []string {
	if len(runs) < 2 {
		return nil
	}
	a, b := runs[0], runs[len(runs)-1]
	var out []string
	for _, cmd := range []string{"verify", "ledger"} {
		ra, rb := t.byKey["ledger/"+cmd+"/"+a.ds.Name], t.byKey["ledger/"+cmd+"/"+b.ds.Name]
		if ra == nil || rb == nil || ra.PeakRSSMiB == 0 {
			continue
		}
		out = append(out, fmt.Sprintf("rekey %s: peak RSS %.0f MiB at %s records, %.0f MiB at %s (x%.2f for x%.1f records; goal: flat, it does not grow with records)",
			cmd, ra.PeakRSSMiB, recordsName(int(a.records)), rb.PeakRSSMiB, recordsName(int(b.records)), rb.PeakRSSMiB/ra.PeakRSSMiB, float64(b.records)/float64(a.records)))
	}
	return out
}

// recordsName is 1000000 -> "1M", 250000 -> "250k".
func recordsName(n int) string {
	switch {
	case n >= 1000000 && n%1000000 == 0:
		return strconv.Itoa(n/1000000) + "M"
	case n >= 1000 && n%1000 == 0:
		return strconv.Itoa(n/1000) + "k"
	}
	return strconv.Itoa(n)
}

func readManifestFile(path string) (*schemas.Manifest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m schemas.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return &m, nil
}
