package pipeline_test

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"

	"rekey/pipeline"
	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

// Bad input in an application's own aes-gcm dataset (format keys: column):
// cells in another layout or encoding than configured, cells too short, a
// wrapped-key column holding garbage, null or a secret that is no AES key,
// an AAD template naming a column the files lack. Each bad record must
// become a failed ledger row that names the record and the column and says
// what to change; the good records of the same file must still migrate;
// the source must not change; and no bad record may reach the target.
//
// The cells are written here with crypto/cipher, as an application's
// hand-written code would: nonce‖ciphertext‖tag, base64, AAD = the record
// id (the Lockbox convention), each row's DEK wrapped (unbound) by the
// source KEK and stored base64 in wrapped_key.

// nullableRow is an application record whose wrapped-key column may be null.
type nullableRow struct {
	ID         int64   `parquet:"id"`
	Tenant     string  `parquet:"tenant"`
	Email      string  `parquet:"email"`
	WrappedKey *string `parquet:"wrapped_key,optional"`
}

// nullableRowV1 is the same record after a reencrypt to rekey-v1: binary
// cells, and the dek_id column where wrapped_key was.
type nullableRowV1 struct {
	ID     int64   `parquet:"id"`
	Tenant string  `parquet:"tenant"`
	Email  []byte  `parquet:"email"`
	DEKID  *string `parquet:"dek_id,optional"`
}

var badAppOpts = map[string]string{"encoding": "base64", "aad": "{id}", "keys": "column", "key_column": "wrapped_key", "key_encoding": "base64"}

// appKey is a DEK of the application and its wrapped form (base64).
type appKey struct {
	raw     []byte
	wrapped string
}

func newAppKey(t *testing.T, kek keys.KEK, n int) appKey {
	t.Helper()
	raw := make([]byte, n)
	_, _ = rand.Read(raw)
	d, err := keys.NewDEK(raw)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kek.Wrap(context.Background(), keys.Binding{}, d)
	if err != nil {
		t.Fatal(err)
	}
	return appKey{raw: raw, wrapped: base64.StdEncoding.EncodeToString(w)}
}

// appSeal is the application's encrypt: AES-GCM, 12-byte random nonce,
// stored before the ciphertext (or after the tag, nonceLast).
func appSeal(t *testing.T, key []byte, aad, pt string, nonceLast bool) []byte {
	t.Helper()
	b, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	g, _ := cipher.NewGCM(b)
	nonce := make([]byte, g.NonceSize())
	_, _ = rand.Read(nonce)
	sealed := g.Seal(nil, nonce, []byte(pt), []byte(aad))
	if nonceLast {
		return append(sealed, nonce...)
	}
	return append(nonce, sealed...)
}

