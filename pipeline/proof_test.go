package pipeline_test

// Proof before commit (issue 10, item 2): a source HSM that returns a wrong
// key without an error must not get that key committed. The source KEK is
// reached through rekey's fault-injecting PKCS#11 module (hsmio/faultpkcs11),
// which wraps SoftHSM2 and corrupts or fails a share of chosen calls.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"
	"github.com/parquet-go/parquet-go"

	"rekey/hsmio/faultpkcs11"
	"rekey/pipeline"
	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

// faultKEK is the source token's key reached through a copy of the fault
// module configured with c.
func faultKEK(t *testing.T, object string, c faultpkcs11.Config) string {
	t.Helper()
	lib := faultpkcs11.ForTest(t, c)
	return fmt.Sprintf("pkcs11:token=source;object=%s?module-path=%s&pin-source=env:REKEY_SOURCE_PIN", object, lib)
}

// genSized is genDataset with a cell size of its own.
func genSized(t *testing.T, kek, wrap string, files, records, deks, size int) *dataset {
	t.Helper()
	root := t.TempDir()
	g := transforms.GenSpec{Data: filepath.Join(root, "src", "data"), DEKs: filepath.Join(root, "src", "deks"), KEK: kek, Wrap: wrap,
		Files: files, Records: records, NumDEKs: deks, RecordSize: size, Seed: 42, Encrypted: []string{"payload"}, RowGroup: 70, Workers: 2}
	ptest.BuildAndRun(t, func(s beam.Scope) { pipeline.BuildGen(s, g) })
	return &dataset{gen: g, root: root}
}

// editDEKTable rewrites every file of a DEK table folder.
func editDEKTable(t *testing.T, dir string, edit func(path string, rows []schemas.DEKRow) any) {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.parquet"))
	if len(files) == 0 {
		t.Fatalf("no DEK table files in %s", dir)
	}
	for _, f := range files {
		rows, err := parquet.ReadFile[schemas.DEKRow](f)
		if err != nil {
			t.Fatal(err)
		}
		var werr error
		switch out := edit(f, rows).(type) {
		case []schemas.DEKRow:
			werr = parquet.WriteFile(f, out)
		case []oldDEKRow:
			werr = parquet.WriteFile(f, out)
		}
		if werr != nil {
			t.Fatal(werr)
		}
	}
}

// oldDEKRow is a DEK table row as written before the kcv column existed.
type oldDEKRow struct {
	DEKID   string    `parquet:"dek_id"`
	KEK     string    `parquet:"kek"`
	Wrap    string    `parquet:"wrap"`
	Wrapped []byte    `parquet:"wrapped"`
	Created time.Time `parquet:"created,timestamp(microsecond)"`
}

// stripKCV turns a DEK table into one without the kcv column.
func stripKCV(t *testing.T, dir string) {
	editDEKTable(t, dir, func(f string, rows []schemas.DEKRow) any {
		old := make([]oldDEKRow, len(rows))
		for i, r := range rows {
			old[i] = oldDEKRow{r.DEKID, r.KEK, r.Wrap, r.Wrapped, r.Created}
		}
		return old
	})
	files, _ := filepath.Glob(filepath.Join(dir, "*.parquet"))
	for _, f := range files {
		tab := fdReadParquet(t, f)
		if _, ok := tab.schema.Lookup("kcv"); ok {
			t.Fatalf("%s still has a kcv column", f)
		}
	}
}

// dekLedger returns the dek rows of a run's ledger by dek_id.
func dekLedger(t *testing.T, j *pipeline.Job) map[string]schemas.LedgerRow {
	t.Helper()
	rows, err := ledger.Read(context.Background(), j.Ledger, j.RunID)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]schemas.LedgerRow{}
	for _, r := range rows {
		if r.Unit == schemas.UnitDEK {
			out[r.DEKID] = r
		}
	}
	return out
}

