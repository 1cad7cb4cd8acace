package keys

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Decorators add a policy to any KEK: retries, a rate limit. Each passes
// the optional abilities (Generator, Preflighter, Rewrapper) of the KEK it
// wraps through its own policy; use Generate, CanGenerate, RewrapperOf and
// Preflight rather than type assertions on a decorated KEK.

// Inner is implemented by decorators: the KEK they wrap.
type Inner interface{ Inner() KEK }

func find[T any](k KEK) (T, bool) {
	for k != nil {
		if t, ok := k.(T); ok {
			return t, true
		}
		in, ok := k.(Inner)
		if !ok {
			break
		}
		k = in.Inner()
	}
	var zero T
	return zero, false
}

// Base is the undecorated KEK under k.
func Base(k KEK) KEK {
	for {
		in, ok := k.(Inner)
		if !ok {
			return k
		}
		k = in.Inner()
	}
}

// Reserve asks k's custodian for n concurrent operations (see Reserver)
// and returns how many it can run at once: n when it sets no limit.
func Reserve(k KEK, n int) (int, error) {
	r, ok := find[Reserver](Base(k))
	if !ok {
		return n, nil
	}
	return r.Reserve(n)
}

// CanGenerate reports whether k's custodian has a random generator.
func CanGenerate(k KEK) bool {
	_, ok := find[Generator](Base(k))
	return ok
}

// Generate asks k's custodian for a fresh DEK, through k's decorators.
func Generate(ctx context.Context, k KEK) (*DEK, error) {
	if g, ok := k.(Generator); ok {
		return g.GenerateDEK(ctx)
	}
	return nil, fmt.Errorf("%w: %s has no random generator", ErrMechanism, Redact(k.URI()))
}

// Preflight runs k's own checks, if it has any.
func Preflight(ctx context.Context, k KEK, needWrap, needUnwrap bool) ([]Check, bool) {
	p, ok := find[Preflighter](Base(k))
	if !ok {
		return nil, false
	}
	return p.Preflight(ctx, needWrap, needUnwrap), true
}

// CanRewrap reports whether src's custodian can rewrap keys of mechanism
// mech to dst itself.
func CanRewrap(src, dst KEK, mech string) bool {
	r, ok := find[Rewrapper](Base(src))
	return ok && r.CanRewrapTo(Base(dst), mech)
}

// Rewrap asks src's custodian to rewrap r (see Rewrapper), through src's
// decorators; r.Dst may be decorated (its Base is passed on).
func Rewrap(ctx context.Context, src KEK, r RewrapRequest) (RewrapResult, error) {
	r.Dst = Base(r.Dst)
	if rw, ok := src.(Rewrapper); ok {
		return rw.Rewrap(ctx, r)
	}
	return RewrapResult{}, fmt.Errorf("%w: %s cannot rewrap inside its custodian", ErrNoRewrap, Redact(src.URI()))
}

// RetryPolicy bounds retries of transient errors.
type RetryPolicy struct {
	Attempts int           // total tries; 0 = 5
	Base     time.Duration // first backoff; 0 = 50ms
}

// Do runs op, retrying errors marked retryable with exponential backoff
// and full jitter; permanent errors return at once. A throttled answer
// (ErrThrottled) is the custodian asking for less, not a failure: it does
// not use up the Attempts (up to maxThrottled of them are waited out, the
// backoff capped at maxThrottleWait), and RateKEK has already slowed the
// custodian's shared budget.
func (p RetryPolicy) Do(ctx context.Context, op func() error) error {
	attempts, backoff := p.Attempts, p.Base
	if attempts <= 0 {
		attempts = 5
	}
	if backoff <= 0 {
		backoff = 50 * time.Millisecond
	}
	var err error
	for tries, throttled := 0, 0; ; {
		err = op()
		if err == nil || !IsRetryable(err) {
			return err
		}
		if errors.Is(err, ErrThrottled) && throttled < maxThrottled {
			throttled++
		} else if tries++; tries >= attempts {
			break
		}
		sleep := time.Duration(rand.Int64N(int64(backoff))) + backoff/2
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(sleep):
		}
		backoff = min(backoff*2, maxThrottleWait)
	}
	return fmt.Errorf("gave up after %d attempts: %w", attempts, err)
}

// Throttled answers one operation may wait out, and the longest wait
// between two tries: about a minute of a custodian saying "slower" before
// the operation counts as failed.
const (
	maxThrottled    = 30
	maxThrottleWait = 2 * time.Second
)

// WithRetry retries k's transient failures with p.
func WithRetry(k KEK, p RetryPolicy) KEK { return retryKEK{k, p} }

type retryKEK struct {
	k KEK
	p RetryPolicy
}

func (r retryKEK) Inner() KEK        { return r.k }
func (r retryKEK) URI() string       { return r.k.URI() }
func (r retryKEK) Mechanism() string { return r.k.Mechanism() }
func (r retryKEK) Wrap(ctx context.Context, b Binding, dek *DEK) (out []byte, err error) {
	err = r.p.Do(ctx, func() (e error) { out, e = r.k.Wrap(ctx, b, dek); return e })
	return out, err
}
func (r retryKEK) Unwrap(ctx context.Context, b Binding, mech string, w []byte) (d *DEK, err error) {
	err = r.p.Do(ctx, func() (e error) { d, e = r.k.Unwrap(ctx, b, mech, w); return e })
	return d, err
}
func (r retryKEK) GenerateDEK(ctx context.Context) (d *DEK, err error) {
	err = r.p.Do(ctx, func() (e error) { d, e = Generate(ctx, r.k); return e })
	return d, err
}
func (r retryKEK) CanRewrapTo(dst KEK, mech string) bool { return CanRewrap(r.k, dst, mech) }
func (r retryKEK) Rewrap(ctx context.Context, q RewrapRequest) (out RewrapResult, err error) {
	err = r.p.Do(ctx, func() (e error) { out, e = Rewrap(ctx, r.k, q); return e })
	return out, err
}

