package pipeline_test

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"
	"gopkg.in/yaml.v3"

	"rekey/pipeline"
	"rekey/schemas"
)

// cellCheck returns the plan's cell-sample finding.
func cellCheck(t *testing.T, r *pipeline.Report) (ok bool, info string) {
	t.Helper()
	for _, c := range r.Checks {
		if c.Name == "cell samples" {
			return c.OK, c.Info
		}
	}
	t.Fatalf("the plan has no cell-sample check: %+v", r.Checks)
	return false, ""
}

func TestPlanOpensSampleCells(t *testing.T) {
	goOpts := map[string]string{"aad": "{tenant}:{id}", "keys": "column", "key_column": "wrapped_key", "key_encoding": "base64"}
	ds := writeAppDataset(t, goApp{}, env.KEK("source", "kek-aes"), 32, 2, 20, 2, goOpts, tenantAAD)
	with := func(change map[string]string) map[string]string {
		o := maps.Clone(goOpts)
		for k, v := range change {
			if v == "" {
				delete(o, k)
			} else {
				o[k] = v
			}
		}
		return o
	}
	for _, tc := range []struct {
		name string
		opts map[string]string
		want []string // words the finding must hold
	}{
		{"right", goOpts, nil},
		{"wrong aad", with(map[string]string{"aad": "{id}"}), []string{"email", "part-", "aad", "did not authenticate"}},
		{"no aad", with(map[string]string{"aad": ""}), []string{"email", "aad"}},
		{"base64 expected", with(map[string]string{"encoding": "base64"}), []string{"email", "encoding"}},
		{"nonce after", with(map[string]string{"layout": "ciphertext,tag,nonce"}), []string{"layout"}},
		{"key encoding", with(map[string]string{"key_encoding": "hex"}), []string{"wrapped_key", "key_encoding"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds.keyOpts = tc.opts
			j := foreignJob(t, schemas.ModeReencrypt, "plan", ds, env.KEK("target", "kek-aes"))
			if err := j.Validate(); err != nil {
				t.Fatal(err)
			}
			r := pipeline.Plan(context.Background(), j, false)
			ok, info := cellCheck(t, r)
			if tc.want == nil {
				if !ok || r.Failed() {
					t.Fatalf("a right configuration is refused: %s (%+v)", info, r.Checks)
				}
				return
			}
			if ok || !r.Failed() {
				t.Fatalf("plan passes a job whose cells do not open: %s", info)
			}
			for _, w := range tc.want {
				if !strings.Contains(info, w) {
					t.Errorf("finding does not say %q: %s", w, info)
				}
			}
		})
	}
}

// The case that used to pass plan and then fail every record: base64 text
// cells read as rekey's own envelope.
func TestPlanRefusesForeignCellsAsRekeyV1(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 1, 20, 2)
	j := d.job(schemas.ModeReencrypt, "plan-fmt", env.KEK("target", "kek-aes"), "aes-gcm")
	j.Source.Format = "aes-gcm"
	j.Source.FormatOptions = map[string]string{"encoding": "base64"}
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	ok, info := cellCheck(t, pipeline.Plan(context.Background(), j, false))
	if ok || !strings.Contains(info, "encoding") || !strings.Contains(info, "payload") {
		t.Fatalf("rekey-v1 cells read as base64 aes-gcm: plan says %v: %s", ok, info)
	}
	j.Source.Format, j.Source.FormatOptions = "", nil
	j.Target.Format, j.Target.FormatOptions = "", nil
	ok, info = cellCheck(t, pipeline.Plan(context.Background(), j, false))
	if !ok {
		t.Fatalf("rekey-v1 cells with the default format: %s", info)
	}
}

