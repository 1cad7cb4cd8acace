package transforms

import (
	"rekey/schemas"
)

// maxFailureNotes caps the failures a unit reports upstream; the ledger has
// every one.
const maxFailureNotes = 20

// UnitResult is what a unit reports for the manifest: counts and the first
// failures.
type UnitResult struct {
	Unit     string
	Totals   schemas.Totals
	Failures []schemas.FailureNote
}

// note keeps a failure sample (counting is done by Totals.Count).
func (r *UnitResult) note(source, recordID, dekID, msg string) {
	if len(r.Failures) < maxFailureNotes {
		r.Failures = append(r.Failures, schemas.FailureNote{Source: source, RecordID: recordID, DEKID: dekID, Error: msg})
	}
}

// add counts one ledger row and keeps it as a sample if it failed.
func (r *UnitResult) add(l *schemas.LedgerRow) {
	r.Totals.Count(l)
	if l.Status == schemas.StatusFailed {
		r.note(l.Source, l.RecordID, l.DEKID, l.Error)
	}
}

// Merge adds o into r.
func (r *UnitResult) Merge(o UnitResult) {
	r.Totals.Add(o.Totals)
	for _, f := range o.Failures {
		if len(r.Failures) >= maxFailureNotes {
			break
		}
		r.Failures = append(r.Failures, f)
	}
}
