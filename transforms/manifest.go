package transforms

import (
	"context"
	"encoding/json"
	"sort"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"rekey/providers/storage"
	"rekey/schemas"
)

func init() {
	register.DoFn3x1[context.Context, []byte, func(*UnitResult) bool, error](&WriteManifestFn{})
	register.Iter1[UnitResult]()
}

// VerifyReport is what `rekey verify` writes: totals and per-file counts.
type VerifyReport struct {
	Format   string                `json:"format"`
	Data     string                `json:"data"`
	DEKs     string                `json:"deks"`
	KEK      string                `json:"kek"`
	Finished time.Time             `json:"finished"`
	Totals   schemas.Totals        `json:"totals"`
	Files    []VerifyFile          `json:"files"`
	Failures []schemas.FailureNote `json:"first_failures,omitempty"`
}

// VerifyFile is one file's verified count.
type VerifyFile struct {
	Path     string `json:"path"`
	DEKs     int64  `json:"deks,omitempty"` // set for DEK table files
	Records  int64  `json:"records"`
	Verified int64  `json:"verified"`
	Failed   int64  `json:"failed"`
}

// WriteManifestFn gathers every unit's result (as a side input, so an empty
// run still gets a manifest) and writes the run manifest, or the verify
// report in verify mode.
type WriteManifestFn struct {
	Spec Spec
}

// ProcessElement writes the manifest once.
func (f *WriteManifestFn) ProcessElement(ctx context.Context, _ []byte, results func(*UnitResult) bool) error {
	var all UnitResult
	var files []VerifyFile
	var r UnitResult
	for results(&r) {
		all.Merge(r)
		files = append(files, VerifyFile{Path: r.Unit, DEKs: r.Totals.DEKs, Records: r.Totals.Records, Verified: r.Totals.RecordsMigrated, Failed: r.Totals.Failed})
		r = UnitResult{}
	}
	spec := f.Spec
	var body any
	path := ManifestPath(spec.Ledger, spec.RunID)
	if spec.Mode == "verify" {
		sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
		body = VerifyReport{Format: "rekey-verify/1", Data: spec.TargetData, DEKs: spec.TargetDEKs, KEK: redactKEK(spec.TargetKEK),
			Finished: time.Now().UTC(), Totals: all.Totals, Files: files, Failures: all.Failures}
		path = spec.VerifyReport
	} else {
		status := "succeeded"
		if all.Totals.Failed > 0 {
			status = "completed_with_failures"
		}
		body = schemas.Manifest{Format: schemas.ManifestFormat, RunID: spec.RunID, Mode: spec.Mode, Status: status,
			Source:   schemas.ManifestSide{Data: spec.SourceData, DEKs: spec.SourceDEKs, KEK: redactKEK(spec.SourceKEK), Wrap: spec.SourceWrap},
			Target:   schemas.ManifestSide{Data: spec.TargetData, DEKs: spec.TargetDEKs, KEK: redactKEK(spec.TargetKEK), Wrap: spec.TargetWrap},
			Finished: time.Now().UTC(), Totals: all.Totals, Failures: all.Failures, LedgerDir: RunLedgerDir(spec.Ledger, spec.RunID)}
	}
	b, err := json.MarshalIndent(body, "", "  ")
	if err != nil {
		return err
	}
	w, err := storage.Create(ctx, path)
	if err != nil {
		return err
	}
	if _, err := w.Write(append(b, '\n')); err != nil {
		_ = w.Abort()
		return err
	}
	return w.Commit()
}

// redactKEK drops the query part (module path, pin source) of a key URI.
func redactKEK(uri string) string {
	for i := 0; i < len(uri); i++ {
		if uri[i] == '?' {
			return uri[:i]
		}
	}
	return uri
}

// WriteManifest is the last step of every run.
func WriteManifest(s beam.Scope, spec Spec, results beam.PCollection) {
	s = s.Scope("WriteManifest")
	beam.ParDo0(s, &WriteManifestFn{Spec: spec}, beam.Impulse(s), beam.SideInput{Input: results})
}
