package pipeline_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"

	"rekey/pipeline"
	"rekey/schemas"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

func rewriteRecords(t *testing.T, path string, edit func([]transforms.GenRow) []transforms.GenRow) {
	t.Helper()
	rows, err := parquet.ReadFile[transforms.GenRow](path)
	if err != nil {
		t.Fatal(err)
	}
	if err := parquet.WriteFile(path, edit(rows)); err != nil {
		t.Fatal(err)
	}
}

func hashTree(t *testing.T, root string) string {
	t.Helper()
	h := sha256.New()
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := os.ReadFile(p)
		fmt.Fprintf(h, "%s %d\n", p, len(b))
		h.Write(b)
		return nil
	})
	return fmt.Sprintf("%x", h.Sum(nil))
}

// TestBadInputBecomesFailedRows corrupts a dataset in every way a record or
// file can be bad and checks that each bad record becomes exactly one failed
// ledger row with a reason, is absent from the target, and that every other
// record is migrated and decrypts; the source is not modified.
func TestBadInputBecomesFailedRows(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 4, 60, 5)
	f0 := filepath.Join(d.gen.Data, "part-00000.parquet")
	// Records of file 0 are ids 0..59; DEK of id i is dek-(i%5).
	rewriteRecords(t, f0, func(r []transforms.GenRow) []transforms.GenRow {
		r[1].Payload[20] ^= 0x01                                // flipped bit
		r[2].Payload, r[3].Payload = r[3].Payload, r[2].Payload // swapped between rows
		r[4].DEKID = "dek-unknown"                              // unknown DEK
		r[6].DEKID = "dek-0000002"                              // cell claims another DEK (was dek-1)
		r[7].Payload = make([]byte, 5000)                       // oversized cell (limit set below)
		r[8].Payload = r[8].Payload[:10]                        // truncated cell
		return r
	})
	// File 1 is truncated, file 2 is not Parquet at all.
	f1 := filepath.Join(d.gen.Data, "part-00001.parquet")
	b, _ := os.ReadFile(f1)
	if err := os.WriteFile(f1, b[:len(b)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.gen.Data, "part-00002.parquet"), []byte("id,payload\n1,abc\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// One DEK row claims another KEK: its records cannot be migrated.
	dekFile := filepath.Join(d.gen.DEKs, "part-00000.parquet")
	deks, err := parquet.ReadFile[schemas.DEKRow](dekFile)
	if err != nil {
		t.Fatal(err)
	}
	deks[3].KEK = "pkcs11:token=source;object=kek-other"
	if err := parquet.WriteFile(dekFile, deks); err != nil {
		t.Fatal(err)
	}
	before := hashTree(t, filepath.Join(d.root, "src"))

	j := d.job(schemas.ModeReencrypt, "bad1", env.KEK("target", "kek-aes"), "aes-gcm")
	j.MaxCell = 4096
	m := runJob(t, j)

	if after := hashTree(t, filepath.Join(d.root, "src")); after != before {
		t.Fatal("the source dataset or DEK table was modified")
	}
	rows, err := ledger.Read(context.Background(), j.Ledger, j.RunID)
	if err != nil {
		t.Fatal(err)
	}
	failed := map[string]string{} // record id or file -> error
	for _, r := range rows {
		if r.Status != schemas.StatusFailed {
			continue
		}
		if r.Error == "" {
			t.Fatalf("failed row without a reason: %+v", r)
		}
		key := r.Unit + ":" + r.RecordID
		if r.Unit == schemas.UnitFile || r.Unit == schemas.UnitDEK {
			key = r.Unit + ":" + filepath.Base(r.Source) + ":" + r.DEKID
		}
		if _, dup := failed[key]; dup {
			t.Fatalf("two failed rows for %s", key)
		}
		failed[key] = r.Error
	}
	want := map[string]string{
		"record:1": "failed authentication", "record:2": "failed authentication", "record:3": "failed authentication",
		"record:4": "not in the source DEK table", "record:6": "failed authentication", "record:7": "over the 4096-byte limit",
		"record:8":                 "too short",
		"file:part-00001.parquet:": "not a readable Parquet file", "file:part-00002.parquet:": "not a readable Parquet file",
		"dek:part-00000.parquet:dek-0000003": "not by the configured source KEK",
	}
	// Every record of the foreign-KEK DEK (ids = 3 mod 5) in the readable
	// files 0 and 3 fails too; the DEK is checked before the cells, so ids 3
	// and 8 fail for their DEK, not for their own corruption.
	for _, id := range []int{13, 18, 23, 28, 33, 38, 43, 48, 53, 58, 183, 188, 193, 198, 203, 208, 213, 218, 223, 228, 233, 238} {
		want[fmt.Sprintf("record:%d", id)] = "could not be migrated"
	}
	want["record:3"] = "could not be migrated"
	want["record:8"] = "could not be migrated"
	for k, sub := range want {
		got, ok := failed[k]
		if !ok {
			t.Errorf("no failed row for %s (failed: %d rows)", k, len(failed))
			continue
		}
		if !strings.Contains(got, sub) {
			t.Errorf("%s failed with %q, want it to say %q", k, got, sub)
		}
	}
	if len(failed) != len(want) {
		t.Errorf("%d failed rows, want %d: %v", len(failed), len(want), failed)
	}
	// Readable files: 0 and 3, 60 records each; the failed ones are absent
	// from the target and everything else is there and decrypts.
	dst := decryptAll(t, j.Target.Data, j.Target.DEKs, j.Target.KEK, d.gen.Encrypted)
	recordFailures := 0
	for k := range failed {
		if strings.HasPrefix(k, "record:") {
			recordFailures++
			var id int64
			fmt.Sscanf(k, "record:%d", &id)
			if _, present := dst[id]; present {
				t.Errorf("failed record %d is in the target", id)
			}
		}
	}
	if len(dst) != 120-recordFailures || m.Totals.RecordsMigrated != int64(len(dst)) || m.Totals.RecordsFailed != int64(recordFailures) {
		t.Fatalf("target has %d records, manifest says %d migrated / %d failed; want %d", len(dst), m.Totals.RecordsMigrated, m.Totals.RecordsFailed, 120-recordFailures)
	}
	if m.Status != "completed_with_failures" || m.Totals.FilesFailed != 2 || m.Totals.DEKsFailed != 1 {
		t.Fatalf("manifest %s %+v", m.Status, m.Totals)
	}
	for id, r := range dst {
		if want := transforms.GenPlaintext(&d.gen, "payload", id); string(want) != string(r.Payload) {
			t.Fatalf("record %d decrypts to the wrong plaintext", id)
		}
	}
	if _, err := os.Stat(filepath.Join(j.Target.Data, "part-00001.parquet")); !os.IsNotExist(err) {
		t.Fatal("a target file was written for an unreadable source file")
	}
}

func TestEmptyDataset(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 0, 0, 3)
	if err := os.MkdirAll(d.gen.Data, 0o755); err != nil {
		t.Fatal(err)
	}
	j := d.job(schemas.ModeReencrypt, "empty", env.KEK("target", "kek-aes"), "")
	m := runJob(t, j)
	if m.Status != "succeeded" || m.Totals.Records != 0 || m.Totals.DEKsMigrated != 3 {
		t.Fatalf("%s %+v", m.Status, m.Totals)
	}
}

