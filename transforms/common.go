package transforms

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"

	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/transforms/ledger"
)

var (
	cntRecords = beam.NewCounter("rekey", "records")
	cntDEKs    = beam.NewCounter("rekey", "deks")
	cntFailed  = beam.NewCounter("rekey", "failed")
	cntBytes   = beam.NewCounter("rekey", "bytes")
	cntFiles   = beam.NewCounter("rekey", "files")
)

// KEKMatches reports whether a DEK table's kek reference names k.
func KEKMatches(k keys.KEK, ref string) bool { return keys.Matches(k, ref) }

func checksum(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// unwrapCached unwraps a DEK table row's key with kek through the cache
// (kek retries transient custodian errors itself).
func unwrapCached(ctx context.Context, c *keys.Cache, kek keys.KEK, b keys.Binding, mech string, wrapped []byte) (*cachedKey, error) {
	return cachedAEAD(c.Get(keys.CacheKey(kek.URI(), b, mech, wrapped), func() (*keys.DEK, error) {
		return kek.Unwrap(ctx, b, mech, wrapped)
	}))
}

// alreadyDone reports whether a unit's ledger part is committed with
// nothing failed, and if so its result recomputed from the part (resume).
// A unit whose last attempt has failed rows is done again: *part becomes
// the name of the next attempt's part, so the earlier rows are kept and
// the later ones win (ledger readers take the highest attempt).
func alreadyDone(ctx context.Context, spec *Spec, part *string, unit string) (UnitResult, bool, error) {
	if !spec.Resume {
		return UnitResult{}, false, nil
	}
	last, n, err := ledger.LastAttempt(ctx, *part)
	if err != nil || n == 0 {
		return UnitResult{}, false, err
	}
	rows, err := ledger.ReadPart(ctx, last)
	if err != nil {
		// A committed part that does not read back is redone.
		*part = ledger.AttemptPart(*part, n+1)
		return UnitResult{}, false, nil
	}
	res := UnitResult{Unit: unit}
	for i := range rows {
		res.add(&rows[i])
	}
	res.Totals.Files = 1
	if res.Totals.Failed > 0 {
		*part = ledger.AttemptPart(*part, n+1)
		return UnitResult{}, false, nil
	}
	return res, true, nil
}

func now() time.Time { return time.Now().UTC().Truncate(time.Microsecond) }

func fileFailure(spec *Spec, src string, size int64, err error) (schemas.LedgerRow, UnitResult) {
	row := schemas.LedgerRow{RunID: spec.RunID, Mode: spec.Mode, Unit: schemas.UnitFile, Source: src,
		Status: schemas.StatusFailed, Error: err.Error(), Bytes: size, At: now()}
	res := UnitResult{Unit: src}
	res.Totals.Files = 1
	res.add(&row)
	return row, res
}

func errorsIs(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

// finishDEKUnit ends a DEK table unit. After a read error the pending
// outputs are dropped and the unit becomes one failed file row (failed is
// true), unless the error is fatal for the run. Otherwise the new DEK table
// file is committed, then its ledger part (the unit's commit marker).
func finishDEKUnit(ctx context.Context, spec *Spec, part, srcPath string, out dekOut,
	led *ledger.Writer, readErr error, emit func(UnitResult)) (failed bool, err error) {
	if readErr != nil {
		out.abort()
		led.Abort()
		if stops(readErr) {
			return false, readErr
		}
		row, fres := fileFailure(spec, srcPath, 0, readErr)
		fres.Totals.DEKTableFiles = 1
		if err := ledger.WritePart(ctx, part, []schemas.LedgerRow{row}); err != nil {
			return false, err
		}
		Progress.Failed.Add(1)
		emit(fres)
		return true, nil
	}
	if err := out.commit(); err != nil {
		led.Abort()
		return false, err
	}
	return false, led.Commit()
}