// Rate limits are per custodian (Custodian): production HSMs and KMS
// instances are shared, so a budget caps the operations per second this
// process sends to one custodian, whatever keys on it are used. The budget
// adapts: a throttled answer (ErrThrottled) halves it, and successes bring
// it back up to the configured rate step by step (additive increase,
// multiplicative decrease), so a run started at too high a rate settles at
// what the custodian takes and finishes slower instead of failing.
var (
	limitersMu sync.Mutex
	limiters   = map[string]*Budget{}
)

// Budget is one custodian's shared, adaptive rate limit.
type Budget struct {
	*rate.Limiter
	ceil atomic.Uint64 // math.Float64bits of the configured rate: the ceiling the budget recovers to

	mu      sync.Mutex
	lastCut time.Time
}

// minRate is the floor a budget is never cut below (operations/s).
const minRate = 1

// throttled halves the budget, at most once per cutEvery (a burst of
// throttled answers to requests already in flight is one signal).
func (b *Budget) throttled() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if time.Since(b.lastCut) < cutEvery {
		return
	}
	b.lastCut = time.Now()
	b.SetLimit(rate.Limit(max(float64(b.Limit())/2, minRate)))
}

// ok raises the budget by a small step toward its ceiling.
func (b *Budget) ok() {
	cur, top := float64(b.Limit()), b.max()
	if cur >= top {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if cur, top = float64(b.Limit()), b.max(); cur < top {
		b.SetLimit(rate.Limit(min(cur+max(top/500, 0.05), top)))
	}
}

// max is the configured rate.
func (b *Budget) max() float64 { return math.Float64frombits(b.ceil.Load()) }

// cutEvery is the shortest time between two cuts of a budget.
const cutEvery = 250 * time.Millisecond

// Limiter is the process-wide budget of custodian id at perSecond. A
// budget asked for at another rate than it has takes that rate (a job
// sets one rate per custodian; a later job in the same process may set
// another); asked again at its rate, it keeps any cut from throttling.
func Limiter(id string, perSecond float64) *Budget {
	limitersMu.Lock()
	defer limitersMu.Unlock()
	burst := max(int(perSecond/10), 1)
	l := limiters[id]
	if l == nil {
		l = &Budget{Limiter: rate.NewLimiter(rate.Limit(perSecond), burst)}
		l.ceil.Store(math.Float64bits(perSecond))
		limiters[id] = l
	} else if perSecond > 0 && l.max() != perSecond {
		l.mu.Lock()
		l.ceil.Store(math.Float64bits(perSecond))
		l.SetLimit(rate.Limit(perSecond))
		l.SetBurst(burst)
		l.mu.Unlock()
	}
	return l
}

// BudgetOf is custodian id's budget in this process, nil when none was made.
func BudgetOf(id string) *Budget {
	limitersMu.Lock()
	defer limitersMu.Unlock()
	return limiters[id]
}

// WithRate waits for k's custodian budget before every operation. A rate
// of 0 or less takes the scheme's default (Scheme.Rate: a KMS's published
// quota); with none either, k is returned unchanged.
func WithRate(k KEK, perSecond float64) KEK {
	if perSecond <= 0 {
		perSecond = DefaultRate(k)
	}
	if perSecond <= 0 {
		return k
	}
	return RateKEK{k: k, Lim: Limiter(Custodian(k), perSecond)}
}

// RateKEK is k behind its custodian's budget.
type RateKEK struct {
	k   KEK
	Lim *Budget
}

func (l RateKEK) wait(ctx context.Context) error {
	if err := l.Lim.Wait(ctx); err != nil {
		return Retryable(fmt.Errorf("custodian rate limit: %w", err))
	}
	return nil
}

// done feeds an operation's outcome back into the budget.
func (l RateKEK) done(err error) {
	switch {
	case err == nil:
		l.Lim.ok()
	case errors.Is(err, ErrThrottled):
		l.Lim.throttled()
	}
}

func (l RateKEK) Inner() KEK        { return l.k }
func (l RateKEK) URI() string       { return l.k.URI() }
func (l RateKEK) Mechanism() string { return l.k.Mechanism() }
func (l RateKEK) Wrap(ctx context.Context, b Binding, dek *DEK) (out []byte, err error) {
	if err := l.wait(ctx); err != nil {
		return nil, err
	}
	defer func() { l.done(err) }()
	return l.k.Wrap(ctx, b, dek)
}
func (l RateKEK) Unwrap(ctx context.Context, b Binding, mech string, w []byte) (d *DEK, err error) {
	if err := l.wait(ctx); err != nil {
		return nil, err
	}
	defer func() { l.done(err) }()
	return l.k.Unwrap(ctx, b, mech, w)
}
func (l RateKEK) GenerateDEK(ctx context.Context) (d *DEK, err error) {
	if err := l.wait(ctx); err != nil {
		return nil, err
	}
	defer func() { l.done(err) }()
	return Generate(ctx, l.k)
}
func (l RateKEK) CanRewrapTo(dst KEK, mech string) bool { return CanRewrap(l.k, dst, mech) }
func (l RateKEK) Rewrap(ctx context.Context, q RewrapRequest) (res RewrapResult, err error) {
	if err := l.wait(ctx); err != nil {
		return RewrapResult{}, err
	}
	defer func() { l.done(err) }()
	return Rewrap(ctx, l.k, q)
}
