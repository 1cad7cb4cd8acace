package pipeline_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/parquet-go/parquet-go"

	"rekey/pipeline"
	"rekey/schemas"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

// TestIncrementalRun is a scheduled re-encrypt: a second run over the same
// source and target redoes only the file that changed, skips the others
// with one ledger row each, and the target (all runs' DEKs together) still
// decrypts completely and reflects the change.
func TestIncrementalRun(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 3, 30, 4)
	first := d.job(schemas.ModeReencrypt, "day1", env.KEK("target", "kek-aes"), "aes-gcm")
	first.Incremental = true
	if m := runJob(t, first); m.Totals.RecordsMigrated != 90 {
		t.Fatalf("first run: %+v", m.Totals)
	}
	// A day later one source file changes (a non-encrypted column).
	rewriteRecords(t, filepath.Join(d.gen.Data, "part-00001.parquet"), func(r []transforms.GenRow) []transforms.GenRow {
		for i := range r {
			r[i].Tenant = "moved-tenant"
		}
		return r
	})
	second := d.job(schemas.ModeReencrypt, "day2", env.KEK("target", "kek-aes"), "aes-gcm")
	second.Target = first.Target
	second.Incremental = true
	m := runJob(t, second)
	if m.Totals.RecordsMigrated != 30 || m.Totals.FilesSkipped != 2 || m.Totals.Failed != 0 {
		t.Fatalf("second run should redo 1 file and skip 2: %+v", m.Totals)
	}
	rows, err := ledger.Read(context.Background(), second.Ledger, second.RunID)
	if err != nil {
		t.Fatal(err)
	}
	skipped := 0
	for _, r := range rows {
		if r.Unit == schemas.UnitFile && r.Status == schemas.StatusSkipped {
			skipped++
			if r.Checksum == "" || r.Error == "" {
				t.Fatalf("skipped row without fingerprint or reason: %+v", r)
			}
		}
	}
	if skipped != 2 {
		t.Fatalf("%d skipped file rows, want 2", skipped)
	}
	// Every record decrypts with the union of both runs' DEKs, and the
	// changed file's records carry the change.
	dst := decryptAll(t, first.Target.Data, first.Target.DEKs, first.Target.KEK, d.gen.Encrypted)
	src := decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, d.gen.Encrypted)
	checkSameRecords(t, d, src, dst, true)
	changed := 0
	for _, r := range dst {
		if r.Tenant == "moved-tenant" {
			changed++
		}
	}
	if changed != 30 {
		t.Fatalf("%d records carry the change, want 30", changed)
	}
	// A third run with nothing changed does nothing but skip.
	third := d.job(schemas.ModeReencrypt, "day3", env.KEK("target", "kek-aes"), "aes-gcm")
	third.Target = first.Target
	third.Incremental = true
	if m := runJob(t, third); m.Totals.RecordsMigrated != 0 || m.Totals.FilesSkipped != 3 {
		t.Fatalf("third run: %+v", m.Totals)
	}
	// Towards another target key, nothing is "unchanged".
	fourth := d.job(schemas.ModeReencrypt, "day4", env.KEK("target", "kek-rsa"), "rsa-oaep-sha1")
	fourth.Target.Data, fourth.Target.DEKs = first.Target.Data, first.Target.DEKs
	fourth.Incremental = true
	if m := runJob(t, fourth); m.Totals.RecordsMigrated != 90 || m.Totals.FilesSkipped != 0 {
		t.Fatalf("fourth run (new target key): %+v", m.Totals)
	}
}

// TestIncrementalRedoesPartialFiles: a file whose output left failed records
// out is not "unchanged" for the next incremental run, even if its source
// did not change (the cause may have been fixed elsewhere, e.g. a DEK).
func TestIncrementalRedoesPartialFiles(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 2, 20, 3)
	rewriteRecords(t, filepath.Join(d.gen.Data, "part-00000.parquet"), func(r []transforms.GenRow) []transforms.GenRow {
		r[0].Payload[20] ^= 1
		return r
	})
	first := d.job(schemas.ModeReencrypt, "p1", env.KEK("target", "kek-aes"), "aes-gcm")
	first.Incremental = true
	if m := runJob(t, first); m.Totals.RecordsFailed != 1 {
		t.Fatalf("first run: %+v", m.Totals)
	}
	second := d.job(schemas.ModeReencrypt, "p2", env.KEK("target", "kek-aes"), "aes-gcm")
	second.Target = first.Target
	second.Incremental = true
	m := runJob(t, second)
	if m.Totals.FilesSkipped != 1 || m.Totals.Records != 20 {
		t.Fatalf("the partial file must be redone and the complete one skipped: %+v", m.Totals)
	}
}

// TestExactDuplicateDEKRowIsSkipped: the same DEK row twice in one file
// gets one fresh DEK, not two conflicting ones.
func TestExactDuplicateDEKRowIsSkipped(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 1, 20, 3)
	src := decryptAll(t, d.gen.Data, d.gen.DEKs, d.gen.KEK, d.gen.Encrypted)
	dekFile := filepath.Join(d.gen.DEKs, "part-00000.parquet")
	deks, err := parquet.ReadFile[schemas.DEKRow](dekFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := parquet.WriteFile(dekFile, append(deks, deks[1])); err != nil {
		t.Fatal(err)
	}
	j := d.job(schemas.ModeReencrypt, "dup", env.KEK("target", "kek-aes"), "aes-gcm")
	if r := pipeline.Plan(context.Background(), j, true); r.Failed() {
		t.Fatalf("an exact duplicate in one file should be tolerated: %+v", r.Checks)
	}
	m := runJob(t, j)
	if m.Totals.DEKsMigrated != 3 || m.Totals.DEKsSkipped != 1 || m.Totals.RecordsMigrated != 20 {
		t.Fatalf("%+v", m.Totals)
	}
	// decryptAll fails on a dek_id twice in the target table.
	checkSameRecords(t, d, src, decryptAll(t, j.Target.Data, j.Target.DEKs, j.Target.KEK, d.gen.Encrypted), true)
}