// appOpen is the application's decrypt of a nonce‖ciphertext‖tag cell.
func appOpen(key, cell []byte, aad string) ([]byte, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	g, _ := cipher.NewGCM(b)
	if len(cell) < g.NonceSize()+g.Overhead() {
		return nil, fmt.Errorf("cell too short")
	}
	return g.Open(nil, cell[:g.NonceSize()], cell[g.NonceSize():], []byte(aad))
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// spoil makes row r (sealed under its own key k, plaintext pt) bad.
type spoil func(t *testing.T, kek keys.KEK, r *nullableRow, k appKey, pt string)

// badDataset is a dataset with bad records and what its good ones hold.
type badDataset struct {
	dir   string
	plain map[int64]string // good records: id -> plaintext
	bad   map[int64]bool
}

// writeBadDataset writes part-0.parquet (records 1..12, the ones in spoils
// made bad) and part-1.parquet (records 13..20, all good). Good records
// share two DEKs; each bad record has a DEK of its own, so that a rewrap
// (which proves each distinct key on one of its cells) meets the bad cell.
func writeBadDataset(t *testing.T, kek keys.KEK, spoils map[int64]spoil) *badDataset {
	t.Helper()
	ds := &badDataset{dir: filepath.Join(t.TempDir(), "app"), plain: map[int64]string{}, bad: map[int64]bool{}}
	if err := os.MkdirAll(ds.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	shared := []appKey{newAppKey(t, kek, 32), newAppKey(t, kek, 16)}
	var files [2][]nullableRow
	for id := int64(1); id <= 20; id++ {
		pt := fmt.Sprintf("user%d@example.com %s", id, strings.Repeat("x", int(id%5)))
		k := shared[id%2]
		sp := spoils[id]
		if sp != nil {
			k = newAppKey(t, kek, 32)
		}
		w := k.wrapped
		r := nullableRow{ID: id, Tenant: fmt.Sprintf("tenant-%d", id%3), WrappedKey: &w,
			Email: b64(appSeal(t, k.raw, fmt.Sprint(id), pt, false))}
		if sp != nil {
			sp(t, kek, &r, k, pt)
			ds.bad[id] = true
		} else {
			ds.plain[id] = pt
		}
		f := 0
		if id > 12 {
			f = 1
		}
		files[f] = append(files[f], r)
	}
	for f, rows := range files {
		if err := parquet.WriteFile(filepath.Join(ds.dir, fmt.Sprintf("part-%d.parquet", f)), rows); err != nil {
			t.Fatal(err)
		}
	}
	return ds
}

// badJob is the job of the foreign tests (foreignJob) over ds.
func badJob(t *testing.T, mode, runID string, ds *badDataset, opts map[string]string) *pipeline.Job {
	return foreignJob(t, mode, runID, &appDataset{dir: ds.dir, keyOpts: opts}, env.KEK("target", "kek-aes"))
}

// hashFiles is the SHA-256 of every file under root, by relative path.
func hashFiles(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out[rel] = hashTree(t, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func checkSourceUnchanged(t *testing.T, root string, before map[string]string) {
	t.Helper()
	after := hashFiles(t, root)
	if len(after) != len(before) {
		t.Errorf("source files: %d before the run, %d after", len(before), len(after))
	}
	for rel, h := range before {
		if after[rel] != h {
			t.Errorf("source file %s was modified or removed by the run", rel)
		}
	}
}

// ledgerOf returns the run's ledger rows by status.
func ledgerOf(t *testing.T, j *pipeline.Job) (failed, migrated []schemas.LedgerRow) {
	t.Helper()
	rows, err := ledger.Read(context.Background(), j.Ledger, j.RunID)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if r.RunID != j.RunID || r.Mode != j.Mode {
			t.Fatalf("ledger row of another run: %+v", r)
		}
		switch r.Status {
		case schemas.StatusFailed:
			failed = append(failed, r)
		case schemas.StatusMigrated:
			if r.Unit == schemas.UnitDEK {
				// A key-column reencrypt names each DEK it minted.
				if r.NewDEKID == "" || !strings.HasPrefix(r.DEKID, "wrapped:") {
					t.Errorf("DEK ledger row without its names: %+v", r)
				}
				continue
			}
			migrated = append(migrated, r)
		default:
			t.Errorf("unexpected ledger row %s: %+v", r.Status, r)
		}
	}
	return failed, migrated
}

// readTarget decrypts every record of the target of j, as an application
// (rewrap: its own code, with the key the target KEK unwraps from
// wrapped_key) or rekey (reencrypt to rekey-v1: the target DEK table).
func readTarget(t *testing.T, j *pipeline.Job) map[int64]string {
	t.Helper()
	ctx := context.Background()
	kek, err := keys.Open(ctx, j.Target.KEK, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64]string{}
	files, _ := filepath.Glob(filepath.Join(j.Target.Data, "*.parquet"))
	sort.Strings(files)
	add := func(id int64, pt []byte) {
		if _, dup := out[id]; dup {
			t.Fatalf("record %d is twice in the target", id)
		}
		out[id] = string(pt)
	}
	if j.Mode == schemas.ModeRewrap {
		for _, f := range files {
			rows, err := parquet.ReadFile[nullableRow](f)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rows {
				if r.WrappedKey == nil {
					t.Fatalf("record %d: null wrapped key in the target", r.ID)
				}
				w, err := base64.StdEncoding.DecodeString(*r.WrappedKey)
				if err != nil {
					t.Fatalf("record %d: target wrapped key: %v", r.ID, err)
				}
				dek, err := kek.Unwrap(ctx, keys.Binding{}, kek.Mechanism(), w)
				if err != nil {
					t.Fatalf("record %d: the target KEK does not unwrap the new wrapped key: %v", r.ID, err)
				}
				cell, err := base64.StdEncoding.DecodeString(r.Email)
				if err != nil {
					t.Fatalf("record %d: target cell is not base64: %v", r.ID, err)
				}
				pt, err := appOpen(dek.Bytes(), cell, fmt.Sprint(r.ID))
				dek.Zero()
				if err != nil {
					t.Fatalf("record %d: the application cannot open the target cell: %v", r.ID, err)
				}
				add(r.ID, pt)
			}
		}
		return out
	}
	table, err := transforms.ReadDEKTable(ctx, j.Target.DEKs)
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]schemas.DEKRow{}
	for _, d := range table {
		byID[d.DEKID] = d
	}
	used := map[string]bool{}
	defer func() {
		for id := range byID {
			if !used[id] {
				t.Logf("target DEK %q is used by no target record", id)
			}
		}
	}()
	for _, f := range files {
		rows, err := parquet.ReadFile[nullableRowV1](f)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if r.DEKID == nil {
				t.Fatalf("record %d: null dek_id in the target", r.ID)
			}
			used[*r.DEKID] = true
			d, ok := byID[*r.DEKID]
			if !ok {
				t.Fatalf("record %d names DEK %q, which is not in the target DEK table", r.ID, *r.DEKID)
			}
			dek, err := kek.Unwrap(ctx, keys.ByID(d.DEKID), d.Wrap, d.Wrapped)
			if err != nil {
				t.Fatalf("unwrap %q: %v", d.DEKID, err)
			}
			aead, _ := dek.AEAD()
			aad, _ := schemas.CellAAD(nil, "email", fmt.Sprint(r.ID), d.DEKID)
			pt, err := schemas.OpenCell(nil, aead, r.Email, aad)
			dek.Zero()
			if err != nil {
				t.Fatalf("record %d: target cell: %v", r.ID, err)
			}
			add(r.ID, pt)
		}
	}
	return out
}

// badCase is one kind of bad input: the records it spoils and the words
// each failure must say (besides the record id and column).
type badCase struct {
	name   string
	column string // the column the failures must name
	spoils map[int64]spoil
	words  map[int64][]string // per bad record: words its error must contain
}

var (
	spoilNonceLast spoil = func(t *testing.T, _ keys.KEK, r *nullableRow, k appKey, pt string) {
		r.Email = b64(appSeal(t, k.raw, fmt.Sprint(r.ID), pt, true))
	}
	// Hex is base64's alphabet too: a hex cell whose length is a multiple
	// of 4 decodes as base64 (to the wrong bytes), one that is not does not.
	spoilHex = func(ptLen int) spoil {
		return func(t *testing.T, _ keys.KEK, r *nullableRow, k appKey, _ string) {
			r.Email = hex.EncodeToString(appSeal(t, k.raw, fmt.Sprint(r.ID), strings.Repeat("h", ptLen), false))
		}
	}
	spoilShort spoil = func(t *testing.T, _ keys.KEK, r *nullableRow, _ appKey, _ string) {
		b := make([]byte, 10)
		_, _ = rand.Read(b)
		r.Email = b64(b)
	}
	spoilKeyText spoil = func(t *testing.T, _ keys.KEK, r *nullableRow, _ appKey, _ string) {
		s := "not a base64 key!"
		r.WrappedKey = &s
	}
	spoilKeyRandom spoil = func(t *testing.T, _ keys.KEK, r *nullableRow, _ appKey, _ string) {
		b := make([]byte, 60)
		_, _ = rand.Read(b)
		s := b64(b)
		r.WrappedKey = &s
	}
	spoilKey20 spoil = func(t *testing.T, kek keys.KEK, r *nullableRow, _ appKey, _ string) {
		k := newAppKey(t, kek, 20)
		r.WrappedKey = &k.wrapped
	}
	spoilKeyNull spoil = func(t *testing.T, _ keys.KEK, r *nullableRow, _ appKey, _ string) {
		r.WrappedKey = nil
	}
)

var badCases = []badCase{
	{name: "layout", column: "email",
		spoils: map[int64]spoil{3: spoilNonceLast, 8: spoilNonceLast},
		words:  map[int64][]string{3: {"layout"}, 8: {"layout"}}},
	{name: "encoding", column: "email",
		spoils: map[int64]spoil{3: spoilHex(3), 8: spoilHex(4)},
		words:  map[int64][]string{3: {"encoding"}, 8: {"encoding"}}},
	{name: "truncated-nonce", column: "email",
		spoils: map[int64]spoil{5: spoilShort},
		words:  map[int64][]string{5: {"too short", "nonce"}}},
	{name: "key-garbage", column: "wrapped_key",
		spoils: map[int64]spoil{4: spoilKeyText, 9: spoilKeyRandom},
		words:  map[int64][]string{4: {"key_encoding"}, 9: {"unwrap"}}},
	{name: "key-20-bytes", column: "wrapped_key",
		spoils: map[int64]spoil{6: spoilKey20},
		words:  map[int64][]string{6: {"16, 24 or 32"}}},
	{name: "key-null", column: "wrapped_key",
		spoils: map[int64]spoil{2: spoilKeyNull, 11: spoilKeyNull},
		words:  map[int64][]string{2: {"null"}, 11: {"null"}}},
}

// TestForeignBadRecords runs each bad-input case in both modes: a rewrap
// of the key column, and a reencrypt to rekey-v1.
func TestForeignBadRecords(t *testing.T) {
	kek, err := keys.Open(context.Background(), env.KEK("source", "kek-aes"), keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range badCases {
		t.Run(tc.name, func(t *testing.T) {
			ds := writeBadDataset(t, kek, tc.spoils)
			for _, mode := range []string{schemas.ModeRewrap, schemas.ModeReencrypt} {
				t.Run(mode, func(t *testing.T) {
					before := hashFiles(t, ds.dir)
					j := badJob(t, mode, "bad-"+tc.name+"-"+mode, ds, badAppOpts)
					m := runJob(t, j)
					checkSourceUnchanged(t, ds.dir, before)
					checkBadRun(t, j, m, ds, tc)
				})
			}
		})
	}
}

// checkBadRun: exactly the bad records failed, each with a message naming
// it, its column and what to change; every good record migrated and reads
// back; no bad record is in the target.
func checkBadRun(t *testing.T, j *pipeline.Job, m *schemas.Manifest, ds *badDataset, tc badCase) {
	t.Helper()
	good, bad := int64(len(ds.plain)), int64(len(ds.bad))
	if m.Status == "succeeded" || m.Totals.RecordsFailed != bad || m.Totals.RecordsMigrated != good || m.Totals.FilesFailed != 0 {
		t.Errorf("manifest %s %+v: want completed_with_failures, %d records failed, %d migrated", m.Status, m.Totals, bad, good)
	}
	failed, migrated := ledgerOf(t, j)
	seen := map[int64]bool{}
	for _, r := range failed {
		var id int64
		if r.Unit != schemas.UnitRecord || r.RecordID == "" {
			t.Errorf("failed ledger row that is not a record's: %+v", r)
			continue
		}
		fmt.Sscan(r.RecordID, &id)
		if !ds.bad[id] {
			t.Errorf("good record %d failed: %s", id, r.Error)
			continue
		}
		seen[id] = true
		msg := r.Error
		t.Logf("record %d: %s", id, msg)
		for _, w := range append([]string{fmt.Sprintf("%q", r.RecordID), fmt.Sprintf("%q", tc.column)}, tc.words[id]...) {
			if !strings.Contains(msg, w) {
				t.Errorf("record %d failed with %q: the message does not say %s", id, msg, w)
			}
		}
	}
	for id := range ds.bad {
		if !seen[id] {
			t.Errorf("bad record %d has no failed ledger row", id)
		}
	}
	if int64(len(migrated)) != good {
		t.Errorf("%d migrated ledger rows, want %d", len(migrated), good)
	}
	got := readTarget(t, j)
	for id := range ds.bad {
		if _, ok := got[id]; ok {
			t.Errorf("bad record %d is in the target", id)
		}
	}
	for id, pt := range ds.plain {
		if got[id] != pt {
			t.Errorf("good record %d: target holds %q, want %q", id, got[id], pt)
		}
	}
}

// TestForeignBadAADColumn: an AAD template that names a column the files
// do not have is a configuration mistake: the plan refuses it, and a run
// fails each file whole, before any record is read or written.
func TestForeignBadAADColumn(t *testing.T) {
	ctx := context.Background()
	kek, err := keys.Open(ctx, env.KEK("source", "kek-aes"), keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ds := writeBadDataset(t, kek, nil)
	opts := map[string]string{}
	for k, v := range badAppOpts {
		opts[k] = v
	}
	opts["aad"] = "{tenant_id}:{id}"
	for _, mode := range []string{schemas.ModeRewrap, schemas.ModeReencrypt} {
		t.Run(mode, func(t *testing.T) {
			before := hashFiles(t, ds.dir)
			j := badJob(t, mode, "bad-aad-"+mode, ds, opts)
			if err := j.Validate(); err != nil {
				t.Fatalf("the job is valid (the column is only missing from the files): %v", err)
			}
			// The plan refuses it: it opens a sample cell of each file.
			if msgs := planFailures(ctx, badJob(t, mode, "bad-aad-ok-"+mode, ds, badAppOpts)); msgs != "" {
				t.Fatalf("the plan of the same job with a good aad fails:\n%s", msgs)
			}
			msgs := planFailures(ctx, j)
			for _, w := range []string{`"tenant_id"`, "aad", "source.format_options"} {
				if !strings.Contains(msgs, w) {
					t.Errorf("the plan does not refuse the job saying %s:\n%s", w, msgs)
				}
			}
			// A run started anyway fails each file as a whole, before any
			// record is read or written.
			m := runJob(t, j)
			checkSourceUnchanged(t, ds.dir, before)
			if m.Status == "succeeded" || m.Totals.FilesFailed != 2 || m.Totals.RecordsMigrated != 0 {
				t.Errorf("manifest %s %+v: want both files failed, nothing migrated", m.Status, m.Totals)
			}
			failed, migrated := ledgerOf(t, j)
			if len(migrated) != 0 {
				t.Errorf("%d records migrated under an AAD that cannot be rendered", len(migrated))
			}
			if len(failed) != 2 {
				t.Errorf("%d failed ledger rows, want one per file: %+v", len(failed), failed)
			}
			for _, f := range failed {
				if f.Unit != schemas.UnitFile {
					t.Errorf("failed row for %s, want the whole file: %+v", f.Unit, f)
				}
				for _, w := range []string{`"tenant_id"`, "aad", "source.format_options"} {
					if !strings.Contains(f.Error, w) {
						t.Errorf("%s failed with %q: the message does not say %s", f.Source, f.Error, w)
					}
				}
			}
			for _, dir := range []string{j.Target.Data, j.Target.DEKs} {
				if dir == "" {
					continue
				}
				if files, _ := filepath.Glob(filepath.Join(dir, "*")); len(files) > 0 {
					t.Errorf("the run wrote %v", files)
				}
			}
		})
	}
}

// planFailures is the failed checks of a plan of j, one a line.
func planFailures(ctx context.Context, j *pipeline.Job) string {
	var msgs []string
	for _, c := range pipeline.Plan(ctx, j, true).Checks {
		if !c.OK {
			msgs = append(msgs, c.Name+": "+c.Info)
		}
	}
	return strings.Join(msgs, "\n")
}

// TestForeignBadProofCellSharedKey: in a rewrap, each distinct wrapped key
// is proven by opening one of its cells. When that cell is the bad one (a
// record in another layout) and the key is shared with good records, the
// key is still proven by another of its cells: only record 1, whose cell
// does not open, fails; the good records migrate.
func TestForeignBadProofCellSharedKey(t *testing.T) {
	kek, err := keys.Open(context.Background(), env.KEK("source", "kek-aes"), keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ds := &badDataset{dir: filepath.Join(t.TempDir(), "app"), plain: map[int64]string{}, bad: map[int64]bool{1: true}}
	if err := os.MkdirAll(ds.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	k := newAppKey(t, kek, 32)
	var rows []nullableRow
	for id := int64(1); id <= 6; id++ {
		pt := fmt.Sprintf("user%d@example.com", id)
		w := k.wrapped
		// Record 1, the first cell under the key, is in another layout.
		rows = append(rows, nullableRow{ID: id, Tenant: "t", WrappedKey: &w, Email: b64(appSeal(t, k.raw, fmt.Sprint(id), pt, id == 1))})
		if id != 1 {
			ds.plain[id] = pt
		}
	}
	if err := parquet.WriteFile(filepath.Join(ds.dir, "part-0.parquet"), rows); err != nil {
		t.Fatal(err)
	}
	tc := badCase{column: "email", words: map[int64][]string{1: {"layout"}}}
	for _, mode := range []string{schemas.ModeRewrap, schemas.ModeReencrypt} {
		t.Run(mode, func(t *testing.T) {
			before := hashFiles(t, ds.dir)
			j := badJob(t, mode, "bad-proof-"+mode, ds, badAppOpts)
			m := runJob(t, j)
			checkSourceUnchanged(t, ds.dir, before)
			checkBadRun(t, j, m, ds, tc)
		})
	}
}
