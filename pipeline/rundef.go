package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"rekey/providers/storage"
	"rekey/schemas/format"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

// RunDefinition is what defines a run: stored in the run's ledger folder
// (`_run.json`) when it starts, and compared field by field when the run id
// is used again (--resume, or a re-run), so a run never mixes two jobs.
// Key references are kept without their query (module path, PIN source):
// those may differ between machines without changing the key.
type RunDefinition struct {
	Format      string    `json:"format"`
	RunID       string    `json:"run_id"`
	Mode        string    `json:"mode"`
	SourceData  string    `json:"source_data,omitempty"`
	SourceDEKs  string    `json:"source_deks"`
	SourceKEK   string    `json:"source_kek"`
	SourceWrap  string    `json:"source_wrap,omitempty"`
	TargetData  string    `json:"target_data,omitempty"`
	TargetDEKs  string    `json:"target_deks"`
	TargetKEK   string    `json:"target_kek"`
	TargetWrap  string    `json:"target_wrap"`
	SourceFmt   string    `json:"source_format,omitempty"`
	TargetFmt   string    `json:"target_format,omitempty"`
	Encrypted   []string  `json:"encrypted"`
	DEKColumn   string    `json:"dek_id_column"`
	IDColumn    string    `json:"record_id_column"`
	DEKSource   string    `json:"dek_source"`
	MaxCell     int       `json:"max_cell_bytes,omitempty"`
	Incremental bool      `json:"incremental,omitempty"`
	Started     time.Time `json:"started"`
}

const runDefFormat = "rekey-run/1"

// RunDefinitionPath is where a run's definition is kept.
func RunDefinitionPath(root, runID string) string { return ledger.DefinitionPath(root, runID) }

// Definition is j's run definition. Call Resolve first so the target wrap
// is the one used, not "".
func (j *Job) Definition() RunDefinition {
	return RunDefinition{Format: runDefFormat, RunID: j.RunID, Mode: j.Mode,
		SourceData: j.Source.Data, SourceDEKs: j.Source.DEKs, SourceKEK: redact(j.Source.KEK), SourceWrap: j.Source.Wrap,
		TargetData: j.Target.Data, TargetDEKs: j.Target.DEKs, TargetKEK: redact(j.Target.KEK), TargetWrap: j.Target.Wrap,
		Encrypted: j.Columns.Encrypted, DEKColumn: j.Columns.DEKID, IDColumn: j.Columns.RecordID, DEKSource: j.DEKSource,
		MaxCell: j.MaxCell, Incremental: j.Incremental, Started: time.Now().UTC().Truncate(time.Second),
		SourceFmt: describeFormat(j.Source), TargetFmt: describeFormat(j.Target)}
}

// describeFormat is a side's configured format in one line ("" for the
// default, so definitions written before formats existed still match).
func describeFormat(s Side) string {
	f, err := format.New(s.Format, s.FormatOptions)
	if err != nil || f.Name() == format.Default {
		return ""
	}
	return f.Describe()
}

// ErrJobChanged is returned when a run id is used again with a job that
// differs from the one the run started with.
var ErrJobChanged = errors.New("the job differs from the one this run started with")

// Diff names the first field where d and o differ ("" if none that
// matters).
func (d RunDefinition) Diff(o RunDefinition) (field, was, now string) {
	type f struct {
		name, a, b string
		loc        bool
	}
	fields := []f{
		{"mode", d.Mode, o.Mode, false},
		{"source.data", d.SourceData, o.SourceData, true},
		{"source.deks", d.SourceDEKs, o.SourceDEKs, true},
		{"source.kek", d.SourceKEK, o.SourceKEK, false},
		{"source.wrap", d.SourceWrap, o.SourceWrap, false},
		{"target.data", d.TargetData, o.TargetData, true},
		{"target.deks", d.TargetDEKs, o.TargetDEKs, true},
		{"target.kek", d.TargetKEK, o.TargetKEK, false},
		{"target.wrap", d.TargetWrap, o.TargetWrap, false},
		{"source.format", d.SourceFmt, o.SourceFmt, false},
		{"target.format", d.TargetFmt, o.TargetFmt, false},
		{"columns.encrypted", strings.Join(d.Encrypted, ","), strings.Join(o.Encrypted, ","), false},
		{"columns.dek_id", d.DEKColumn, o.DEKColumn, false},
		{"columns.record_id", d.IDColumn, o.IDColumn, false},
		{"dek_source", d.DEKSource, o.DEKSource, false},
		{"max_cell_bytes", fmt.Sprint(d.MaxCell), fmt.Sprint(o.MaxCell), false},
		{"incremental", fmt.Sprint(d.Incremental), fmt.Sprint(o.Incremental), false},
	}
	for _, x := range fields {
		a, b := x.a, x.b
		if x.loc && a != "" && b != "" {
			a, b = normLoc(a), normLoc(b)
		}
		if a != b {
			return x.name, x.a, x.b
		}
	}
	return "", "", ""
}

// maxRunDef caps a run definition read back.
const maxRunDef = 1 << 20

// CheckRunDefinition compares j with the definition stored for its run id,
// and stores j's when there is none. resumed reports whether one was found.
// A differing job is refused with an error wrapping ErrJobChanged that names
// the field. Call it while holding the run's lease.
func CheckRunDefinition(ctx context.Context, j *Job) (resumed bool, err error) {
	path := RunDefinitionPath(j.Ledger, j.RunID)
	cur := j.Definition()
	b, err := storage.ReadAll(ctx, path, maxRunDef)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		body, _ := json.MarshalIndent(cur, "", "  ")
		return false, storage.Put(ctx, path, append(body, '\n'))
	case err != nil:
		return false, fmt.Errorf("run %s: read its definition %s: %w", j.RunID, path, err)
	}
	var old RunDefinition
	if err := json.Unmarshal(b, &old); err != nil || old.Format != runDefFormat {
		return false, fmt.Errorf("run %s: %s is not a rekey run definition (%v)", j.RunID, path, err)
	}
	if field, was, now := old.Diff(cur); field != "" {
		hint := "re-run with the original job to finish that run, or start a new run with another --run-id"
		return true, fmt.Errorf("run %s: %w: %s was %q when the run started (%s), now %q; %s",
			j.RunID, ErrJobChanged, field, was, old.Started.Format(time.RFC3339), now, hint)
	}
	return true, nil
}

// Resolve fills what only the keys can tell: the target wrap mechanism
// when the job leaves it to the key type (so the manifest, the output
// metadata and the run definition name the wrap actually used).
func (j *Job) Resolve(ctx context.Context) error {
	if j.Target.Wrap != "" {
		return nil
	}
	k, err := transforms.OpenKEK(ctx, j.Target.KEK, "", 1)
	if err != nil {
		return fmt.Errorf("target KEK: %w", err)
	}
	j.Target.Wrap = k.Mechanism()
	return nil
}
