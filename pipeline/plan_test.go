package pipeline_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"

	"rekey/pipeline"
	"rekey/schemas"
)

// planOutcome runs Plan and returns whether it failed and its failed and
// warning checks, one per line, marked like rekey plan prints them.
func planOutcome(t *testing.T, j *pipeline.Job, scan bool) (bool, string) {
	t.Helper()
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	r := pipeline.Plan(context.Background(), j, scan)
	var lines []string
	for _, c := range r.Checks {
		switch {
		case !c.OK:
			lines = append(lines, "[FAIL] "+c.Name+": "+c.Info)
		case c.Warn:
			lines = append(lines, "[warn] "+c.Name+": "+c.Info)
		}
	}
	return r.Failed(), strings.Join(lines, "\n")
}

// foreignDEK makes DEK row i of the generated table name another KEK.
func foreignDEK(t *testing.T, d *dataset, i int) {
	t.Helper()
	dekFile := filepath.Join(d.gen.DEKs, "part-00000.parquet")
	deks, err := parquet.ReadFile[schemas.DEKRow](dekFile)
	if err != nil {
		t.Fatal(err)
	}
	deks[i].KEK = "pkcs11:token=source;object=kek-other"
	if err := parquet.WriteFile(dekFile, deks); err != nil {
		t.Fatal(err)
	}
}

type budgetCase struct {
	budget string // max_failures
	fails  bool
	want   string // in the checks printed
}

func checkBudgets(t *testing.T, j *pipeline.Job, scan bool, cases []budgetCase) {
	t.Helper()
	for _, c := range cases {
		j.MaxFailures = c.budget
		failed, out := planOutcome(t, j, scan)
		if failed != c.fails || !strings.Contains(out, c.want) {
			t.Errorf("max_failures=%q (footers read: %v): plan failed=%v, want %v and %q in:\n%s", c.budget, scan, failed, c.fails, c.want, out)
		}
	}
}

// TestPlanFailsOnPredictedForeignDEKs (issue 10 item 8): one DEK row of five
// names another KEK, so it fails and so do its 20 records (ids = 3 mod 5 of
// 100): 21 failures. Plan fails (and so does a run's preflight, which reads
// no footers unless it must count) unless max_failures accepts 21.
func TestPlanFailsOnPredictedForeignDEKs(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 2, 50, 5)
	foreignDEK(t, d, 3)
	j := d.job(schemas.ModeReencrypt, "plan-foreign", env.KEK("target", "kek-aes"), "")
	checkBudgets(t, j, true, []budgetCase{
		{"", true, "[FAIL] predicted failures: 1 DEK names another KEK, 20 records under those DEKs: 21 failures in all; more than the failure budget allows (max_failures is not set"},
	})
	// No failure accepted: the preflight need not read every file to know.
	checkBudgets(t, j, false, []budgetCase{
		{"", true, "[FAIL] predicted failures: 1 DEK names another KEK, every record under those DEKs (not counted): at least 1 failure; more than the failure budget allows (max_failures is not set"},
	})
	for _, scan := range []bool{true, false} {
		checkBudgets(t, j, scan, []budgetCase{
			{"0", true, "(max_failures=0)"},
			{"20", true, "(max_failures=20)"},
			{"21", false, "[warn] predicted failures: 1 DEK names another KEK, 20 records under those DEKs: 21 failures in all; within the failure budget (max_failures=21)"},
			{"10%", true, "max_failures=10%; predicted: 20% of 105 units, 20% of 5 DEKs"},
			{"20%", false, "within the failure budget (max_failures=20%"},
		})
	}
	// Over the budget, the finding itself is a failure too: a run's
	// preflight prints only failed checks.
	j.MaxFailures = ""
	if _, out := planOutcome(t, j, false); !strings.Contains(out, "[FAIL] DEK KEKs: 1 DEKs are wrapped by a KEK other than source.kek") {
		t.Errorf("the finding is not marked FAIL:\n%s", out)
	}
}

// TestPlanFailsOnPredictedFileFailures (issue 10 item 8): a truncated record
// file and one without the encrypted column fail as whole files.
func TestPlanFailsOnPredictedFileFailures(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 3, 20, 3)
	j := d.job(schemas.ModeReencrypt, "plan-files", env.KEK("target", "kek-aes"), "")
	if failed, out := planOutcome(t, j, true); failed || strings.Contains(out, "predicted failures") {
		t.Fatalf("plan of a good dataset:\n%s", out)
	}

	// The last file loses its encrypted column.
	f2 := filepath.Join(d.gen.Data, "part-00002.parquet")
	type noPayload struct {
		ID    int64  `parquet:"id"`
		DEKID string `parquet:"dek_id"`
	}
	if err := parquet.WriteFile(f2, []noPayload{{ID: 40, DEKID: "dek-0000001"}}); err != nil {
		t.Fatal(err)
	}
	checkBudgets(t, j, true, []budgetCase{
		{"", true, `[FAIL] predicted failures: 1 file lacks a configured column; more than the failure budget allows`},
		{"1", false, `[warn] predicted failures: 1 file lacks a configured column; within the failure budget (max_failures=1)`},
	})
	if _, out := planOutcome(t, j, true); !strings.Contains(out, `no column "payload"`) {
		t.Errorf("the missing column is not named:\n%s", out)
	}

	// The second file is cut in half.
	f1 := filepath.Join(d.gen.Data, "part-00001.parquet")
	b, err := os.ReadFile(f1)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f1, b[:len(b)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	checkBudgets(t, j, true, []budgetCase{
		{"", true, "[FAIL] predicted failures: 1 file unreadable, 1 file lacks a configured column: 2 failures in all; more than the failure budget allows"},
		{"1", true, "(max_failures=1)"},
		{"2", false, "within the failure budget (max_failures=2)"},
	})
	j.MaxFailures = ""
	if _, out := planOutcome(t, j, true); !strings.Contains(out, "[FAIL] source data: 2 files will fail as whole files") {
		t.Errorf("the finding is not marked FAIL:\n%s", out)
	}
}

// TestPreflightReadsFootersWhenTheBudgetMayAllow: a run's preflight checks
// the first record file only; when that one fails as a whole and the budget
// is a percentage, it reads every footer, for the share is of all records.
func TestPreflightReadsFootersWhenTheBudgetMayAllow(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 3, 20, 3)
	if err := os.WriteFile(filepath.Join(d.gen.Data, "part-00000.parquet"), []byte("not parquet"), 0o644); err != nil {
		t.Fatal(err)
	}
	j := d.job(schemas.ModeReencrypt, "plan-first", env.KEK("target", "kek-aes"), "")
	checkBudgets(t, j, false, []budgetCase{
		{"", true, "[FAIL] predicted failures: 1 file unreadable"},
		// 1 failure of 3 DEKs + 40 records of the readable files: 2.3%.
		{"5%", false, "predicted: 2.326% of 43 units"},
		{"2%", true, "predicted: 2.326% of 43 units"},
	})
}

// TestPlanRewrapPredictsDEKFailures: in rewrap mode the units are DEK rows.
func TestPlanRewrapPredictsDEKFailures(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 1, 10, 4)
	foreignDEK(t, d, 0)
	j := d.job(schemas.ModeRewrap, "plan-rewrap", env.KEK("target", "kek-aes"), "")
	checkBudgets(t, j, false, []budgetCase{
		{"", true, "[FAIL] predicted failures: 1 DEK names another KEK; more than the failure budget allows"},
		{"1", false, "[warn] predicted failures: 1 DEK names another KEK; within the failure budget (max_failures=1)"},
		{"20%", true, "25% of 4 units"},
	})
}
