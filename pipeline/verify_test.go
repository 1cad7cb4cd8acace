package pipeline_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/runners/prism"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/testing/ptest"
	"github.com/parquet-go/parquet-go"

	"rekey/pipeline"
	"rekey/schemas"
	"rekey/transforms"
)

// verifySpec is what `rekey verify --job` checks for job j: its target,
// compared with its source as j.Mode says (rewrap: the records where they
// are).
func verifySpec(j *pipeline.Job) transforms.VerifySpec {
	spec := j.VerifySpec("")
	spec.Match, spec.SourceDEKs, spec.SourceData = j.Mode, j.Source.DEKs, j.Source.Data
	if j.Mode == schemas.ModeRewrap {
		spec.TargetData = j.Source.Data
	}
	return spec
}

// targetOnly is the same check without a source.
func targetOnly(spec transforms.VerifySpec) transforms.VerifySpec {
	spec.SourceData, spec.SourceDEKs, spec.Match = "", "", ""
	return spec
}

func runVerify(t *testing.T, spec transforms.VerifySpec) *transforms.VerifyReport {
	t.Helper()
	spec.Report = filepath.Join(t.TempDir(), "verify.json")
	if err := spec.Validate(); err != nil {
		t.Fatal(err)
	}
	ptest.BuildAndRun(t, func(s beam.Scope) { pipeline.BuildVerify(s, spec) })
	return readVerifyReport(t, spec.Report)
}

func readVerifyReport(t *testing.T, path string) *transforms.VerifyReport {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rep transforms.VerifyReport
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Format != transforms.VerifyReportFormat {
		t.Fatalf("report format %q", rep.Format)
	}
	return &rep
}

func wantCounts(t *testing.T, what string, got, want transforms.VerifyCounts) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: got %+v, want %+v", what, got, want)
	}
}

// noted returns the record ids (or dek_ids) of the report's notes that
// start with kind ("missing", "failed", "extra"), sorted.
func noted(rep *transforms.VerifyReport, kind string, dek bool) []string {
	var out []string
	for _, n := range rep.Failures {
		if strings.HasPrefix(n.Error, kind+":") {
			if dek {
				out = append(out, n.DEKID)
			} else {
				out = append(out, n.RecordID)
			}
		}
	}
	sort.Strings(out)
	return out
}

// TestVerifyReportsFailedRecordsAsMissing (issue 10 item 3): a reencrypt
// run whose failure budget let some records fail leaves them out of the
// target. The ledger agrees with the target, and the old verify said OK;
// compared with the source, those records are missing.
func TestVerifyReportsFailedRecordsAsMissing(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 2, 40, 4)
	// File 0 holds ids 0..39, file 1 ids 40..79.
	rewriteRecords(t, filepath.Join(d.gen.Data, "part-00000.parquet"), func(r []transforms.GenRow) []transforms.GenRow {
		r[3].Payload[20] ^= 1
		r[7].Payload[20] ^= 1
		return r
	})
	rewriteRecords(t, filepath.Join(d.gen.Data, "part-00001.parquet"), func(r []transforms.GenRow) []transforms.GenRow {
		r[1].Payload[20] ^= 1
		return r
	})
	j := d.job(schemas.ModeReencrypt, "partial", env.KEK("target", "kek-aes"), "aes-gcm")
	j.MaxFailures = "10"
	transforms.Progress.Failed.Store(0) // the budget counts this process's failures: earlier tests' too
	if m := runJob(t, j); m.Totals.RecordsFailed != 3 || m.Totals.RecordsMigrated != 77 {
		t.Fatalf("run: %+v", m.Totals)
	}
	rep := runVerify(t, verifySpec(j))
	if rep.OK || !rep.Compared || rep.Mode != schemas.ModeReencrypt || rep.Source == nil || rep.Source.Data != d.gen.Data {
		t.Fatalf("verdict %v, compared %v, mode %q, source %+v", rep.OK, rep.Compared, rep.Mode, rep.Source)
	}
	wantCounts(t, "records", rep.Counts.Records, transforms.VerifyCounts{Source: 80, Target: 77, Migrated: 77, Missing: 3})
	wantCounts(t, "DEKs", rep.Counts.DEKs, transforms.VerifyCounts{Source: 4, Target: 4, Migrated: 4})
	if got := noted(rep, "missing", false); fmt.Sprint(got) != "[3 41 7]" {
		t.Fatalf("missing records noted: %v (%+v)", got, rep.Failures)
	}
	// Everything the target holds decrypts: alone, it looks fine. That is
	// why the report says whether it compared with a source.
	alone := runVerify(t, targetOnly(verifySpec(j)))
	if !alone.OK || alone.Compared || alone.Source != nil || alone.Counts.Records.Migrated != 77 {
		t.Fatalf("target alone: ok %v compared %v %+v", alone.OK, alone.Compared, alone.Counts)
	}
}

