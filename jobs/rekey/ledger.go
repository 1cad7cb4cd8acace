package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"rekey/schemas"
	"rekey/transforms/ledger"
)

func cmdLedger(args []string, stdout, stderr io.Writer) error {
	var root, runID, status, unit string
	var limit int
	defString(&root, "ledger", "", "ledger folder (required)")
	defString(&runID, "run-id", "", "run to show (required)")
	defString(&status, "status", "", "only rows with this status: migrated, skipped, failed")
	defString(&unit, "unit", "", "only rows of this unit: dek, record, file, key")
	defInt(&limit, "limit", 20, "rows to print (0: all)")
	var history bool
	defBool(&history, "history", false, "also the rows of earlier attempts of units a --resume tried again (default: each unit's last attempt, the one that counts)")
	if _, err := parseFlags("ledger", "Prints the ledger rows of a run (for SQL, point DuckDB or Spark at the Parquet files:\nSELECT status, count(*) FROM read_parquet('LEDGER/run_id=ID/*.parquet') GROUP BY 1;\nafter a --resume that retried units, part-X.attempt-N.parquet supersedes part-X.parquet: see docs/FORMAT.md).", args, stdout); err != nil {
		return err
	}
	if root == "" || runID == "" {
		return withCode(exitUsage, errors.New("--ledger and --run-id are required"))
	}
	ctx, cancel := signalContext()
	defer cancel()
	// Streamed: memory stays at one batch of rows whatever the ledger's
	// size; the counts need the whole ledger read, the rows printed do not.
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "unit\tstatus\tsource\trecord_id\tdek_id\tnew_dek_id\ttarget_kek\tbytes\tchecksum\tpath\terror")
	n, matched, total := 0, 0, 0
	err := ledger.Scan(ctx, root, runID, history, func(rows []schemas.LedgerRow) error {
		for i := range rows {
			r := &rows[i]
			total++
			if (status != "" && r.Status != status) || (unit != "" && r.Unit != unit) {
				continue
			}
			matched++
			if limit > 0 && n >= limit {
				continue
			}
			n++
			sum := r.Checksum
			if len(sum) > 16 {
				sum = sum[:16] + "…"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", r.Unit, r.Status, r.Source, r.RecordID, r.DEKID, r.NewDEKID, r.TargetKEK, r.Bytes, sum, r.Path, strings.ReplaceAll(r.Error, "\n", " "))
		}
		return nil
	})
	if err != nil {
		return withCode(exitFatal, err)
	}
	tw.Flush()
	fmt.Fprintf(stdout, "(%d of %d matching rows shown; %d rows in run %s)\n", n, matched, total, runID)
	return nil
}
