package transforms

import (
	"context"
	"sort"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"
	"github.com/apache/beam/sdks/v2/go/pkg/beam/register"

	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/transforms/ledger"
)

func init() {
	register.DoFn3x1[context.Context, []byte, func(*UnitResult) bool, error](&WriteManifestFn{})
	register.Iter1[UnitResult]()
}

// VerifyReportFormat is the format of the report `rekey verify` writes
// (docs/FORMAT.md "Verify report").
const VerifyReportFormat = "rekey-verify/2"

// VerifyReport is what `rekey verify` writes. The field names are stable;
// /2 added compared_with_source, mode, source, ok, counts, ledger and the
// files' kind, source, targets, compared and error to /1.
type VerifyReport struct {
	Format   string        `json:"format"`
	Compared bool          `json:"compared_with_source"` // false: the target alone was checked
	Mode     string        `json:"mode,omitempty"`       // how the source maps to the target: rewrap or reencrypt
	Source   *VerifySource `json:"source,omitempty"`     // what was compared with; absent without a source
	Data     string        `json:"data"`                 // target record dataset ("" for none)
	DEKs     string        `json:"deks"`                 // target DEK table
	KEK      string        `json:"kek"`                  // target KEK, without module path or PIN source
	Finished time.Time     `json:"finished"`
	// OK is the verdict: every source record and DEK is at the target and
	// decrypts (unwraps), nothing is there that the source lacks, and every
	// file read. Without a source: everything the target holds decrypts.
	OK       bool                  `json:"ok"`
	Counts   VerifyTable           `json:"counts"`
	Totals   schemas.Totals        `json:"totals"` // what was read at the target (as in /1)
	Files    []VerifyFile          `json:"files"`
	Failures []schemas.FailureNote `json:"first_failures,omitempty"`
	Ledger   *VerifyLedger         `json:"ledger,omitempty"`
}

// VerifySource is the source a verify compared with.
type VerifySource struct {
	Data string `json:"data"`
	DEKs string `json:"deks"`
}

// VerifyTable is the table `rekey verify` prints.
type VerifyTable struct {
	Records VerifyCounts `json:"records"`
	DEKs    VerifyCounts `json:"deks"`
	Files   VerifyCounts `json:"files"`
}

// VerifyCounts says how the source's records, DEKs or files fared at the
// target. Migrated + failed + missing = source. For records, migrated +
// failed + extra = target too; a source DEK may have target rows from
// several --incremental runs (it is failed if any of them does not
// unwrap). Files: migrated = present on both sides and read; failed = a
// source or target file that could not be read. Without a source, source,
// missing and extra are 0 and migrated / failed count what the target
// holds that does / does not decrypt.
type VerifyCounts struct {
	Source   int64 `json:"source"`   // in the source
	Target   int64 `json:"target"`   // in the target
	Migrated int64 `json:"migrated"` // in both, and decrypts (records) or unwraps (DEKs) at the target
	Failed   int64 `json:"failed"`   // in both, and does not
	Missing  int64 `json:"missing"`  // in the source, not in the target
	Extra    int64 `json:"extra"`    // in the target, not in the source
}

// Add accumulates o into c.
func (c *VerifyCounts) Add(o VerifyCounts) {
	c.Source += o.Source
	c.Target += o.Target
	c.Migrated += o.Migrated
	c.Failed += o.Failed
	c.Missing += o.Missing
	c.Extra += o.Extra
}

// Problems is what keeps the verdict from being OK.
func (c VerifyCounts) Problems() int64 { return c.Failed + c.Missing + c.Extra }

// VerifyFile is one unit of a verify: a record file, or a DEK table file
// (with its targets of several --incremental runs).
type VerifyFile struct {
	Kind     string        `json:"kind"`              // "records" or "deks"
	Path     string        `json:"path"`              // target file: where it is, or should be
	Targets  []string      `json:"targets,omitempty"` // every target file, when there are several
	Source   string        `json:"source,omitempty"`  // source file compared with
	DEKs     int64         `json:"deks,omitempty"`    // DEK table units: DEK rows read at the target
	Records  int64         `json:"records"`           // records read at the target
	Verified int64         `json:"verified"`          // of the rows read, the ones that decrypt / unwrap
	Failed   int64         `json:"failed"`            // target-side failures (rows, and 1 per unreadable file)
	Compared *VerifyCounts `json:"compared,omitempty"`
	Error    string        `json:"error,omitempty"` // why a file could not be read
}

// VerifyLedger is the comparison with the run's ledger. With a source it is
// informational; without one it is all there is to compare with, and
// decides with the rest.
type VerifyLedger struct {
	RunID    string   `json:"run_id"`
	Decides  bool     `json:"decides"`
	Problems []string `json:"problems"`
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
	var r UnitResult
	for results(&r) {
		all.Merge(r)
		r = UnitResult{}
	}
	spec := f.Spec
	var body any
	path := ledger.ManifestPath(spec.Ledger, spec.RunID)
	status := "succeeded"
	if all.Totals.Failed > 0 {
		status = "completed_with_failures"
	}
	body = schemas.Manifest{Format: schemas.ManifestFormat, RunID: spec.RunID, Mode: spec.Mode, Status: status,
		Source:   schemas.ManifestSide{Data: spec.SourceData, DEKs: spec.SourceDEKs, KEK: redactKEK(spec.SourceKEK), Wrap: spec.SourceWrap},
		Target:   schemas.ManifestSide{Data: spec.TargetData, DEKs: spec.TargetDEKs, KEK: redactKEK(spec.TargetKEK), Wrap: spec.TargetWrap},
		Finished: time.Now().UTC(), Totals: all.Totals, Failures: all.Failures, LedgerDir: ledger.RunDir(spec.Ledger, spec.RunID)}
	return ledger.WriteJSON(ctx, path, body)
}