// TestVerifyCompleteThenDamagedTarget: a complete reencrypt verifies with
// the source's counts (on prism too, so the units cross a runner's
// coders); then an extra file, a deleted file and a deleted DEK row are
// each found.
func TestVerifyCompleteThenDamagedTarget(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 3, 30, 5)
	j := d.job(schemas.ModeReencrypt, "full", env.KEK("target", "kek-rsa"), "rsa-oaep-sha1")
	if m := runJob(t, j); m.Totals.Failed != 0 {
		t.Fatalf("run: %+v", m.Totals)
	}
	spec := verifySpec(j)

	// (e) complete: counts equal the source's.
	spec.Report = filepath.Join(t.TempDir(), "prism.json")
	p, s := beam.NewPipelineWithRoot()
	pipeline.BuildVerify(s, spec)
	if _, err := prism.Execute(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	for _, rep := range []*transforms.VerifyReport{readVerifyReport(t, spec.Report), runVerify(t, spec)} {
		if !rep.OK || len(rep.Failures) != 0 {
			t.Fatalf("complete run does not verify: %+v %+v", rep.Counts, rep.Failures)
		}
		wantCounts(t, "records", rep.Counts.Records, transforms.VerifyCounts{Source: 90, Target: 90, Migrated: 90})
		wantCounts(t, "DEKs", rep.Counts.DEKs, transforms.VerifyCounts{Source: 5, Target: 5, Migrated: 5})
		wantCounts(t, "files", rep.Counts.Files, transforms.VerifyCounts{Source: 4, Target: 4, Migrated: 4})
	}

	// (c) an extra file at the target.
	f0 := filepath.Join(j.Target.Data, "part-00000.parquet")
	extra := filepath.Join(j.Target.Data, "part-00099.parquet")
	b, err := os.ReadFile(f0)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(extra, b, 0o644); err != nil {
		t.Fatal(err)
	}
	rep := runVerify(t, spec)
	if rep.OK {
		t.Fatal("an extra target file verified OK")
	}
	wantCounts(t, "records with an extra file", rep.Counts.Records, transforms.VerifyCounts{Source: 90, Target: 120, Migrated: 90, Extra: 30})
	wantCounts(t, "files with an extra file", rep.Counts.Files, transforms.VerifyCounts{Source: 4, Target: 5, Migrated: 4, Extra: 1})
	if err := os.Remove(extra); err != nil {
		t.Fatal(err)
	}

	// (b) a target file deleted after the run.
	f1 := filepath.Join(j.Target.Data, "part-00001.parquet")
	if b, err = os.ReadFile(f1); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(f1); err != nil {
		t.Fatal(err)
	}
	rep = runVerify(t, spec)
	if rep.OK {
		t.Fatal("a deleted target file verified OK")
	}
	wantCounts(t, "records without a file", rep.Counts.Records, transforms.VerifyCounts{Source: 90, Target: 60, Migrated: 60, Missing: 30})
	wantCounts(t, "files without a file", rep.Counts.Files, transforms.VerifyCounts{Source: 4, Target: 3, Migrated: 3, Missing: 1})
	if err := os.WriteFile(f1, b, 0o644); err != nil {
		t.Fatal(err)
	}

	// A DEK row deleted from the target table: the DEK is missing and its
	// records (ids = 2 mod 5) fail to decrypt.
	dekFile := filepath.Join(j.Target.DEKs, "part-00000.parquet")
	rows, err := parquet.ReadFile[schemas.DEKRow](dekFile)
	if err != nil {
		t.Fatal(err)
	}
	var kept []schemas.DEKRow
	for _, r := range rows {
		if r.DEKID != transforms.NewDEKID(transforms.GenDEKID(2), j.RunID) {
			kept = append(kept, r)
		}
	}
	if len(kept) != len(rows)-1 {
		t.Fatalf("no DEK row to delete among %d", len(rows))
	}
	if err := parquet.WriteFile(dekFile, kept); err != nil {
		t.Fatal(err)
	}
	rep = runVerify(t, spec)
	wantCounts(t, "DEKs without a row", rep.Counts.DEKs, transforms.VerifyCounts{Source: 5, Target: 4, Migrated: 4, Missing: 1})
	wantCounts(t, "records without their DEK", rep.Counts.Records, transforms.VerifyCounts{Source: 90, Target: 90, Migrated: 72, Failed: 18})
	if got := noted(rep, "missing", true); len(got) != 1 || got[0] != transforms.GenDEKID(2) {
		t.Fatalf("missing DEKs noted: %v", got)
	}
}

