package ledger_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/parquet-go/parquet-go"

	_ "rekey/providers/local"
	"rekey/schemas"
	"rekey/transforms/ledger"
)

// oldRow is a ledger row as written before the proof and path columns.
type oldRow struct {
	RunID  string    `parquet:"run_id"`
	Mode   string    `parquet:"mode"`
	Unit   string    `parquet:"unit"`
	Source string    `parquet:"source"`
	DEKID  string    `parquet:"dek_id,optional"`
	Status string    `parquet:"status"`
	Bytes  int64     `parquet:"bytes"`
	At     time.Time `parquet:"at,timestamp(microsecond)"`
}

// TestScanLastAttemptsAndOldParts: Read keeps each unit's last attempt,
// ReadHistory every row; Scan hands rows over in batches (a part larger
// than one batch comes in several calls); a part written before the
// optional columns existed reads with them empty.
func TestScanLastAttemptsAndOldParts(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	row := func(unit, status string) schemas.LedgerRow {
		return schemas.LedgerRow{RunID: "r1", Mode: schemas.ModeRewrap, Unit: unit, Source: "s", Status: status, At: time.Unix(1, 0).UTC(), Path: schemas.PathRekey}
	}
	part := ledger.PartPath(root, "r1", "deks", "a/b.parquet")
	if err := ledger.WritePart(ctx, part, []schemas.LedgerRow{row("dek", schemas.StatusFailed)}); err != nil {
		t.Fatal(err)
	}
	if err := ledger.WritePart(ctx, ledger.AttemptPart(part, 2), []schemas.LedgerRow{row("dek", schemas.StatusMigrated)}); err != nil {
		t.Fatal(err)
	}
	big := make([]schemas.LedgerRow, 10000)
	for i := range big {
		big[i] = row("record", schemas.StatusMigrated)
	}
	if err := ledger.WritePart(ctx, ledger.PartPath(root, "r1", "data", "c.parquet"), big); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(ledger.RunDir(root, "r1"), "part-keys-old.parquet")
	f, err := os.Create(old)
	if err != nil {
		t.Fatal(err)
	}
	if err := parquet.Write(f, []oldRow{{RunID: "r1", Mode: "rewrap", Unit: "key", Source: "x", Status: "migrated", At: time.Unix(1, 0).UTC()}}); err != nil {
		t.Fatal(err)
	}
	f.Close()

	rows, err := ledger.Read(ctx, root, "r1")
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, r := range rows {
		count[r.Unit+"/"+r.Status+"/"+r.Path]++
	}
	if len(rows) != 10002 || count["dek/migrated/rekey"] != 1 || count["dek/failed/rekey"] != 0 || count["key/migrated/"] != 1 {
		t.Errorf("Read: %d rows, %v", len(rows), count)
	}
	hist, err := ledger.ReadHistory(ctx, root, "r1")
	if err != nil || len(hist) != 10003 {
		t.Errorf("ReadHistory: %d rows, %v", len(hist), err)
	}
	calls, most := 0, 0
	if err := ledger.Scan(ctx, root, "r1", false, func(rows []schemas.LedgerRow) error {
		calls++
		most = max(most, len(rows))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if calls < 4 || most > 4096 {
		t.Errorf("Scan: %d calls, largest batch %d; want batches of at most 4096", calls, most)
	}
	if _, err := ledger.ReadManifest(ctx, root, "r1"); err == nil {
		t.Errorf("ReadManifest of a run without one: no error")
	}
}
