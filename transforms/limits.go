package transforms

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ErrFailureBudget stops a run that has failed more than --max-failures
// allows.
var ErrFailureBudget = errors.New("failure budget exceeded")

// Budget is a parsed --max-failures: an absolute count or a ratio of the
// units processed so far.
type Budget struct {
	Count int64   // stop when failures exceed this (0: no count limit)
	Ratio float64 // stop when failures/processed exceeds this, after MinUnits
}

// budgetMinUnits is how many units must be processed before a ratio budget
// is enforced, so one early failure does not stop a run at 100%.
const budgetMinUnits = 1000

// ParseBudget reads "", "N" or "P%".
func ParseBudget(s string) (Budget, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Budget{}, nil
	}
	if p, ok := strings.CutSuffix(s, "%"); ok {
		f, err := strconv.ParseFloat(p, 64)
		if err != nil || f <= 0 || f > 100 {
			return Budget{}, fmt.Errorf("max failures %q: want a count (e.g. 100) or a percentage in (0, 100] (e.g. 0.1%%)", s)
		}
		return Budget{Ratio: f / 100}, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return Budget{}, fmt.Errorf("max failures %q: want a count (e.g. 100) or a percentage (e.g. 0.1%%)", s)
	}
	if n == 0 {
		// 0 means: stop at the first failure.
		return Budget{Count: -1}, nil
	}
	return Budget{Count: n}, nil
}

// check reports ErrFailureBudget when this process's failures exceed b.
func (b Budget) check() error {
	failed := Progress.Failed.Load()
	processed := Progress.Records.Load() + Progress.DEKs.Load()
	switch {
	case b.Count < 0 && failed > 0:
		return fmt.Errorf("%w: %d failed and --max-failures is 0; committed work is kept (see the ledger), fix the input and re-run with --resume", ErrFailureBudget, failed)
	case b.Count > 0 && failed > b.Count:
		return fmt.Errorf("%w: %d failed, more than --max-failures %d; committed work is kept (see the ledger), fix the input and re-run with --resume", ErrFailureBudget, failed, b.Count)
	case b.Ratio > 0 && processed >= budgetMinUnits && float64(failed) > b.Ratio*float64(processed):
		return fmt.Errorf("%w: %d of %d failed, more than --max-failures %.4g%%; committed work is kept (see the ledger)", ErrFailureBudget, failed, processed, b.Ratio*100)
	}
	return nil
}