// checkCommitted is what `rekey verify` asks of a rewrap, done here with
// the public format and plain SoftHSM only: every DEK in the target table
// is the source DEK (same bytes, checked with the source table and KEK),
// carries the right kcv, and opens every record of the untouched data that
// names it. DEKs listed in failed must not be in the target. It returns how
// many records it checked and how many it left out (under failed DEKs).
func checkCommitted(t *testing.T, d *dataset, j *pipeline.Job, failed map[string]bool) (checked, left int) {
	t.Helper()
	ctx := context.Background()
	srcKEK, err := keys.Open(ctx, d.gen.KEK, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dstKEK, err := keys.Open(ctx, j.Target.KEK, keys.Options{})
	if err != nil {
		t.Fatal(err)
	}
	src, err := transforms.ReadDEKTable(ctx, d.gen.DEKs)
	if err != nil {
		t.Fatal(err)
	}
	srcByID := map[string]schemas.DEKRow{}
	for _, r := range src {
		srcByID[r.DEKID] = r
	}
	dst, err := transforms.ReadDEKTable(ctx, j.Target.DEKs)
	if err != nil {
		t.Fatal(err)
	}
	deks := map[string]*keys.DEK{}
	for _, r := range dst {
		if failed[r.DEKID] {
			t.Fatalf("DEK %q failed its proof but is in the target table", r.DEKID)
		}
		if _, dup := deks[r.DEKID]; dup {
			t.Fatalf("DEK %q twice in the target table", r.DEKID)
		}
		got, err := dstKEK.Unwrap(ctx, keys.ByID(r.DEKID), r.Wrap, r.Wrapped)
		if err != nil {
			t.Fatalf("target DEK %q: %v", r.DEKID, err)
		}
		s := srcByID[r.DEKID]
		want, err := srcKEK.Unwrap(ctx, keys.ByID(s.DEKID), s.Wrap, s.Wrapped)
		if err != nil {
			t.Fatalf("source DEK %q: %v", r.DEKID, err)
		}
		if !bytes.Equal(got.Bytes(), want.Bytes()) {
			t.Fatalf("DEK %q: the target holds a wrong key (committed after a wrong unwrap)", r.DEKID)
		}
		if err := schemas.CheckKCV(got.Bytes(), r.DEKID, r.KCV); err != nil {
			t.Fatalf("DEK %q: target kcv: %v", r.DEKID, err)
		}
		deks[r.DEKID] = got
	}
	if len(deks)+len(failed) != len(src) {
		t.Fatalf("%d DEKs in the target, %d failed, %d in the source", len(deks), len(failed), len(src))
	}
	files, _ := filepath.Glob(filepath.Join(d.gen.Data, "*.parquet"))
	for _, f := range files {
		rows, err := parquet.ReadFile[transforms.GenRow](f)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			dek, ok := deks[r.DEKID]
			if !ok {
				if !failed[r.DEKID] {
					t.Fatalf("record %d names DEK %q, in neither the target nor the failures", r.ID, r.DEKID)
				}
				left++
				continue
			}
			aead, _ := dek.AEAD()
			aad, _ := schemas.CellAAD(nil, "payload", fmt.Sprint(r.ID), r.DEKID)
			pt, err := schemas.OpenCell(nil, aead, r.Payload, aad)
			if err != nil || !bytes.Equal(pt, transforms.GenPlaintext(&d.gen, "payload", r.ID)) {
				t.Fatalf("record %d does not decrypt with the committed DEK %q: %v", r.ID, r.DEKID, err)
			}
			checked++
		}
	}
	return checked, left
}

