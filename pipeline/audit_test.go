package pipeline_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"

	"rekey/hsmio"
	"rekey/pipeline"
	"rekey/schemas"
	"rekey/transforms"
)

// pkcs11 references are compared by the scheme hsmio registers (token,
// serial, object and id).
var _ = hsmio.SameKey

func runAudit(t *testing.T, kek string, deks, data []string, maxIDs int) transforms.AuditReport {
	t.Helper()
	spec := transforms.AuditSpec{KEK: kek, DEKTables: deks, Datasets: data, DEKColumn: "dek_id", IDColumn: "id",
		Report: filepath.Join(t.TempDir(), "audit.json"), MaxRecordIDs: maxIDs}
	if err := spec.Validate(); err != nil {
		t.Fatal(err)
	}
	ptest.BuildAndRun(t, func(s beam.Scope) { pipeline.BuildAudit(s, spec) })
	b, err := os.ReadFile(spec.Report)
	if err != nil {
		t.Fatal(err)
	}
	var rep transforms.AuditReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Format != transforms.AuditReportFormat {
		t.Fatalf("report format %q", rep.Format)
	}
	return rep
}

// key strips the module path and PIN source: what an operator types for
// the audit (it opens no key).
func key(token, label string) string { return "pkcs11:token=" + token + ";object=" + label }

func TestAuditBeforeAndAfterReencrypt(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 3, 100, 5)
	old := key("source", "kek-aes")

	// Before: every DEK and every record depends on the old KEK.
	before := runAudit(t, old, []string{d.gen.DEKs}, []string{d.gen.Data}, 0)
	tt := before.Totals
	if before.Verdict != transforms.AuditReferenced || tt.DEKs != 5 || tt.DEKsReferencing != 5 || tt.Records != 300 ||
		tt.RecordsReferencing != 300 || tt.FilesReferencing != 3 || tt.Problems != 0 || tt.RecordsUnresolved != 0 {
		t.Fatalf("before migration: verdict %s, totals %+v", before.Verdict, tt)
	}
	if len(before.Records) != 300 || !before.RecordsComplete {
		t.Fatalf("before migration: %d record ids listed (complete %v), want all 300", len(before.Records), before.RecordsComplete)
	}
	var perDEK int64
	ids := map[string]bool{}
	for _, r := range before.DEKs {
		perDEK += r.Records
		if r.KEK != old || r.Wrap != "aes-gcm" || len(r.Tables) != 1 {
			t.Fatalf("DEK entry %+v", r)
		}
	}
	for _, r := range before.Records {
		ids[r.RecordID] = true
	}
	if perDEK != 300 || len(ids) != 300 {
		t.Fatalf("per-DEK record counts sum to %d, %d distinct record ids; want 300", perDEK, len(ids))
	}

	// The same key spelled another way (attribute order, a pin-source) is
	// the same key; an unrelated key on the same token is not referenced.
	if r := runAudit(t, "pkcs11:object=kek-aes;token=source?pin-source=env:UNUSED", []string{d.gen.DEKs}, []string{d.gen.Data}, 10); r.Verdict != transforms.AuditReferenced || r.Totals.RecordsReferencing != 300 || len(r.Records) != 10 || r.RecordsComplete {
		t.Fatalf("respelled KEK with 10 ids: verdict %s, %d ids (complete %v), totals %+v", r.Verdict, len(r.Records), r.RecordsComplete, r.Totals)
	}
	if r := runAudit(t, key("source", "kek-other"), []string{d.gen.DEKs}, []string{d.gen.Data}, 0); r.Verdict != transforms.AuditClear || r.Totals.Records != 300 || r.DEKsByKEK[old] != 5 {
		t.Fatalf("unrelated KEK: verdict %s (%s), inventory %v", r.Verdict, r.Reason, r.DEKsByKEK)
	}

	j := d.job(schemas.ModeReencrypt, "audit1", env.KEK("target", "kek-aes"), "aes-gcm")
	if m := runJob(t, j); m.Totals.RecordsMigrated != 300 || m.Totals.Failed != 0 {
		t.Fatalf("migration: %+v", m.Totals)
	}

	// After: the migrated dataset and its DEK table no longer need the old
	// KEK; they need the new one.
	after := runAudit(t, old, []string{j.Target.DEKs}, []string{j.Target.Data}, 0)
	if after.Verdict != transforms.AuditClear || after.Totals.DEKs != 5 || after.Totals.Records != 300 || len(after.DEKs) != 0 || len(after.Records) != 0 {
		t.Fatalf("after migration: verdict %s (%s), totals %+v", after.Verdict, after.Reason, after.Totals)
	}
	if n := after.DEKsByKEK[key("target", "kek-aes")]; n != 5 {
		t.Fatalf("after migration the inventory shows %v, want 5 DEKs under the target KEK", after.DEKsByKEK)
	}
	if r := runAudit(t, key("target", "kek-aes"), []string{j.Target.DEKs}, []string{j.Target.Data}, 0); r.Verdict != transforms.AuditReferenced || r.Totals.RecordsReferencing != 300 {
		t.Fatalf("target KEK after migration: verdict %s, totals %+v", r.Verdict, r.Totals)
	}

	// The old dataset is still there until it is deleted: auditing it with
	// the new data says so.
	if r := runAudit(t, old, []string{d.gen.DEKs, j.Target.DEKs}, []string{d.gen.Data, j.Target.Data}, 0); r.Verdict != transforms.AuditReferenced || r.Totals.RecordsReferencing != 300 || r.Totals.Records != 600 {
		t.Fatalf("old and new together: verdict %s, totals %+v", r.Verdict, r.Totals)
	}
}

