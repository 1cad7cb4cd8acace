package transforms

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"
	"time"

	"rekey/providers/keys"
)

// HSM concurrency is probed, not assumed (issue 14, lever 5). A network HSM
// or a KMS serves calls in parallel, so more goroutines than CPUs help; a
// local HSM such as SoftHSM2 serialises them, and a second goroutine only
// adds contention (measured: 0.8x of one). When the job sets no --workers
// and the target is an HSM (its scheme suggests no concurrency of its own),
// the stages whose pace is the custodian's first time a short burst of
// wrap+unwrap round trips of a throwaway key on the target with one
// goroutine and with the default count, and keep the faster; the answer is
// cached per source and target for the process.

// probeTime is how long each side of the probe runs.
var probeTime = 150 * time.Millisecond

// probeMargin is how much faster the larger count must be to be chosen:
// within noise, fewer goroutines cost less CPU.
const probeMargin = 1.10

var probed sync.Map // source + "|" + target KEK -> int

// hsmWorkers is the number of goroutines a custodian-bound stage runs with
// for src -> dst: the job's --workers, a KMS scheme's concurrency, or what
// the probe measured for an HSM target.
func (s *Spec) hsmWorkers(ctx context.Context, src, dst keys.KEK) int {
	n := s.KeyWorkers()
	if s.Workers > 0 || n <= 1 || keys.DefaultConcurrency(s.SourceKEK) > 0 || keys.DefaultConcurrency(s.TargetKEK) > 0 {
		return n
	}
	id := s.SourceKEK + "|" + s.TargetKEK
	if v, ok := probed.Load(id); ok {
		return v.(int)
	}
	g := probeConcurrency(ctx, dst, n)
	v, _ := probed.LoadOrStore(id, g)
	return v.(int)
}

// probeConcurrency returns 1 or n: whichever made more wrap+unwrap round
// trips per second on k in probeTime. Any error (a key that may not wrap,
// a token that refuses) keeps n, the default; the run then meets the error
// where it belongs.
func probeConcurrency(ctx context.Context, k keys.KEK, n int) int {
	one, err := roundTrips(ctx, k, 1)
	if err != nil || one == 0 {
		return n
	}
	many, err := roundTrips(ctx, k, n)
	if err != nil {
		return n
	}
	if many >= one*probeMargin {
		return n
	}
	return 1
}

// roundTrips is how many wrap+unwrap round trips of a throwaway DEK g
// goroutines make on k per second, for probeTime.
func roundTrips(ctx context.Context, k keys.KEK, g int) (float64, error) {
	raw := bytes.Repeat([]byte{0x5a}, keys.DEKSize)
	dek, err := keys.NewDEK(raw)
	clear(raw)
	if err != nil {
		return 0, err
	}
	defer dek.Zero()
	b := keys.ByID("rekey-probe")
	var done atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(probeTime)
	start := time.Now()
	var wg sync.WaitGroup
	for i := 0; i < g; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				w, err := k.Wrap(ctx, b, dek)
				if err == nil {
					var back *keys.DEK
					back, err = k.Unwrap(ctx, b, k.Mechanism(), w)
					if err == nil {
						back.Zero()
					}
				}
				if err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	if e, ok := firstErr.Load().(error); ok {
		return 0, e
	}
	return float64(done.Load()) / time.Since(start).Seconds(), nil
}