// TestPlanCatchesBadSetups checks the preflight: each bad setup fails
// plan with a message naming the problem, before anything is touched.
func TestPlanCatchesBadSetups(t *testing.T) {
	ctx := context.Background()
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 1, 10, 3)
	base := d.job(schemas.ModeReencrypt, "plan1", env.KEK("target", "kek-aes"), "")
	if r := pipeline.Plan(ctx, base, true); r.Failed() {
		t.Fatalf("good job fails plan: %+v", r.Checks)
	}
	for _, tc := range []struct {
		name, want string
		edit       func(j *pipeline.Job)
	}{
		// A wrong PIN is tested from a fresh process in jobs/rekey: within
		// one process PKCS#11 login state is shared, so the token would
		// answer CKR_USER_ALREADY_LOGGED_IN.
		{"missing pin", "REKEY_NO_SUCH_PIN is not set", func(j *pipeline.Job) {
			j.Target.KEK = strings.Replace(j.Target.KEK, "REKEY_TARGET_PIN", "REKEY_NO_SUCH_PIN", 1)
		}},
		{"missing token", "token not found", func(j *pipeline.Job) {
			j.Target.KEK = strings.Replace(j.Target.KEK, "token=target", "token=nosuch", 1)
		}},
		{"missing key", "key not found", func(j *pipeline.Job) {
			j.Source.KEK = strings.Replace(j.Source.KEK, "kek-aes", "kek-missing", 1)
		}},
		{"key without decrypt", "CKA_DECRYPT", func(j *pipeline.Job) {
			j.Source.KEK = strings.Replace(j.Source.KEK, "kek-aes", "kek-nodecrypt", 1)
		}},
		{"wrong source key", "none of the 3 DEKs is wrapped by source.kek", func(j *pipeline.Job) {
			j.Source.KEK = strings.Replace(j.Source.KEK, "kek-aes", "kek-other", 1)
		}},
		{"ledger exists", "already finished", func(j *pipeline.Job) {
			runJob(t, d.job(schemas.ModeReencrypt, "plan-done", env.KEK("target", "kek-aes"), ""))
			j.RunID = "plan-done"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			j := d.job(schemas.ModeReencrypt, "plan1", env.KEK("target", "kek-aes"), "")
			tc.edit(j)
			r := pipeline.Plan(ctx, j, true)
			var msgs []string
			for _, c := range r.Checks {
				if !c.OK {
					msgs = append(msgs, c.Name+": "+c.Info)
				}
			}
			all := strings.Join(msgs, "\n")
			if !r.Failed() || !strings.Contains(all, tc.want) {
				t.Fatalf("plan did not fail with %q:\n%s", tc.want, all)
			}
			if strings.Contains(all, "src-pin-1234") || strings.Contains(all, "dst-pin-5678") {
				t.Fatal("a PIN appears in a message")
			}
		})
	}
}

func TestPlanRefusesConflictingDuplicateDEKs(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 1, 10, 3)
	dekFile := filepath.Join(d.gen.DEKs, "part-00000.parquet")
	deks, _ := parquet.ReadFile[schemas.DEKRow](dekFile)
	dup := deks[0]
	dup.Wrapped = deks[1].Wrapped
	if err := parquet.WriteFile(filepath.Join(d.gen.DEKs, "part-00001.parquet"), []schemas.DEKRow{dup}); err != nil {
		t.Fatal(err)
	}
	r := pipeline.Plan(context.Background(), d.job(schemas.ModeReencrypt, "dup", env.KEK("target", "kek-aes"), ""), true)
	if !r.Failed() || len(r.DuplicateID) != 1 || r.DuplicateID[0] != deks[0].DEKID {
		t.Fatalf("duplicates not refused: %+v", r.Checks)
	}
}