func TestAuditAfterRewrapKeepsOldTableVisible(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 2, 50, 4)
	j := d.job(schemas.ModeRewrap, "audit2", env.KEK("target", "kek-aes"), "aes-kwp")
	if m := runJob(t, j); m.Totals.DEKsMigrated != 4 {
		t.Fatalf("rewrap: %+v", m.Totals)
	}
	old := key("source", "kek-aes")
	// Rewrap leaves the records as they are: with the new DEK table only,
	// nothing depends on the old KEK.
	if r := runAudit(t, old, []string{j.Target.DEKs}, []string{d.gen.Data}, 0); r.Verdict != transforms.AuditClear || r.Totals.Records != 100 {
		t.Fatalf("rewrap, new table: verdict %s (%s)", r.Verdict, r.Reason)
	}
	// While the old table is still in use, the same records depend on the
	// old KEK through it, and the report names the table file.
	r := runAudit(t, old, []string{d.gen.DEKs, j.Target.DEKs}, []string{d.gen.Data}, 0)
	if r.Verdict != transforms.AuditReferenced || len(r.DEKs) != 4 || r.Totals.RecordsReferencing != 100 {
		t.Fatalf("rewrap, both tables: verdict %s, totals %+v", r.Verdict, r.Totals)
	}
	for _, x := range r.DEKs {
		if len(x.Tables) != 1 || filepath.Dir(x.Tables[0]) != d.gen.DEKs {
			t.Fatalf("DEK %s: tables %v, want the old table only", x.DEKID, x.Tables)
		}
	}
}

func TestAuditInconclusive(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 2, 40, 3)
	j := d.job(schemas.ModeReencrypt, "audit3", env.KEK("target", "kek-aes"), "aes-gcm")
	runJob(t, j)
	// Records whose DEKs are in none of the tables given cannot be
	// resolved to a KEK: no proof either way.
	r := runAudit(t, key("target", "kek-aes"), []string{d.gen.DEKs}, []string{j.Target.Data}, 0)
	if r.Verdict != transforms.AuditInconclusive || r.Totals.RecordsUnresolved != 80 || len(r.Unresolved) == 0 {
		t.Fatalf("unresolved DEKs: verdict %s, totals %+v", r.Verdict, r.Totals)
	}
	// An empty location (a typo, an unmounted volume) is not a clean audit.
	empty := t.TempDir()
	r = runAudit(t, key("source", "kek-aes"), []string{j.Target.DEKs}, []string{j.Target.Data, empty}, 0)
	if r.Verdict != transforms.AuditInconclusive || r.Totals.Problems != 1 {
		t.Fatalf("empty dataset folder: verdict %s, problems %v", r.Verdict, r.Problems)
	}
	// A file that is not Parquet is reported, not skipped.
	if err := os.WriteFile(filepath.Join(j.Target.Data, "zz-broken.parquet"), []byte("not parquet"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runAudit(t, key("source", "kek-aes"), []string{j.Target.DEKs}, []string{j.Target.Data}, 0)
	if r.Verdict != transforms.AuditInconclusive || r.Totals.Problems != 1 || r.Totals.Records != 80 {
		t.Fatalf("broken file: verdict %s, totals %+v, problems %v", r.Verdict, r.Totals, r.Problems)
	}
}
