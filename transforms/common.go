package transforms

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"

	"rekey/providers/keys"
	"rekey/providers/storage"
	"rekey/schemas"
)

var (
	cntRecords = beam.NewCounter("rekey", "records")
	cntDEKs    = beam.NewCounter("rekey", "deks")
	cntFailed  = beam.NewCounter("rekey", "failed")
	cntBytes   = beam.NewCounter("rekey", "bytes")
	cntFiles   = beam.NewCounter("rekey", "files")
)

// KEKMatches reports whether a DEK table's kek reference names k.
func KEKMatches(k keys.KEK, ref string) bool {
	if m, ok := k.(interface{ Matches(string) bool }); ok {
		return m.Matches(ref)
	}
	return k.URI() == ref
}

func checksum(parts ...[]byte) string {
	h := sha256.New()
	for _, p := range parts {
		h.Write(p)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// unwrapSource unwraps a DEK table row's key with kek through the cache,
// with retries for transient HSM errors.
func unwrapCached(ctx context.Context, c *keyCache, kek keys.KEK, dekID, mech string, wrapped []byte) (*cachedKey, error) {
	return c.get(cacheKey(kek.URI(), dekID, mech, wrapped), func() (*keys.DEK, error) {
		var dek *keys.DEK
		err := withRetry(ctx, func() (err error) {
			dek, err = kek.Unwrap(ctx, dekID, mech, wrapped)
			return err
		})
		return dek, err
	})
}

// alreadyDone reports whether a unit's ledger part is committed, and if so
// its result recomputed from the part (resume).
func alreadyDone(ctx context.Context, spec *Spec, part, unit string) (UnitResult, bool, error) {
	if !spec.Resume {
		return UnitResult{}, false, nil
	}
	ok, err := storage.Exists(ctx, part)
	if err != nil || !ok {
		return UnitResult{}, false, err
	}
	rows, err := readLedgerPart(ctx, part)
	if err != nil {
		// A committed part that does not read back is redone.
		return UnitResult{}, false, nil
	}
	res := UnitResult{Unit: unit}
	for i := range rows {
		res.add(&rows[i])
	}
	res.Totals.Files = 1
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

// WriteLedgerPart commits rows as one ledger part (a Parquet file).
func WriteLedgerPart(ctx context.Context, path string, rows []schemas.LedgerRow) error {
	w, err := createRows[schemas.LedgerRow](ctx, path)
	if err != nil {
		return err
	}
	if err := w.write(rows); err != nil {
		w.abort()
		return err
	}
	return w.commit()
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
func finishDEKUnit(ctx context.Context, spec *Spec, part, srcPath string, out *rowWriter[schemas.DEKRow],
	ledger *rowWriter[schemas.LedgerRow], readErr error, emit func(UnitResult)) (failed bool, err error) {
	if readErr != nil {
		out.abort()
		ledger.abort()
		if isFatalKeyErr(readErr) {
			return false, readErr
		}
		row, fres := fileFailure(spec, srcPath, 0, readErr)
		if err := WriteLedgerPart(ctx, part, []schemas.LedgerRow{row}); err != nil {
			return false, err
		}
		Progress.Failed.Add(1)
		emit(fres)
		return true, nil
	}
	if err := out.commit(); err != nil {
		ledger.abort()
		return false, err
	}
	return false, ledger.commit()
}
