package transforms

import (
	"context"
	"fmt"

	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/schemas/format"
)

// Proof before commit. A custodian can return a wrong key without an error
// (a faulty HSM, a bit flipped on the way). Round-tripping the new wrap
// cannot notice that: the wrong key is wrapped, unwrapped and compared with
// itself. So before a DEK's new wrap is committed, the unwrapped source DEK
// is shown to be the key its row was written for, by the first of:
//
//   - kcv: the row's key check value (schemas.CheckKCV);
//   - cell: a cell of the job's dataset encrypted under that dek_id opens
//     with it (rewrap, when the table has no kcv and the job names
//     source.data; SampleCells picks the cells);
//   - none: nothing to check against. The ledger says so.
//
// A DEK that fails its proof is a failed ledger row and is not committed.
// This file is the one place that decides; RewrapFn and MintDEKsFn call it.

// cellSamples is the side input of SampleCells, by dek_id.
type cellSamples struct {
	byDEK   map[string]*SampleCell
	problem string // a record file that could not be sampled ("" if none)
}

// has reports whether proveDEK would look for a cell of dekID: a
// custodian-side rewrap that proved nothing inside must then check the key.
func (cs *cellSamples) has(dekID string) bool {
	return cs != nil && (cs.byDEK[dekID] != nil || cs.problem != "")
}

func loadSamples(iter func(*SampleCell) bool) *cellSamples {
	cs := &cellSamples{byDEK: map[string]*SampleCell{}}
	var sc SampleCell
	for iter(&sc) {
		c := sc
		if c.DEKID == "" {
			cs.problem = c.Problem
			continue
		}
		cs.byDEK[c.DEKID] = &c
	}
	return cs
}

// proveDEK checks dek, unwrapped by src from row r, before its new wrap is
// committed, and returns the proof it had (schemas.Proof*). samples is nil
// where cells are not used (re-encrypt: every cell is opened anyway). A
// non-nil error fails the DEK; it is permanent.
func proveDEK(ctx context.Context, spec *Spec, src keys.KEK, r *schemas.DEKRow, dek *keys.DEK, samples *cellSamples) (string, error) {
	if len(r.KCV) > 0 {
		if err := schemas.CheckKCV(dek.Bytes(), r.DEKID, r.KCV); err != nil {
			return schemas.ProofKCV, fmt.Errorf("dek_id %q: the source custodian %s returned a wrong key: %w (the DEK table's kcv does not match the key it unwrapped). "+
				"Nothing was committed for this DEK; a resume (--resume) tries it again. If it repeats, have the HSM checked: it returns wrong keys without reporting an error",
				r.DEKID, src.URI(), err)
		}
		return schemas.ProofKCV, nil
	}
	if samples == nil {
		return schemas.ProofNone, nil
	}
	sc := samples.byDEK[r.DEKID]
	if sc == nil {
		if samples.problem != "" {
			return schemas.ProofNone, fmt.Errorf("dek_id %q has no kcv and no cell of it was found to prove the unwrapped key, but source.data could not be read whole (%s): "+
				"fix or remove that file and resume (--resume), so a cell under this DEK can be found if there is one", r.DEKID, samples.problem)
		}
		// No record of the dataset uses this DEK: nothing can be checked,
		// and nothing of the dataset depends on it.
		return schemas.ProofNone, nil
	}
	cell := sc.Cell
	if cell == nil {
		var err error
		if cell, err = readSampleCell(ctx, spec, sc); err != nil {
			return schemas.ProofCell, fmt.Errorf("dek_id %q: read the cell that proves its key (record %q, column %q of %s): %w; resume (--resume) to try again",
				r.DEKID, sc.RecordID, sc.Column, sc.File, err)
		}
	}
	sf, _, err := spec.Formats()
	if err != nil {
		return schemas.ProofCell, err
	}
	aead, err := sf.Cipher(dek.Bytes())
	if err != nil {
		return schemas.ProofCell, fmt.Errorf("dek_id %q: %w", r.DEKID, err)
	}
	pt, err := sf.Open(nil, aead, cell, &format.Cell{Column: sc.Column, RecordID: sc.RecordID, DEKID: r.DEKID, Fields: sc.Fields})
	clear(pt)
	if err != nil {
		return schemas.ProofCell, fmt.Errorf("dek_id %q: the key the source custodian %s returned does not open record %q, column %q of %s: %w. "+
			"Either the custodian returned a wrong key or that cell is corrupt (rekey verify on the source data, DEK table and KEK names corrupt cells). "+
			"Nothing was committed for this DEK; a resume (--resume) tries it again. If it repeats and the cell is sound, have the HSM checked",
			r.DEKID, src.URI(), sc.RecordID, sc.Column, sc.File, err)
	}
	return schemas.ProofCell, nil
}
