package transforms

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/time/rate"

	"rekey/providers/keys"
)

// Rate limiting: production HSMs are shared, so --hsm-rate caps the
// operations per second this process sends to each HSM (module + token),
// whatever KEKs on it are used. On a distributed runner every worker
// process has its own budget: set the per-worker rate to the cluster budget
// divided by the number of workers (docs/OPERATIONS.md).

var (
	limitersMu sync.Mutex
	limiters   = map[string]*rate.Limiter{}
)

func limiterFor(k keys.KEK, perSecond float64) *rate.Limiter {
	id := k.URI()
	if c, ok := k.(interface{ CustodianID() string }); ok {
		id = c.CustodianID()
	}
	limitersMu.Lock()
	defer limitersMu.Unlock()
	l := limiters[id]
	if l == nil {
		burst := int(perSecond / 10)
		if burst < 1 {
			burst = 1
		}
		l = rate.NewLimiter(rate.Limit(perSecond), burst)
		limiters[id] = l
	}
	return l
}

// limitedKEK waits for its HSM's rate budget before every operation.
type limitedKEK struct {
	keys.KEK
	lim *rate.Limiter
}

func (k limitedKEK) Wrap(ctx context.Context, dekID string, dek *keys.DEK) ([]byte, error) {
	if err := k.lim.Wait(ctx); err != nil {
		return nil, keys.Retryable(fmt.Errorf("HSM rate limit: %w", err))
	}
	return k.KEK.Wrap(ctx, dekID, dek)
}

func (k limitedKEK) Unwrap(ctx context.Context, dekID, mech string, wrapped []byte) (*keys.DEK, error) {
	if err := k.lim.Wait(ctx); err != nil {
		return nil, keys.Retryable(fmt.Errorf("HSM rate limit: %w", err))
	}
	return k.KEK.Unwrap(ctx, dekID, mech, wrapped)
}

func (k limitedKEK) GenerateDEK(ctx context.Context) (*keys.DEK, error) {
	if err := k.lim.Wait(ctx); err != nil {
		return nil, keys.Retryable(fmt.Errorf("HSM rate limit: %w", err))
	}
	return k.KEK.(keys.Generator).GenerateDEK(ctx)
}

// generatorOf returns k's random generator, if its custodian has one: the
// rate limiter offers GenerateDEK only when the key behind it does.
func generatorOf(k keys.KEK) (keys.Generator, bool) {
	if l, ok := k.(limitedKEK); ok {
		if _, ok := l.KEK.(keys.Generator); !ok {
			return nil, false
		}
		return l, true
	}
	g, ok := k.(keys.Generator)
	return g, ok
}

func (k limitedKEK) Matches(ref string) bool { return KEKMatches(k.KEK, ref) }

// withRate wraps k with the per-HSM limiter when a rate is set.
func withRate(k keys.KEK, perSecond float64) keys.KEK {
	if perSecond <= 0 {
		return k
	}
	return limitedKEK{KEK: k, lim: limiterFor(k, perSecond)}
}

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
