package keys

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// fakeKEK is a fake key backend for unit tests of the wrappers; it holds no
// key and wraps nothing.
type fakeKEK struct{ uri, custodian string }

func (f fakeKEK) URI() string       { return f.uri }
func (f fakeKEK) Mechanism() string { return "aes-gcm" }
func (f fakeKEK) CustodianID() string {
	return f.custodian
}
func (f fakeKEK) Wrap(context.Context, Binding, *DEK) ([]byte, error) { return []byte{1}, nil }
func (f fakeKEK) Unwrap(context.Context, Binding, string, []byte) (*DEK, error) {
	return NewDEK(make([]byte, DEKSize))
}

func TestRateLimitIsPerHSM(t *testing.T) {
	a := WithRate(fakeKEK{"pkcs11:token=t;object=a", "hsm1"}, 50).(RateKEK)
	b := WithRate(fakeKEK{"pkcs11:token=t;object=b", "hsm1"}, 50).(RateKEK)
	c := WithRate(fakeKEK{"pkcs11:token=u;object=a", "hsm2"}, 50).(RateKEK)
	if a.Lim != b.Lim {
		t.Fatal("two keys on one HSM must share its budget")
	}
	if a.Lim == c.Lim {
		t.Fatal("two HSMs must not share a budget")
	}
	if a.Lim.Limit() != rate.Limit(50) || a.Lim.Burst() != 5 {
		t.Fatalf("limit %v burst %d", a.Lim.Limit(), a.Lim.Burst())
	}
	if _, ok := WithRate(fakeKEK{}, 0).(RateKEK); ok {
		t.Fatal("rate 0 must not limit")
	}
	// Each operation takes a token from the HSM's budget (a budget of one
	// operation per 1000 s, so refill cannot interfere).
	slow := WithRate(fakeKEK{"pkcs11:token=v;object=a", "hsm3"}, 0.001).(RateKEK)
	if got := slow.Lim.Tokens(); got < 0.99 {
		t.Fatalf("fresh budget has %v tokens", got)
	}
	if _, err := slow.Unwrap(context.Background(), ByID("d"), "aes-gcm", nil); err != nil {
		t.Fatal(err)
	}
	if got := slow.Lim.Tokens(); got > 0.5 {
		t.Fatalf("an unwrap did not take a token: %v left", got)
	}
}

func TestKeyCacheUnwrapsOncePerKey(t *testing.T) {
	c := NewCache(2)
	calls := 0
	load := func() (*DEK, error) { calls++; return NewDEK(make([]byte, DEKSize)) }
	done := make(chan struct{})
	for i := 0; i < 8; i++ {
		go func() { _, _ = c.Get("k1", load); done <- struct{}{} }()
	}
	for i := 0; i < 8; i++ {
		<-done
	}
	if calls != 1 {
		t.Fatalf("%d unwraps of one key, want 1", calls)
	}
	k1, _ := c.Get("k1", load)
	_, _ = c.Get("k2", load)
	_, _ = c.Get("k3", load) // evicts k1 (least recently used)
	if calls != 3 {
		t.Fatalf("calls %d", calls)
	}
	for _, b := range k1.Bytes() {
		if b != 0 {
			t.Fatal("evicted key was not zeroed")
		}
	}
	if c.Len() != 2 {
		t.Fatalf("cache holds %d keys, bound is 2", len(c.entries))
	}
}

func TestRateLimitKeepsGeneratorHonest(t *testing.T) {
	// fakeKEK has no RNG: behind the limiter it must still have none, so
	// minting falls back to crypto/rand instead of failing.
	if CanGenerate(WithRetry(WithRate(fakeKEK{"pkcs11:token=w;object=a", "hsm4"}, 10), RetryPolicy{})) {
		t.Fatal("the decorators claim an RNG the key does not have")
	}
	if CanGenerate(fakeKEK{}) {
		t.Fatal("fakeKEK has no RNG")
	}
	if _, err := Generate(context.Background(), WithRate(fakeKEK{"pkcs11:token=w;object=a", "hsm4"}, 10)); err == nil {
		t.Fatal("Generate through the limiter invented an RNG")
	}
}

// quotaKEK is a custodian with a request quota: past perSecond requests a
// second it answers "throttled", as a KMS answers HTTP 429.
type quotaKEK struct {
	fakeKEK
	lim       *rate.Limiter
	throttled atomic.Int64
}

func (q *quotaKEK) Wrap(ctx context.Context, b Binding, d *DEK) ([]byte, error) {
	if !q.lim.Allow() {
		q.throttled.Add(1)
		return nil, Retryable(fmt.Errorf("wrap: HTTP 429: %w", ErrThrottled))
	}
	return q.fakeKEK.Wrap(ctx, b, d)
}

// TestThrottlingSlowsTheBudgetInsteadOfFailing: a run configured at 20x
// what the custodian takes finishes every operation (none fails), the
// custodian's shared budget was cut below the configured rate, and it
// recovers toward it once answers succeed again.
func TestThrottlingSlowsTheBudgetInsteadOfFailing(t *testing.T) {
	q := &quotaKEK{fakeKEK: fakeKEK{uri: "fake:quota", custodian: "quota-1"}, lim: rate.NewLimiter(100, 10)}
	k := WithRetry(WithRate(q, 2000), RetryPolicy{Attempts: 3, Base: 5 * time.Millisecond})
	d, _ := NewDEK(make([]byte, 32))
	var wg sync.WaitGroup
	var failed atomic.Int64
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				if _, err := k.Wrap(t.Context(), ByID("x"), d); err != nil {
					failed.Add(1)
					t.Errorf("wrap failed although the custodian only asked for less: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b := Limiter("quota-1", 0)
	cut := float64(b.Limit())
	if failed.Load() != 0 || q.throttled.Load() == 0 || cut >= 2000 {
		t.Fatalf("failed %d, throttled answers %d, budget now %.0f/s (configured 2000/s): want no failure, some throttling, a cut budget", failed.Load(), q.throttled.Load(), cut)
	}
	for i := 0; i < 200; i++ {
		b.ok()
	}
	if up := float64(b.Limit()); up <= cut {
		t.Errorf("the budget did not recover after successes: %.1f/s, was %.1f/s", up, cut)
	}
}

// TestSchemelessReferenceIsRefused: a reference without a scheme is a
// clear error (it once recursed through Redact until the stack overflowed).
func TestSchemelessReferenceIsRefused(t *testing.T) {
	for _, ref := range []string{"", "kek-aes", "token=src;object=k?pin-source=env:X"} {
		if _, err := Open(t.Context(), ref, Options{}); !errors.Is(err, ErrBadURI) || strings.Contains(err.Error(), "pin-source") {
			t.Errorf("Open(%q): %v; want ErrBadURI without the query", ref, err)
		}
		if DefaultRate(fakeKEK{uri: ref}) != 0 {
			t.Errorf("DefaultRate of %q is not 0", ref)
		}
	}
}