// checkFaultRun checks a run in which the fault module corrupted unwraps:
// every corrupted DEK is a failed row with the given proof, the others are
// migrated with it, the run does not say succeeded, and what was committed
// is right.
func checkFaultRun(t *testing.T, d *dataset, j *pipeline.Job, m *schemas.Manifest, log, proof, errText string) {
	t.Helper()
	lines, err := faultpkcs11.Logged(log)
	if err != nil {
		t.Fatal(err)
	}
	n := int64(len(lines))
	total := int64(d.gen.NumDEKs)
	if n == 0 || n == total {
		t.Fatalf("the fault module corrupted %d of %d unwraps; the test needs some, not all (change the seed): %v", n, total, lines)
	}
	if m.Status != "completed_with_failures" {
		t.Fatalf("run with %d wrong unwraps says %q: %+v", n, m.Status, m.Totals)
	}
	if m.Totals.DEKsFailed != n || m.Totals.DEKsMigrated != total-n {
		t.Fatalf("%d unwraps corrupted; manifest: %+v %v", n, m.Totals, m.Failures)
	}
	failed := map[string]bool{}
	for id, r := range dekLedger(t, j) {
		if r.Proof != proof {
			t.Fatalf("DEK %q: proof %q, want %q (%+v)", id, r.Proof, proof, r)
		}
		switch r.Status {
		case schemas.StatusFailed:
			if !strings.Contains(r.Error, errText) || !strings.Contains(r.Error, fmt.Sprintf("%q", id)) || !strings.Contains(r.Error, "resume") {
				t.Fatalf("DEK %q: error does not name the DEK, the cause and what to do: %s", id, r.Error)
			}
			failed[id] = true
		case schemas.StatusMigrated:
		default:
			t.Fatalf("DEK %q: status %q", id, r.Status)
		}
	}
	if int64(len(failed)) != n {
		t.Fatalf("%d failed ledger rows for %d corrupted unwraps", len(failed), n)
	}
	checked, left := checkCommitted(t, d, j, failed)
	if checked == 0 || left == 0 || checked+left != d.gen.Files*d.gen.Records {
		t.Fatalf("records: %d decrypt with the target, %d under failed DEKs, of %d", checked, left, d.gen.Files*d.gen.Records)
	}
	t.Logf("%d of %d unwraps corrupted: all failed with proof %q; %d records decrypt with the committed DEKs, %d wait for a resume", n, total, proof, checked, left)
}

// TestProofKCVCatchesWrongUnwraps: the source HSM corrupts 20% of the
// unwrap results (no error); the DEK table has kcv.
func TestProofKCVCatchesWrongUnwraps(t *testing.T) {
	for _, tc := range []struct {
		wrap, call string
		seed       uint64
	}{
		{schemas.WrapAESGCM, "C_Decrypt", 3},   // crypto11 AES-GCM: the key comes back from C_Decrypt
		{schemas.WrapAESKWP, "C_UnwrapKey", 4}, // C_UnwrapKey, then CKA_VALUE read back wrong
	} {
		t.Run(tc.wrap, func(t *testing.T) {
			d := genDataset(t, env.KEK("source", "kek-aes"), tc.wrap, 2, 40, 40)
			log := filepath.Join(t.TempDir(), "faults.log")
			j := d.job(schemas.ModeRewrap, "kcv-"+tc.wrap, env.KEK("target", "kek-aes"), schemas.WrapAESGCM)
			j.Source.KEK = faultKEK(t, "kek-aes", faultpkcs11.Config{Calls: []string{tc.call}, Mode: faultpkcs11.Corrupt, Rate: 0.2, Seed: tc.seed, Log: log})
			m := runJob(t, j)
			checkFaultRun(t, d, j, m, log, schemas.ProofKCV, "returned a wrong key")
		})
	}
}

// TestProofCellCatchesWrongUnwrapsWithoutKCV: the same with a DEK table of
// the old format (no kcv column) and the job naming the dataset: a cell
// under each DEK is opened before its new wrap is committed. With 2000-byte
// cells the samples are too large to travel and are read back.
func TestProofCellCatchesWrongUnwrapsWithoutKCV(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int
		seed uint64
	}{{"small-cells", 300, 5}, {"large-cells", 2000, 6}} {
		t.Run(tc.name, func(t *testing.T) {
			d := genSized(t, env.KEK("source", "kek-aes"), schemas.WrapAESGCM, 2, 40, 40, tc.size)
			stripKCV(t, d.gen.DEKs)
			log := filepath.Join(t.TempDir(), "faults.log")
			j := d.job(schemas.ModeRewrap, "cell-"+tc.name, env.KEK("target", "kek-aes"), schemas.WrapAESKWP)
			j.Source.KEK = faultKEK(t, "kek-aes", faultpkcs11.Config{Calls: []string{"C_Decrypt"}, Mode: faultpkcs11.Corrupt, Rate: 0.2, Seed: tc.seed, Log: log})
			m := runJob(t, j)
			checkFaultRun(t, d, j, m, log, schemas.ProofCell, "does not open record")
		})
	}
}