// The same jobs through the rekey binary, as a scheduler runs them: plan,
// run and verify exit codes, for a key-column rewrap and a reencrypt into
// rekey-v1, and a plan that refuses a wrong layout.
func TestForeignJobsThroughTheCLI(t *testing.T) {
	bin := buildRekey(t)
	goOpts := map[string]string{"aad": "{tenant}:{id}", "keys": "column", "key_column": "wrapped_key", "key_encoding": "base64"}
	ds := writeAppDataset(t, goApp{}, env.KEK("source", "kek-aes"), 32, 2, 20, 2, goOpts, tenantAAD)
	writeJob := func(j *pipeline.Job) string {
		b, err := yaml.Marshal(j)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "job.yaml")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, mode := range []string{schemas.ModeRewrap, schemas.ModeReencrypt} {
		j := foreignJob(t, mode, "cli-"+mode, ds, env.KEK("target", "kek-aes"))
		job := writeJob(j)
		if code, out := runCLI(t, bin, "plan", "--job", job); code != 0 {
			t.Fatalf("%s: plan exit %d:\n%s", mode, code, out)
		}
		if code, out := runCLI(t, bin, "run", "--job", job, "--progress", "-1s"); code != 0 {
			t.Fatalf("%s: run exit %d:\n%s", mode, code, out)
		}
		code, out := runCLI(t, bin, "verify", "--job", job)
		switch mode {
		case schemas.ModeReencrypt:
			if code != 0 {
				t.Fatalf("verify of the re-encrypted dataset: exit %d:\n%s", code, out)
			}
		case schemas.ModeRewrap:
			// Every record's wrapped key unwraps with the target KEK and
			// opens its cells, and the record ids match the source's.
			t.Logf("verify of the rewrapped key column:\n%s", out)
			if code != 0 || !strings.Contains(out, "counts match") || strings.Contains(out, "NOT COMPARED") {
				t.Fatalf("verify of the rewrapped key column: exit %d:\n%s", code, out)
			}
			// Under the source KEK they do not: a mismatch, exit 3.
			if code, out := runCLI(t, bin, "verify", "--job", job, "--kek", env.KEK("source", "kek-aes")); code != 3 || !strings.Contains(out, "does not unwrap with the target KEK") {
				t.Fatalf("verify of the rewrapped key column with the source KEK: exit %d, want 3:\n%s", code, out)
			}
		}
	}
	bad := foreignJob(t, schemas.ModeReencrypt, "cli-bad", ds, env.KEK("target", "kek-aes"))
	bad.Source.FormatOptions = maps.Clone(goOpts)
	bad.Source.FormatOptions["layout"] = "ciphertext,tag,nonce"
	code, out := runCLI(t, bin, "run", "--job", writeJob(bad), "--progress", "-1s")
	if code == 0 || !strings.Contains(out, "cell samples") || !strings.Contains(out, "layout") {
		t.Fatalf("a run whose cells do not open in its layout: exit %d:\n%s", code, out)
	}
	if files, _ := filepath.Glob(filepath.Join(bad.Target.Data, "*.parquet")); len(files) > 0 {
		t.Fatalf("a refused run wrote %v", files)
	}
}

// TestPlanCountsBadSampledCells (issue 11): when some sampled cells open
// and one does not (a damaged cell, the format and keys right), its record
// is a predicted failure: the plan fails while max_failures accepts none,
// naming the cell's file, column and record, and passes with a warning
// once the budget accepts it; the run then fails that record and ends
// with failures, as the plan said.
func TestPlanCountsBadSampledCells(t *testing.T) {
	goOpts := map[string]string{"aad": "{tenant}:{id}", "keys": "column", "key_column": "wrapped_key", "key_encoding": "base64"}
	ds := writeAppDataset(t, goApp{}, env.KEK("source", "kek-aes"), 32, 2, 20, 2, goOpts, tenantAAD)
	// Damage the first record's cell (a sampled one) in the application's
	// files, copied so the other tests keep theirs.
	dir := filepath.Join(t.TempDir(), "app")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(ds.dir, "*.parquet"))
	for i, f := range files {
		rows, err := parquet.ReadFile[appRow](f)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			b := []byte(rows[0].Email)
			b[len(b)-1] ^= 0x01
			rows[0].Email = string(b)
		}
		if err := parquet.WriteFile(filepath.Join(dir, filepath.Base(f)), rows); err != nil {
			t.Fatal(err)
		}
	}
	bad := *ds
	bad.dir = dir
	for _, budget := range []string{"", "1"} {
		j := foreignJob(t, schemas.ModeReencrypt, "plan-bad-cell", &bad, env.KEK("target", "kek-aes"))
		j.MaxFailures = budget
		if err := j.Validate(); err != nil {
			t.Fatal(err)
		}
		r := pipeline.Plan(context.Background(), j, true)
		ok, info := cellCheck(t, r)
		if !strings.Contains(info, "1 of 6 sampled cells do not open") || !strings.Contains(info, `column "email"`) || !strings.Contains(info, filepath.Base(files[0])) {
			t.Fatalf("budget %q: the finding does not name the cell: %s", budget, info)
		}
		if r.Predicted.BadCells != 1 {
			t.Fatalf("budget %q: predicted %+v", budget, r.Predicted)
		}
		switch budget {
		case "":
			if ok || !r.Failed() {
				t.Fatalf("no budget: the plan accepts a record it predicts to fail: %+v", r.Checks)
			}
		default:
			if !ok || r.Failed() {
				t.Fatalf("budget %s: the plan fails: %+v", budget, r.Checks)
			}
			m := runJob(t, j)
			if m.Status != "completed_with_failures" || m.Totals.RecordsFailed != 1 {
				t.Fatalf("run: %s %+v", m.Status, m.Totals)
			}
		}
	}
}
