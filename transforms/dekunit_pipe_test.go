package transforms

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"rekey/schemas"
	"rekey/schemas/format"
	"rekey/transforms/ledger"
)

// pipeUnit writes a DEK table file of n rows (row 5 repeats row 4, row 7
// conflicts with row 2) and opens a unit on it whose batches are 3 rows.
func pipeUnit(t *testing.T, n int) (*dekTable, []schemas.DEKRow) {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	spec := &Spec{RunID: "r1", Mode: schemas.ModeRewrap, SourceDEKs: filepath.Join(dir, "src"), TargetDEKs: filepath.Join(dir, "dst"),
		Ledger: filepath.Join(dir, "ledger"), RowBatch: 3, Workers: 1}
	rows := make([]schemas.DEKRow, n)
	for i := range rows {
		rows[i] = schemas.DEKRow{DEKID: fmt.Sprintf("dek-%03d", i), KEK: "test:src", Wrap: schemas.WrapAESGCM, Wrapped: []byte(fmt.Sprint("wrapped-", i))}
	}
	rows[5] = rows[4]
	rows[7].DEKID = rows[2].DEKID
	src := filepath.Join(spec.SourceDEKs, "part-0.parquet")
	w, err := createRows[schemas.DEKRow](ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.write(rows); err != nil {
		t.Fatal(err)
	}
	if err := w.commit(); err != nil {
		t.Fatal(err)
	}
	u, err := openDEKTable(ctx, spec, DEKLayout{}, format.Table{}, false, src, filepath.Join(spec.TargetDEKs, "part-0.parquet"), spec.LedgerPart("deks", "part-0.parquet"), "test:dst", "")
	if err != nil {
		t.Fatal(err)
	}
	return u, rows
}

// TestDEKTablePipeKeepsOrder: with the reading, deciding and writing of
// batches overlapped, the target file and the ledger part hold the rows in
// the source's order, each batch is decided once and in order, and the
// index's repeats and conflicts reach decide.
func TestDEKTablePipeKeepsOrder(t *testing.T) {
	ctx := context.Background()
	u, rows := pipeUnit(t, 20)
	var batches []int
	failed, err := u.run(ctx, func(UnitResult) {}, func(b *dekBatch) { batches = append(batches, len(b.rows)) }, func(b *dekBatch, i int) error {
		r, l := &b.rows[i], &b.led[i]
		l.At = now()
		if b.dup[i] != schemas.DEKIDNew {
			l.Status, l.Error = schemas.StatusSkipped, b.dup[i].Err(r.DEKID).Error()
			return nil
		}
		w := append([]byte("new-"), r.Wrapped...)
		b.out[i] = schemas.DEKRow{DEKID: r.DEKID, KEK: "test:dst", Wrap: r.Wrap, Wrapped: w}
		return decided(l, w, nil)
	}, nil)
	if err != nil || failed {
		t.Fatalf("run: failed %v, %v", failed, err)
	}
	if fmt.Sprint(batches) != "[3 3 3 3 3 3 2]" {
		t.Fatalf("batches %v", batches)
	}
	got, err := ReadDEKTable(ctx, u.spec.TargetDEKs)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i, r := range rows {
		if i != 5 && i != 7 {
			want = append(want, r.DEKID+" new-"+string(r.Wrapped))
		}
	}
	var have []string
	for _, r := range got {
		have = append(have, r.DEKID+" "+string(r.Wrapped))
	}
	if fmt.Sprint(have) != fmt.Sprint(want) {
		t.Fatalf("target rows\n got %v\nwant %v", have, want)
	}
	led, err := ledger.ReadPart(ctx, u.part)
	if err != nil {
		t.Fatal(err)
	}
	if len(led) != len(rows) {
		t.Fatalf("%d ledger rows, want %d", len(led), len(rows))
	}
	for i, l := range led {
		if l.DEKID != rows[i].DEKID {
			t.Fatalf("ledger row %d is %q, want %q", i, l.DEKID, rows[i].DEKID)
		}
	}
	if led[5].Status != schemas.StatusSkipped || led[7].Status != schemas.StatusSkipped || led[6].Status != schemas.StatusMigrated {
		t.Fatalf("statuses %v %v %v", led[5].Status, led[6].Status, led[7].Status)
	}
	if u.res.Totals.DEKsMigrated != 18 {
		t.Fatalf("result %+v", u.res.Totals)
	}
}

// TestDEKTablePipeStops: an error that stops the run in batch k stops the
// unit there: later batches are not decided and nothing is committed.
func TestDEKTablePipeStops(t *testing.T) {
	ctx := context.Background()
	u, _ := pipeUnit(t, 30)
	stop := fmt.Errorf("test: %w", ErrInterrupted)
	if !stops(stop) {
		t.Fatal("the test's error does not stop a run")
	}
	var decided atomic.Int32
	_, err := u.run(ctx, func(UnitResult) {}, nil, func(b *dekBatch, i int) error {
		decided.Add(1)
		if b.rows[i].DEKID == "dek-010" {
			return stop
		}
		b.led[i].Status = schemas.StatusMigrated
		return nil
	}, nil)
	if !errors.Is(err, stop) {
		t.Fatalf("run: %v, want %v", err, stop)
	}
	if n := decided.Load(); n != 12 { // batches of 3: the 4th holds dek-010
		t.Fatalf("%d rows decided, want 12", n)
	}
	for _, p := range []string{u.dstPath, u.part} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%s was committed (%v)", p, err)
		}
	}
}