// TestVerifyRewrapDeletedDEK (d): a rewrap target DEK table that lost a row
// is missing that DEK, and the records under it, checked where they are,
// fail.
func TestVerifyRewrapDeletedDEK(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 2, 25, 5)
	j := d.job(schemas.ModeRewrap, "rw", env.KEK("target", "kek-aes"), "aes-kwp")
	runJob(t, j)
	rep := runVerify(t, verifySpec(j))
	if !rep.OK || rep.Mode != schemas.ModeRewrap {
		t.Fatalf("complete rewrap: %v %+v %+v", rep.OK, rep.Counts, rep.Failures)
	}
	wantCounts(t, "records", rep.Counts.Records, transforms.VerifyCounts{Source: 50, Target: 50, Migrated: 50})
	wantCounts(t, "DEKs", rep.Counts.DEKs, transforms.VerifyCounts{Source: 5, Target: 5, Migrated: 5})

	dekFile := filepath.Join(j.Target.DEKs, "part-00000.parquet")
	rows, err := parquet.ReadFile[schemas.DEKRow](dekFile)
	if err != nil {
		t.Fatal(err)
	}
	var kept []schemas.DEKRow
	for _, r := range rows {
		if r.DEKID != transforms.GenDEKID(4) {
			kept = append(kept, r)
		}
	}
	if err := parquet.WriteFile(dekFile, kept); err != nil {
		t.Fatal(err)
	}
	rep = runVerify(t, verifySpec(j))
	if rep.OK {
		t.Fatal("a DEK missing from the rewrapped table verified OK")
	}
	wantCounts(t, "DEKs", rep.Counts.DEKs, transforms.VerifyCounts{Source: 5, Target: 4, Migrated: 4, Missing: 1})
	wantCounts(t, "records", rep.Counts.Records, transforms.VerifyCounts{Source: 50, Target: 50, Migrated: 40, Failed: 10})
	if got := noted(rep, "missing", true); len(got) != 1 || got[0] != transforms.GenDEKID(4) {
		t.Fatalf("missing DEKs noted: %v", got)
	}
	// An extra row: a DEK the source never had.
	extra := rows[0]
	extra.DEKID = "dek-from-elsewhere"
	if err := parquet.WriteFile(dekFile, append(rows, extra)); err != nil {
		t.Fatal(err)
	}
	rep = runVerify(t, verifySpec(j))
	wantCounts(t, "DEKs with an extra row", rep.Counts.DEKs, transforms.VerifyCounts{Source: 5, Target: 6, Migrated: 5, Failed: 0, Extra: 1})
	if rep.OK {
		t.Fatal("an extra DEK verified OK")
	}
}

// TestVerifyIncrementalTarget: the DEK tables of --incremental runs live
// under run_id=<id>/ folders; every source DEK is matched with its
// replacements there.
func TestVerifyIncrementalTarget(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 2, 20, 3)
	first := d.job(schemas.ModeReencrypt, "day1", env.KEK("target", "kek-aes"), "aes-gcm")
	first.Incremental = true
	runJob(t, first)
	rewriteRecords(t, filepath.Join(d.gen.Data, "part-00001.parquet"), func(r []transforms.GenRow) []transforms.GenRow {
		for i := range r {
			r[i].Tenant = "moved"
		}
		return r
	})
	second := d.job(schemas.ModeReencrypt, "day2", env.KEK("target", "kek-aes"), "aes-gcm")
	second.Target = first.Target
	second.Incremental = true
	runJob(t, second)
	rep := runVerify(t, verifySpec(second))
	if !rep.OK {
		t.Fatalf("incremental target: %+v %+v", rep.Counts, rep.Failures)
	}
	wantCounts(t, "records", rep.Counts.Records, transforms.VerifyCounts{Source: 40, Target: 40, Migrated: 40})
	wantCounts(t, "DEKs", rep.Counts.DEKs, transforms.VerifyCounts{Source: 3, Target: 6, Migrated: 3})
}

// TestVerifyEmptySource (issue 10 item 10): a run over an empty source
// folder writes no record file; verify says 0 of 0, OK.
func TestVerifyEmptySource(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 0, 0, 3)
	if err := os.MkdirAll(d.gen.Data, 0o755); err != nil {
		t.Fatal(err)
	}
	j := d.job(schemas.ModeReencrypt, "empty", env.KEK("target", "kek-aes"), "")
	runJob(t, j)
	rep := runVerify(t, verifySpec(j))
	if !rep.OK {
		t.Fatalf("empty source: %+v %+v", rep.Counts, rep.Failures)
	}
	wantCounts(t, "records", rep.Counts.Records, transforms.VerifyCounts{})
	wantCounts(t, "DEKs", rep.Counts.DEKs, transforms.VerifyCounts{Source: 3, Target: 3, Migrated: 3})
	if alone := runVerify(t, targetOnly(verifySpec(j))); !alone.OK || alone.Counts.Records != (transforms.VerifyCounts{}) {
		t.Fatalf("empty target alone: %+v", alone.Counts)
	}
}
