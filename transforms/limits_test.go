package transforms

import (
	"context"
	"testing"

	"golang.org/x/time/rate"

	"rekey/providers/keys"
)

// fakeKEK is a fake key backend for unit tests of the wrappers; it holds no
// key and wraps nothing.
type fakeKEK struct{ uri, custodian string }

func (f fakeKEK) URI() string       { return f.uri }
func (f fakeKEK) Mechanism() string { return "aes-gcm" }
func (f fakeKEK) CustodianID() string {
	return f.custodian
}
func (f fakeKEK) Wrap(context.Context, string, *keys.DEK) ([]byte, error) { return []byte{1}, nil }
func (f fakeKEK) Unwrap(context.Context, string, string, []byte) (*keys.DEK, error) {
	return keys.NewDEK(make([]byte, keys.DEKSize))
}

func TestRateLimitIsPerHSM(t *testing.T) {
	a := withRate(fakeKEK{"pkcs11:token=t;object=a", "hsm1"}, 50).(limitedKEK)
	b := withRate(fakeKEK{"pkcs11:token=t;object=b", "hsm1"}, 50).(limitedKEK)
	c := withRate(fakeKEK{"pkcs11:token=u;object=a", "hsm2"}, 50).(limitedKEK)
	if a.lim != b.lim {
		t.Fatal("two keys on one HSM must share its budget")
	}
	if a.lim == c.lim {
		t.Fatal("two HSMs must not share a budget")
	}
	if a.lim.Limit() != rate.Limit(50) || a.lim.Burst() != 5 {
		t.Fatalf("limit %v burst %d", a.lim.Limit(), a.lim.Burst())
	}
	if _, ok := withRate(fakeKEK{}, 0).(limitedKEK); ok {
		t.Fatal("rate 0 must not limit")
	}
	// Each operation takes a token from the HSM's budget (a budget of one
	// operation per 1000 s, so refill cannot interfere).
	slow := withRate(fakeKEK{"pkcs11:token=v;object=a", "hsm3"}, 0.001).(limitedKEK)
	if got := slow.lim.Tokens(); got < 0.99 {
		t.Fatalf("fresh budget has %v tokens", got)
	}
	if _, err := slow.Unwrap(context.Background(), "d", "aes-gcm", nil); err != nil {
		t.Fatal(err)
	}
	if got := slow.lim.Tokens(); got > 0.5 {
		t.Fatalf("an unwrap did not take a token: %v left", got)
	}
}

func TestKeyCacheUnwrapsOncePerKey(t *testing.T) {
	c := newKeyCache(2)
	calls := 0
	load := func() (*keys.DEK, error) { calls++; return keys.NewDEK(make([]byte, keys.DEKSize)) }
	done := make(chan struct{})
	for i := 0; i < 8; i++ {
		go func() { _, _ = c.get("k1", load); done <- struct{}{} }()
	}
	for i := 0; i < 8; i++ {
		<-done
	}
	if calls != 1 {
		t.Fatalf("%d unwraps of one key, want 1", calls)
	}
	k1, _ := c.get("k1", load)
	_, _ = c.get("k2", load)
	_, _ = c.get("k3", load) // evicts k1 (least recently used)
	if calls != 3 {
		t.Fatalf("calls %d", calls)
	}
	for _, b := range k1.dek.Bytes() {
		if b != 0 {
			t.Fatal("evicted key was not zeroed")
		}
	}
	if len(c.entries) != 2 {
		t.Fatalf("cache holds %d keys, bound is 2", len(c.entries))
	}
}

func TestRateLimitKeepsGeneratorHonest(t *testing.T) {
	// fakeKEK has no RNG: behind the limiter it must still have none, so
	// minting falls back to crypto/rand instead of failing.
	if _, ok := generatorOf(withRate(fakeKEK{"pkcs11:token=w;object=a", "hsm4"}, 10)); ok {
		t.Fatal("the rate limiter claims an RNG the key does not have")
	}
	if _, ok := generatorOf(fakeKEK{}); ok {
		t.Fatal("fakeKEK has no RNG")
	}
}
