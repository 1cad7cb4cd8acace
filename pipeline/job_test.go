package pipeline_test

import (
	"errors"
	"strings"
	"testing"

	"rekey/pipeline"
)

const goodJob = `
version: 1
mode: reencrypt
run_id: r-1
source:
  data: /data/src
  deks: /data/src-deks
  kek: "pkcs11:token=source;object=kek-aes?pin-source=env:P"
target:
  data: /data/dst
  deks: /data/dst-deks
  kek: "pkcs11:token=target;object=kek-rsa?pin-source=env:Q"
  wrap: rsa-oaep-sha1
ledger: /data/ledger
`

func TestJobValidate(t *testing.T) {
	j, err := pipeline.ParseJob([]byte(goodJob))
	if err != nil {
		t.Fatal(err)
	}
	j.Defaults()
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	if j.Columns.Encrypted[0] != "payload" || j.Columns.DEKID != "dek_id" || j.Columns.RecordID != "id" || j.DEKSource != "hsm" {
		t.Fatalf("defaults: %+v", j)
	}
	for _, tc := range []struct {
		field string
		edit  func(*pipeline.Job)
	}{
		{"mode", func(j *pipeline.Job) { j.Mode = "" }},
		{"mode", func(j *pipeline.Job) { j.Mode = "copy" }},
		{"source.deks", func(j *pipeline.Job) { j.Source.DEKs = "" }},
		{"target.kek", func(j *pipeline.Job) { j.Target.KEK = "" }},
		{"ledger", func(j *pipeline.Job) { j.Ledger = "" }},
		{"source.data", func(j *pipeline.Job) { j.Source.Data = "" }},
		{"target.data", func(j *pipeline.Job) { j.Mode = "rewrap" }},
		{"target.data", func(j *pipeline.Job) { j.Target.Data = "/data/src/out" }},
		{"target.data", func(j *pipeline.Job) { j.Target.Data = "/data" }},
		{"ledger", func(j *pipeline.Job) { j.Ledger = "/data/src-deks/ledger" }},
		{"target.deks", func(j *pipeline.Job) { j.Target.DEKs = "/data/dst/deks" }},
		{"target.wrap", func(j *pipeline.Job) { j.Target.Wrap = "des3" }},
		{"source.kek", func(j *pipeline.Job) { j.Source.KEK = "pkcs11:token=s;object=k?pin-value=1234" }},
		{"source.kek", func(j *pipeline.Job) { j.Source.KEK = "arn:aws:kms:key" }},
		{"run_id", func(j *pipeline.Job) { j.RunID = "../../etc" }},
		{"workers", func(j *pipeline.Job) { j.Workers = -1 }},
		{"dek_source", func(j *pipeline.Job) { j.DEKSource = "dev-random" }},
		{"columns", func(j *pipeline.Job) { j.Columns.DEKID = "payload" }},
		{"columns.encrypted", func(j *pipeline.Job) { j.Columns.Encrypted = []string{"a", "a"} }},
		{"source.hsm_rate", func(j *pipeline.Job) { j.Source.HSMRate = -1 }},
		// A tag kept in its own column: one encrypted column, on either
		// side.
		{"target.format_options", func(j *pipeline.Job) {
			j.Target.Format, j.Target.FormatOptions = "aes-gcm", map[string]string{"tag_column": "payload_tag"}
			j.Columns.Encrypted = []string{"payload", "note"}
		}},
		{"source.format_options", func(j *pipeline.Job) {
			j.Source.Format, j.Source.FormatOptions = "aes-gcm", map[string]string{"tag_column": "payload_tag"}
			j.Columns.Encrypted = []string{"payload", "note"}
		}},
		// One custodian on both sides has one budget: two rates for it
		// cannot both hold.
		{"target.hsm_rate", func(j *pipeline.Job) {
			j.Target.KEK = "pkcs11:token=source;object=kek-2?pin-source=env:P"
			j.Source.HSMRate, j.Target.HSMRate = 10, 20
		}},
	} {
		j, _ := pipeline.ParseJob([]byte(goodJob))
		j.Defaults()
		tc.edit(j)
		err := j.Validate()
		var ce *pipeline.ConfigError
		if !errors.As(err, &ce) || ce.Field != tc.field {
			t.Errorf("want a config error naming %s, got %v", tc.field, err)
		}
	}
	// A side's rate applies to its custodian, and to the other side's too
	// when both are on one custodian.
	j.HSMRate, j.Source.HSMRate = 5, 30
	if s, d, sf, df := j.Rates(); s != 30 || d != 5 || sf != "source.hsm_rate" || df != "hsm_rate" {
		t.Errorf("two custodians: rates %g (%s), %g (%s); want 30 from source.hsm_rate, 5 from hsm_rate", s, sf, d, df)
	}
	j.Target.KEK = "pkcs11:token=source;object=kek-2?pin-source=env:P"
	if s, d, _, df := j.Rates(); s != 30 || d != 30 || df != "source.hsm_rate" {
		t.Errorf("one custodian: rates %g, %g (%s); want 30 for both, from source.hsm_rate", s, d, df)
	}
}

func TestParseJobRejectsTyposAndEmpty(t *testing.T) {
	if _, err := pipeline.ParseJob([]byte(strings.Replace(goodJob, "ledger:", "ledgr:", 1))); err == nil || !strings.Contains(err.Error(), "ledgr") {
		t.Fatalf("typo not reported: %v", err)
	}
	// Issue 15 item 13: the message speaks the job file's terms, not Go's,
	// and suggests the nearest key.
	_, err := pipeline.ParseJob([]byte("version: 1\nmode: rewrap\nsorce: {}\ntarget:\n  dkes: /x\n"))
	if err == nil || strings.Contains(err.Error(), "pipeline.") || !strings.Contains(err.Error(), `did you mean "source"`) ||
		!strings.Contains(err.Error(), `"dkes" in source/target (did you mean "deks"?)`) {
		t.Fatalf("typos: %v", err)
	}
	if _, err := pipeline.ParseJob(nil); err == nil {
		t.Fatal("empty job file accepted")
	}
	if _, err := pipeline.ParseJob([]byte("mode: [")); err == nil {
		t.Fatal("broken YAML accepted")
	}
}

func FuzzParseJob(f *testing.F) {
	f.Add([]byte(goodJob))
	f.Add([]byte("mode: rewrap\n"))
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		j, err := pipeline.ParseJob(b)
		if err != nil {
			return
		}
		j.Defaults()
		if err := j.Validate(); err == nil {
			// A valid job never writes inside what it reads and never carries a PIN.
			if strings.Contains(j.Source.KEK+j.Target.KEK, "pin-value") || j.Ledger == "" || j.Target.DEKs == "" {
				t.Fatalf("accepted %+v", j)
			}
		}
	})
}