// TestProofFaultModuleTransientErrorsAreRetried: the source HSM fails a
// share of its calls with CKR_DEVICE_ERROR; the retries absorb them and
// everything is migrated.
func TestProofFaultModuleTransientErrorsAreRetried(t *testing.T) {
	for _, tc := range []struct {
		wrap  string
		calls []string
	}{
		{schemas.WrapAESGCM, []string{"C_DecryptInit", "C_Decrypt"}},
		{schemas.WrapAESKWP, []string{"C_UnwrapKey"}},
	} {
		t.Run(tc.wrap, func(t *testing.T) {
			d := genDataset(t, env.KEK("source", "kek-aes"), tc.wrap, 2, 40, 40)
			log := filepath.Join(t.TempDir(), "faults.log")
			j := d.job(schemas.ModeRewrap, "flaky-"+tc.wrap, env.KEK("target", "kek-aes"), schemas.WrapAESGCM)
			j.Source.KEK = faultKEK(t, "kek-aes", faultpkcs11.Config{Calls: tc.calls, Mode: faultpkcs11.Fail, Rate: 0.05, Seed: 9, Log: log})
			m := runJob(t, j)
			lines, _ := faultpkcs11.Logged(log)
			if len(lines) == 0 {
				t.Fatal("the fault module failed no call (change the seed)")
			}
			if m.Status != "succeeded" || m.Totals.DEKsMigrated != 40 || m.Totals.Failed != 0 {
				t.Fatalf("%d injected HSM errors were not absorbed: %s %+v %v", len(lines), m.Status, m.Totals, m.Failures)
			}
			for id, r := range dekLedger(t, j) {
				if r.Proof != schemas.ProofKCV {
					t.Fatalf("DEK %q: proof %q", id, r.Proof)
				}
			}
			if checked, left := checkCommitted(t, d, j, nil); checked != 80 || left != 0 {
				t.Fatalf("records: %d checked, %d left", checked, left)
			}
			t.Logf("%d injected errors absorbed: %v", len(lines), lines)
		})
	}
}

// TestProofTamperedKCV: a kcv that does not match fails its DEK in both
// modes; in a re-encrypt the records under it fail and the rest migrate.
func TestProofTamperedKCV(t *testing.T) {
	for _, mode := range []string{schemas.ModeRewrap, schemas.ModeReencrypt} {
		t.Run(mode, func(t *testing.T) {
			d := genDataset(t, env.KEK("source", "kek-aes"), schemas.WrapAESGCM, 2, 20, 5)
			var victim string
			editDEKTable(t, d.gen.DEKs, func(_ string, rows []schemas.DEKRow) any {
				sort.Slice(rows, func(a, b int) bool { return rows[a].DEKID < rows[b].DEKID })
				victim = rows[2].DEKID
				rows[2].KCV[0] ^= 0x40
				return rows
			})
			j := d.job(mode, "tamper-"+mode, env.KEK("target", "kek-aes"), schemas.WrapAESGCM)
			m := runJob(t, j)
			led := dekLedger(t, j)
			for id, r := range led {
				want := schemas.StatusMigrated
				if id == victim {
					want = schemas.StatusFailed
				}
				if r.Status != want || r.Proof != schemas.ProofKCV {
					t.Fatalf("DEK %q: %s proof %q, want %s proof kcv: %s", id, r.Status, r.Proof, want, r.Error)
				}
			}
			if !strings.Contains(led[victim].Error, "returned a wrong key") {
				t.Fatalf("error: %s", led[victim].Error)
			}
			if m.Status != "completed_with_failures" || m.Totals.DEKsFailed != 1 || m.Totals.DEKsMigrated != 4 {
				t.Fatalf("manifest: %s %+v", m.Status, m.Totals)
			}
			if mode == schemas.ModeReencrypt && (m.Totals.RecordsFailed != 8 || m.Totals.RecordsMigrated != 32) {
				t.Fatalf("records under the failed DEK must fail, the others migrate: %+v", m.Totals)
			}
			if mode == schemas.ModeRewrap {
				checkCommitted(t, d, j, map[string]bool{victim: true})
			}
		})
	}
}

