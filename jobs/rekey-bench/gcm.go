package main

import (
	"context"
	"fmt"
	"path/filepath"

	"rekey/schemas"
)

func keyGCMRe(cell int, runner string) string {
	return fmt.Sprintf("aes-gcm/reencrypt/%d/%s", cell, runner)
}
func keyGCMRw(name, runner string) string { return fmt.Sprintf("aes-gcm/rewrap/%s/%s", name, runner) }
func keyGCMPQ(name string, g int) string  { return fmt.Sprintf("aes-gcm/parquet/%s/g%d", name, g) }

// gcmRuns is one repetition of the aes-gcm section, at the default
// workers (N) on every runner:
//
//   - reencrypt of each aes-gcm keys: table dataset to rekey-v1 (base64
//     text cells become binary rekey-v1 cells), against the rekey-v1
//     reencrypt of the same shape (peer) and the composed bound (limit);
//   - rewrap of the keys: column dataset with one key per record: one
//     unwrap+wrap+verify per record, against the rekey-v1 rewrap's DEKs/s
//     (peer) and the HSM limit;
//   - rewrap of the keys: column dataset with shared keys: a Parquet copy
//     with one column changed, against a Parquet copy of the same files
//     measured here (limit).
func gcmRuns(ctx context.Context, c *config, t *table, rep int, re []*dataset, colKeys, colShared *dataset, scratch, logs string) error {
	N := c.Workers
	if colShared != nil {
		r, err := parquetCopyRate(colShared, filepath.Join(scratch, "pqcopy"), N, true)
		if err != nil {
			return fmt.Errorf("Parquet limit (%s): %w", colShared.Name, err)
		}
		t.add(keyGCMPQ(colShared.Name, N), &Row{Section: "aes-gcm", What: "limit: Parquet copy of the keys: column data", Cell: colShared.Cell, Workers: N, Unit: "MB/s"},
			r/1e6, r/float64(colShared.Cell))
	}
	for _, ds := range re {
		for _, runner := range c.Runners {
			id := fmt.Sprintf("gcm-re-%d-%s-r%d", ds.Cell, runner, rep)
			cr, m, err := runRekey(ctx, c.Rekey, ds, rekeyRun{Mode: schemas.ModeReencrypt, Runner: runner, TargetWrap: c.TargetWrap}, scratch, logs, id)
			if err != nil {
				return err
			}
			if m.Totals.RecordsMigrated != ds.records() {
				return fmt.Errorf("run %s: %d records migrated, want %d", id, m.Totals.RecordsMigrated, ds.records())
			}
			secs := cr.Pipeline.Seconds()
			row := &Row{Section: "aes-gcm", What: "reencrypt aes-gcm (keys: table) -> rekey-v1", Cell: ds.Cell, Workers: N, Runner: runner, Unit: "MB/s",
				DEKs: m.Totals.DEKs, HSMOps: 4 * m.Totals.DEKs, HSMOpsNote: "estimate (plan): 4 per DEK",
				LimitKey: keyBound(ds.Cell, N), PeerKey: keyRe(ds.Cell, runner, N)}
			t.addRun(keyGCMRe(ds.Cell, runner), row, float64(ds.payloadBytes())/secs/1e6, float64(ds.records())/secs, cr)
		}
	}
	for _, ds := range []*dataset{colKeys, colShared} {
		if ds == nil {
			continue
		}
		perRecord := ds.NumDEKs == ds.Files*ds.Records
		for _, runner := range c.Runners {
			id := fmt.Sprintf("gcm-rw-%s-%s-r%d", ds.Name, runner, rep)
			cr, m, err := runRekey(ctx, c.Rekey, ds, rekeyRun{Mode: schemas.ModeRewrap, Runner: runner, TargetWrap: c.TargetWrap}, scratch, logs, id)
			if err != nil {
				return err
			}
			if m.Totals.RecordsMigrated != ds.records() {
				return fmt.Errorf("run %s: %d records migrated, want %d", id, m.Totals.RecordsMigrated, ds.records())
			}
			secs := cr.Pipeline.Seconds()
			// Distinct keys are resolved per file: a key shared by every
			// file is rewrapped once per file.
			rewraps := int64(ds.NumDEKs)
			if !perRecord {
				rewraps = int64(min(ds.NumDEKs, ds.Records) * ds.Files)
			}
			row := &Row{Section: "aes-gcm", Cell: ds.Cell, Workers: N, Runner: runner, DEKs: rewraps,
				HSMOps: 3 * rewraps, HSMOpsNote: "estimate: unwrap + wrap + verify-unwrap per distinct key per file"}
			if perRecord {
				row.What, row.Unit = "rewrap aes-gcm keys: column, 1 key/record", "DEKs/s"
				row.LimitKey, row.PeerKey = keyHSM(N, true), keyRw(runner, N)
				t.addRun(keyGCMRw(ds.Name, runner), row, float64(rewraps)/secs, float64(ds.records())/secs, cr)
			} else {
				row.What, row.Unit = fmt.Sprintf("rewrap aes-gcm keys: column, %d keys", ds.NumDEKs), "MB/s"
				row.LimitKey = keyGCMPQ(ds.Name, N)
				t.addRun(keyGCMRw(ds.Name, runner), row, float64(ds.payloadBytes())/secs/1e6, float64(ds.records())/secs, cr)
			}
		}
	}
	return nil
}