// ManifestInterrupted is the status of a run stopped by a signal: what its
// ledger holds is committed, the rest is not done; a --resume finishes it.
const ManifestInterrupted = "interrupted"

// WriteInterruptedManifest writes the manifest of a run stopped by a
// signal, with the totals of what its ledger holds (streamed), so that
// schedulers and `rekey ledger` see where it stands. It returns them.
func WriteInterruptedManifest(ctx context.Context, spec Spec) (schemas.Manifest, error) {
	m := schemas.Manifest{Format: schemas.ManifestFormat, RunID: spec.RunID, Mode: spec.Mode, Status: ManifestInterrupted,
		Source:    schemas.ManifestSide{Data: spec.SourceData, DEKs: spec.SourceDEKs, KEK: redactKEK(spec.SourceKEK), Wrap: spec.SourceWrap},
		Target:    schemas.ManifestSide{Data: spec.TargetData, DEKs: spec.TargetDEKs, KEK: redactKEK(spec.TargetKEK), Wrap: spec.TargetWrap},
		LedgerDir: ledger.RunDir(spec.Ledger, spec.RunID)}
	err := ledger.Scan(ctx, spec.Ledger, spec.RunID, false, func(rows []schemas.LedgerRow) error {
		for i := range rows {
			m.Totals.Count(&rows[i])
			if rows[i].Status == schemas.StatusFailed && len(m.Failures) < maxFailureNotes {
				m.Failures = append(m.Failures, schemas.FailureNote{Source: rows[i].Source, RecordID: rows[i].RecordID, DEKID: rows[i].DEKID, Error: rows[i].Error})
			}
		}
		return nil
	})
	if err != nil {
		return m, err
	}
	m.Finished = time.Now().UTC()
	return m, ledger.WriteJSON(ctx, ledger.ManifestPath(spec.Ledger, spec.RunID), m)
}

func init() {
	register.DoFn3x1[context.Context, []byte, func(*VerifyResult) bool, error](&WriteVerifyReportFn{})
	register.Iter1[VerifyResult]()
}

// WriteVerifyReportFn gathers every verify unit's result (as a side input,
// so an empty source and target still get a report) and writes the verify
// report to Spec.Report.
type WriteVerifyReportFn struct {
	Spec VerifySpec
}

// ProcessElement writes the report once.
func (f *WriteVerifyReportFn) ProcessElement(ctx context.Context, _ []byte, results func(*VerifyResult) bool) error {
	spec := f.Spec
	rep := VerifyReport{Format: VerifyReportFormat, Data: spec.TargetData, DEKs: spec.TargetDEKs, KEK: redactKEK(spec.TargetKEK), Files: []VerifyFile{}}
	if spec.SourceDEKs != "" || spec.SourceData != "" {
		rep.Compared, rep.Mode = true, spec.Match
		rep.Source = &VerifySource{Data: spec.SourceData, DEKs: spec.SourceDEKs}
	}
	var r VerifyResult
	for results(&r) {
		rep.add(&r)
		r = VerifyResult{}
	}
	sort.Slice(rep.Files, func(i, j int) bool {
		a, b := rep.Files[i], rep.Files[j]
		return a.Kind < b.Kind || a.Kind == b.Kind && a.Path < b.Path
	})
	// Every target row that fails is counted, against the source record
	// or DEK it belongs to, as extra, or (without a source) as failed.
	c := rep.Counts
	rep.OK = c.Records.Problems()+c.DEKs.Problems()+c.Files.Problems() == 0
	rep.Finished = time.Now().UTC()
	return ledger.WriteJSON(ctx, spec.Report, rep)
}

func (rep *VerifyReport) add(r *VerifyResult) {
	rep.Totals.Add(r.Totals)
	for _, n := range r.Failures {
		if len(rep.Failures) >= maxFailureNotes {
			break
		}
		rep.Failures = append(rep.Failures, n)
	}
	f := VerifyFile{Kind: r.Kind, Path: r.Path, Targets: r.Targets, Source: r.Source, Verified: r.Verified,
		Failed: r.Totals.Failed, Error: r.Error}
	if r.Kind == VerifyKindDEKs {
		f.DEKs = r.Read
		rep.Counts.DEKs.Add(r.Counts)
	} else {
		f.Records = r.Read
		rep.Counts.Records.Add(r.Counts)
	}
	if r.Compared {
		c := r.Counts
		f.Compared = &c
	}
	rep.Files = append(rep.Files, f)
	fc := &rep.Counts.Files
	fc.Target += int64(r.TargetFiles)
	hasSource, hasTarget := r.Source != "", r.TargetFiles > 0
	if hasSource {
		fc.Source++
	}
	switch {
	case r.Error != "":
		fc.Failed++
	case hasSource && !hasTarget:
		fc.Missing++
	case !hasTarget:
	case !r.Compared || hasSource:
		fc.Migrated++
	default:
		fc.Extra++
	}
}

// redactKEK is a key reference safe for reports (keys.Redact).
func redactKEK(uri string) string { return keys.Redact(uri) }

// WriteManifest is the last step of every run.
func WriteManifest(s beam.Scope, spec Spec, results beam.PCollection) {
	s = s.Scope("WriteManifest")
	beam.ParDo0(s, &WriteManifestFn{Spec: spec}, beam.Impulse(s), beam.SideInput{Input: results})
}

// WriteVerifyReport is the last step of a verify.
func WriteVerifyReport(s beam.Scope, spec VerifySpec, results beam.PCollection) {
	s = s.Scope("WriteVerifyReport")
	beam.ParDo0(s, &WriteVerifyReportFn{Spec: spec}, beam.Impulse(s), beam.SideInput{Input: results})
}