// TestProofNone: without kcv, a DEK no record uses, or a job that names no
// dataset, has nothing to be checked against; the ledger says "none", and
// the committed DEKs get a kcv all the same.
func TestProofNone(t *testing.T) {
	// 10 DEKs, 6 records: DEKs 6..9 are used by no record.
	d := genDataset(t, env.KEK("source", "kek-aes"), schemas.WrapAESKWP, 2, 3, 10)
	stripKCV(t, d.gen.DEKs)
	used := map[string]bool{}
	for i := 0; i < 6; i++ {
		used[transforms.GenDEKID(i)] = true
	}
	withData := d.job(schemas.ModeRewrap, "none-with-data", env.KEK("target", "kek-aes"), schemas.WrapAESGCM)
	noData := d.job(schemas.ModeRewrap, "none-no-data", env.KEK("target", "kek-aes"), schemas.WrapAESGCM)
	noData.Source.Data = ""
	for _, j := range []*pipeline.Job{withData, noData} {
		m := runJob(t, j)
		if m.Status != "succeeded" || m.Totals.DEKsMigrated != 10 {
			t.Fatalf("%s: %s %+v %v", j.RunID, m.Status, m.Totals, m.Failures)
		}
		for id, r := range dekLedger(t, j) {
			want := schemas.ProofNone
			if j == withData && used[id] {
				want = schemas.ProofCell
			}
			if r.Proof != want {
				t.Fatalf("%s: DEK %q proof %q, want %q", j.RunID, id, r.Proof, want)
			}
		}
		checkCommitted(t, d, j, nil)
	}
}

// TestProofKCVFromFormatDoc checks the kcv and proof columns with the
// independent decoder of formatdoc_test.go (PKCS#11 through its own
// context, HMAC from the standard library), from docs/FORMAT.md alone.
func TestProofKCVFromFormatDoc(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), schemas.WrapAESKWP, 1, 20, 4)
	j := d.job(schemas.ModeRewrap, "fd-kcv", env.KEK("target", "kek-rsa"), schemas.WrapRSAOAEPSHA1)
	if m := runJob(t, j); m.Status != "succeeded" {
		t.Fatalf("%+v", m.Totals)
	}
	h := fdOpenHSM(t)
	for _, dir := range []string{d.gen.DEKs, j.Target.DEKs} {
		for _, f := range fdFiles(t, dir) {
			tab := fdReadParquet(t, f)
			tab.fdCheckCol(t, f, "kcv", parquet.ByteArray, "", "optional")
			for _, r := range tab.rows {
				id := fdStr(r["dek_id"])
				dek, err := h.unwrap(fdDEK{ID: id, KEK: fdStr(r["kek"]), Wrap: fdStr(r["wrap"]), Wrapped: bytes.Clone(r["wrapped"].ByteArray())})
				if err != nil {
					t.Fatal(err)
				}
				mac := hmac.New(sha256.New, dek)
				mac.Write([]byte("rekey.kcv.v1\x00" + id))
				if want := mac.Sum(nil)[:8]; !bytes.Equal(r["kcv"].ByteArray(), want) {
					t.Fatalf("%s: dek_id %q kcv %x, doc says %x", f, id, r["kcv"].ByteArray(), want)
				}
			}
		}
	}
	dir := filepath.Join(j.Ledger, "run_id="+j.RunID)
	parts, _ := filepath.Glob(filepath.Join(dir, "part-deks-*.parquet"))
	if len(parts) == 0 {
		t.Fatal("no dek ledger parts")
	}
	for _, p := range parts {
		tab := fdReadParquet(t, p)
		tab.fdCheckCol(t, p, "proof", parquet.ByteArray, "STRING", "optional")
		for _, r := range tab.rows {
			if fdStr(r["unit"]) == "dek" && fdStr(r["proof"]) != "kcv" {
				t.Fatalf("%s: proof %q", p, fdStr(r["proof"]))
			}
		}
	}
}

