package pipeline_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

// nullIDRow is transforms.GenRow with a nullable record id, as another
// writer may have made the file.
type nullIDRow struct {
	ID      *int64    `parquet:"id,optional"`
	DEKID   string    `parquet:"dek_id"`
	Tenant  string    `parquet:"tenant"`
	Amount  float64   `parquet:"amount"`
	Payload []byte    `parquet:"payload"`
	Note    []byte    `parquet:"note,optional"`
	Created time.Time `parquet:"created,timestamp(microsecond)"`
}

// TestNullRecordIDIsFoundByRow (issue 15 item 11): a record whose id is
// NULL cannot be named by its id, so its failed ledger row says which row
// of which file it is.
func TestNullRecordIDIsFoundByRow(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 1, 30, 3)
	f0 := filepath.Join(d.gen.Data, "part-00000.parquet")
	rows, err := parquet.ReadFile[transforms.GenRow](f0)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]nullIDRow, len(rows))
	for i, r := range rows {
		id := r.ID
		out[i] = nullIDRow{ID: &id, DEKID: r.DEKID, Tenant: r.Tenant, Amount: r.Amount, Payload: r.Payload, Note: r.Note, Created: r.Created}
	}
	out[17].ID = nil
	if err := os.Remove(f0); err != nil {
		t.Fatal(err)
	}
	if err := parquet.WriteFile(f0, out); err != nil {
		t.Fatal(err)
	}
	j := d.job(schemas.ModeReencrypt, "n1", env.KEK("target", "kek-aes"), "aes-gcm")
	runJob(t, j)
	led, err := ledger.Read(context.Background(), j.Ledger, j.RunID)
	if err != nil {
		t.Fatal(err)
	}
	var failed []schemas.LedgerRow
	for _, r := range led {
		if r.Unit == schemas.UnitRecord && r.Status == schemas.StatusFailed {
			failed = append(failed, r)
		}
	}
	if len(failed) != 1 || failed[0].RecordID != "" || !strings.Contains(failed[0].Error, "row 17 of") || failed[0].Source != f0 {
		t.Fatalf("failed record rows: %+v; want one, naming row 17 of %s", failed, f0)
	}
}

// nullIDAppRow is the foreign tests' nullableRow with a nullable id.
type nullIDAppRow struct {
	ID         *int64  `parquet:"id,optional"`
	Tenant     string  `parquet:"tenant"`
	Email      string  `parquet:"email"`
	WrappedKey *string `parquet:"wrapped_key,optional"`
}

// TestNullRecordIDInAKeyColumnDataset (issue 15 item 11): the same for
// data whose wrapped keys are in a column (aes-gcm, keys: column), in a
// rewrap of that column and in a reencrypt to rekey-v1.
func TestNullRecordIDInAKeyColumnDataset(t *testing.T) {
	kek, err := keys.Open(context.Background(), env.KEK("source", "kek-aes"), keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ds := writeBadDataset(t, kek, nil)
	f0 := filepath.Join(ds.dir, "part-0.parquet")
	rows, err := parquet.ReadFile[nullableRow](f0)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]nullIDAppRow, len(rows))
	for i, r := range rows {
		id := r.ID
		out[i] = nullIDAppRow{ID: &id, Tenant: r.Tenant, Email: r.Email, WrappedKey: r.WrappedKey}
	}
	out[5].ID = nil
	if err := os.Remove(f0); err != nil {
		t.Fatal(err)
	}
	if err := parquet.WriteFile(f0, out); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{schemas.ModeRewrap, schemas.ModeReencrypt} {
		t.Run(mode, func(t *testing.T) {
			j := badJob(t, mode, "null-id-"+mode, ds, badAppOpts)
			runJob(t, j)
			failed, migrated := ledgerOf(t, j)
			if len(failed) != 1 || failed[0].RecordID != "" || !strings.Contains(failed[0].Error, "row 5 of") || failed[0].Source != f0 || len(migrated) == 0 {
				t.Fatalf("failed rows %+v (%d migrated); want one, naming row 5 of %s", failed, len(migrated), f0)
			}
		})
	}
}
