package transforms

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"

	_ "rekey/providers/local"
)

func TestSameKEKRefWithoutMatcher(t *testing.T) {
	// No matcher is registered for "kms": references compare exactly,
	// without their query part.
	for _, tc := range []struct {
		ref, kek string
		want     bool
	}{
		{"kms:projects/p/keys/k1", "kms:projects/p/keys/k1?credentials=file:/x", true},
		{"kms:projects/p/keys/k1?region=a", "kms:projects/p/keys/k1", true},
		{"kms:projects/p/keys/k2", "kms:projects/p/keys/k1", false},
		{"pkcs11:token=a;object=k1", "kms:projects/p/keys/k1", false},
		{"no-scheme", "kms:projects/p/keys/k1", false},
	} {
		got, err := SameKEKRef(tc.ref, tc.kek)
		if err != nil || got != tc.want {
			t.Errorf("SameKEKRef(%q, %q) = %v, %v; want %v", tc.ref, tc.kek, got, err, tc.want)
		}
	}
}

type keyColRow struct {
	RID     string  `parquet:"rid"`
	DEK     *string `parquet:"dek,optional"`
	Payload []byte  `parquet:"payload"`
}

func writeKeyColFile(t *testing.T, rows []keyColRow) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "f.parquet")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	// Small pages and row groups, so the two columns cross page and row
	// group boundaries at different rows.
	w := parquet.NewGenericWriter[keyColRow](f, parquet.PageBufferSize(256), parquet.MaxRowsPerRowGroup(37))
	if _, err := w.Write(rows); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestReadKeyColumns(t *testing.T) {
	var rows []keyColRow
	for i := 0; i < 500; i++ {
		d := fmt.Sprintf("dek-%d", i%7)
		rows = append(rows, keyColRow{RID: fmt.Sprintf("r%04d", i), DEK: &d, Payload: make([]byte, 100+i%50)})
	}
	path := writeKeyColFile(t, rows)
	var got []string
	err := readKeyColumns(context.Background(), path, "dek", "rid", func(dekID, id string) {
		got = append(got, id+"/"+dekID)
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(rows) {
		t.Fatalf("%d rows read, want %d", len(got), len(rows))
	}
	for i, r := range rows {
		if want := r.RID + "/" + *r.DEK; got[i] != want {
			t.Fatalf("row %d: got %s, want %s", i, got[i], want)
		}
	}

	// A null dek_id is an error that names the record, not a silent skip.
	rows[123].DEK = nil
	path = writeKeyColFile(t, rows)
	err = readKeyColumns(context.Background(), path, "dek", "rid", func(string, string) {})
	if err == nil || !strings.Contains(err.Error(), `"r0123"`) {
		t.Fatalf("null dek_id: error %v, want one naming record r0123", err)
	}
	if err := readKeyColumns(context.Background(), path, "nope", "rid", func(string, string) {}); err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("missing column: error %v", err)
	}
}

func TestAuditMergeCapsRecordIDs(t *testing.T) {
	part := func(n int) AuditPart {
		p := AuditPart{RefRecords: int64(n), FileRefs: map[string]int64{"f": int64(n)}}
		for i := 0; i < n; i++ {
			p.RecordIDs = append(p.RecordIDs, AuditRecordRef{File: "f", RecordID: fmt.Sprint(i)})
		}
		return p
	}
	fn := &AuditMergeFn{MaxRecordIDs: 5}
	m := fn.MergeAccumulators(part(3), part(4))
	if len(m.RecordIDs) != 5 || m.RefRecords != 7 || m.FileRefs["f"] != 7 {
		t.Fatalf("capped merge: %d ids, %d records, files %v", len(m.RecordIDs), m.RefRecords, m.FileRefs)
	}
	all := (&AuditMergeFn{MaxRecordIDs: -1}).MergeAccumulators(part(3), part(4))
	if len(all.RecordIDs) != 7 {
		t.Fatalf("uncapped merge kept %d ids, want 7", len(all.RecordIDs))
	}
	rep := BuildAuditReport(AuditSpec{KEK: "kms:k", DEKTables: []string{"t"}}, m)
	if rep.Verdict != AuditReferenced || rep.RecordsComplete {
		t.Fatalf("report of a capped merge: verdict %s, complete %v", rep.Verdict, rep.RecordsComplete)
	}
	// The DEK table location produced no files: that is a problem, named.
	if rep.Totals.Problems != 1 || !strings.Contains(strings.Join(rep.Problems, "\n"), "t: no Parquet files") {
		t.Fatalf("problems %v", rep.Problems)
	}
}