// TestProofCellOnPrism runs the sampling stages on a portable runner
// (samples cross process boundaries encoded), with and without a dataset.
func TestProofCellOnPrism(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), schemas.WrapAESGCM, 2, 10, 6)
	stripKCV(t, d.gen.DEKs)
	withData := d.job(schemas.ModeRewrap, "prism-cell", env.KEK("target", "kek-aes"), schemas.WrapAESGCM)
	noData := d.job(schemas.ModeRewrap, "prism-none", env.KEK("target", "kek-aes"), schemas.WrapAESGCM)
	noData.Source.Data = ""
	for _, j := range []*pipeline.Job{withData, noData} {
		if err := j.Validate(); err != nil {
			t.Fatal(err)
		}
		p, s := beam.NewPipelineWithRoot()
		pipeline.Build(s, j.Spec())
		if _, err := prism.Execute(context.Background(), p); err != nil {
			t.Fatal(err)
		}
		if m := readManifest(t, j); m.Status != "succeeded" || m.Totals.DEKsMigrated != 6 {
			t.Fatalf("%s: %s %+v", j.RunID, m.Status, m.Totals)
		}
		want := schemas.ProofCell
		if j == noData {
			want = schemas.ProofNone
		}
		for id, r := range dekLedger(t, j) {
			if r.Proof != want {
				t.Fatalf("%s: DEK %q proof %q, want %q", j.RunID, id, r.Proof, want)
			}
		}
		checkCommitted(t, d, j, nil)
	}
}

// TestProofResumeReadsOldLedgerParts: a resume over ledger parts written
// before the proof column existed takes them as done.
func TestProofResumeReadsOldLedgerParts(t *testing.T) {
	type oldLedgerRow struct {
		RunID     string    `parquet:"run_id"`
		Mode      string    `parquet:"mode"`
		Unit      string    `parquet:"unit"`
		Source    string    `parquet:"source"`
		Target    string    `parquet:"target,optional"`
		RecordID  string    `parquet:"record_id,optional"`
		DEKID     string    `parquet:"dek_id,optional"`
		NewDEKID  string    `parquet:"new_dek_id,optional"`
		SourceKEK string    `parquet:"source_kek,optional"`
		TargetKEK string    `parquet:"target_kek,optional"`
		Status    string    `parquet:"status"`
		Error     string    `parquet:"error,optional"`
		Bytes     int64     `parquet:"bytes"`
		Checksum  string    `parquet:"checksum,optional"`
		At        time.Time `parquet:"at,timestamp(microsecond)"`
	}
	d := genDataset(t, env.KEK("source", "kek-aes"), schemas.WrapAESGCM, 1, 10, 5)
	j := d.job(schemas.ModeRewrap, "old-ledger", env.KEK("target", "kek-aes"), schemas.WrapAESGCM)
	if m := runJob(t, j); m.Status != "succeeded" {
		t.Fatalf("%+v", m.Totals)
	}
	parts, _ := filepath.Glob(filepath.Join(j.Ledger, "run_id="+j.RunID, "part-*.parquet"))
	if len(parts) == 0 {
		t.Fatal("no ledger parts")
	}
	for _, p := range parts {
		rows, err := parquet.ReadFile[schemas.LedgerRow](p)
		if err != nil {
			t.Fatal(err)
		}
		old := make([]oldLedgerRow, len(rows))
		for i, r := range rows {
			old[i] = oldLedgerRow{r.RunID, r.Mode, r.Unit, r.Source, r.Target, r.RecordID, r.DEKID, r.NewDEKID, r.SourceKEK, r.TargetKEK, r.Status, r.Error, r.Bytes, r.Checksum, r.At}
		}
		if err := parquet.WriteFile(p, old); err != nil {
			t.Fatal(err)
		}
	}
	j.Resume = true
	m := runJob(t, j)
	if m.Status != "succeeded" || m.Totals.DEKsMigrated != 5 {
		t.Fatalf("resume over old ledger parts: %s %+v %v", m.Status, m.Totals, m.Failures)
	}
	for _, p := range parts {
		if _, ok := fdReadParquet(t, p).schema.Lookup("proof"); ok {
			t.Fatalf("%s was redone: an old part was not taken as done", p)
		}
	}
}
