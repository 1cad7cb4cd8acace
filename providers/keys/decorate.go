package keys

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
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
// also slows th (when not nil) before the next try.
func (p RetryPolicy) Do(ctx context.Context, op func() error) error {
	attempts, backoff := p.Attempts, p.Base
	if attempts <= 0 {
		attempts = 5
	}
	if backoff <= 0 {
		backoff = 50 * time.Millisecond
	}
	var err error
	for i := 0; i < attempts; i++ {
		err = op()
		if err == nil || !IsRetryable(err) {
			return err
		}
		if i == attempts-1 {
			break
		}
		sleep := time.Duration(rand.Int64N(int64(backoff))) + backoff/2
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(sleep):
		}
		backoff *= 2
	}
	return fmt.Errorf("gave up after %d attempts: %w", attempts, err)
}

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
// process sends to one custodian, whatever keys on it are used.
var (
	limitersMu sync.Mutex
	limiters   = map[string]*rate.Limiter{}
)

// Limiter is the process-wide limiter of custodian id at perSecond.
func Limiter(id string, perSecond float64) *rate.Limiter {
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

// WithRate waits for k's custodian budget before every operation; a rate
// of 0 or less returns k unchanged.
func WithRate(k KEK, perSecond float64) KEK {
	if perSecond <= 0 {
		return k
	}
	return RateKEK{k: k, Lim: Limiter(Custodian(k), perSecond)}
}

// RateKEK is k behind its custodian's rate limiter.
type RateKEK struct {
	k   KEK
	Lim *rate.Limiter
}

func (l RateKEK) wait(ctx context.Context) error {
	if err := l.Lim.Wait(ctx); err != nil {
		return Retryable(fmt.Errorf("custodian rate limit: %w", err))
	}
	return nil
}

func (l RateKEK) Inner() KEK        { return l.k }
func (l RateKEK) URI() string       { return l.k.URI() }
func (l RateKEK) Mechanism() string { return l.k.Mechanism() }
func (l RateKEK) Wrap(ctx context.Context, b Binding, dek *DEK) ([]byte, error) {
	if err := l.wait(ctx); err != nil {
		return nil, err
	}
	return l.k.Wrap(ctx, b, dek)
}
func (l RateKEK) Unwrap(ctx context.Context, b Binding, mech string, w []byte) (*DEK, error) {
	if err := l.wait(ctx); err != nil {
		return nil, err
	}
	return l.k.Unwrap(ctx, b, mech, w)
}
func (l RateKEK) GenerateDEK(ctx context.Context) (*DEK, error) {
	if err := l.wait(ctx); err != nil {
		return nil, err
	}
	return Generate(ctx, l.k)
}
func (l RateKEK) CanRewrapTo(dst KEK, mech string) bool { return CanRewrap(l.k, dst, mech) }
func (l RateKEK) Rewrap(ctx context.Context, q RewrapRequest) (RewrapResult, error) {
	if err := l.wait(ctx); err != nil {
		return RewrapResult{}, err
	}
	return Rewrap(ctx, l.k, q)
}
