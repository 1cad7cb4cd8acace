package transforms

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"rekey/providers/keys"
)

// slowKEK takes d per call; serial makes its calls one at a time, as a
// local HSM does (SoftHSM2 serialises), and a call made while another
// waits takes half as long again (the contention that makes a second
// goroutine slower on SoftHSM2); else calls run in parallel, as a network
// HSM's do.
type slowKEK struct {
	d       time.Duration
	serial  bool
	mu      sync.Mutex
	waiting atomic.Int32
}

func (k *slowKEK) URI() string       { return "test:slow" }
func (k *slowKEK) Mechanism() string { return "test" }
func (k *slowKEK) call() {
	if k.serial {
		k.waiting.Add(1)
		k.mu.Lock()
		defer k.mu.Unlock()
		if k.waiting.Add(-1) > 0 {
			time.Sleep(k.d / 2)
		}
	}
	time.Sleep(k.d)
}
func (k *slowKEK) Wrap(_ context.Context, _ keys.Binding, d *keys.DEK) ([]byte, error) {
	k.call()
	return append([]byte(nil), d.Bytes()...), nil
}
func (k *slowKEK) Unwrap(_ context.Context, _ keys.Binding, _ string, w []byte) (*keys.DEK, error) {
	k.call()
	return keys.NewDEK(append([]byte(nil), w...))
}

// TestProbeConcurrency (issue 14, lever 5): a custodian that serialises
// its calls gets one goroutine, one that serves them in parallel gets the
// default count.
func TestProbeConcurrency(t *testing.T) {
	old := probeTime
	probeTime = 100 * time.Millisecond
	defer func() { probeTime = old }()
	ctx := context.Background()
	if g := probeConcurrency(ctx, &slowKEK{d: 500 * time.Microsecond, serial: true}, 4); g != 1 {
		t.Errorf("a serialising custodian: %d goroutines, want 1", g)
	}
	if g := probeConcurrency(ctx, &slowKEK{d: 500 * time.Microsecond}, 4); g != 4 {
		t.Errorf("a parallel custodian: %d goroutines, want 4", g)
	}
	// --workers set: no probe, the job's count.
	s := &Spec{Workers: 3, SourceKEK: "pkcs11:token=a;object=b", TargetKEK: "pkcs11:token=a;object=c"}
	if g := s.hsmWorkers(ctx, nil, &slowKEK{serial: true}); g != 3 {
		t.Errorf("--workers 3: %d", g)
	}
}
