package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/apache/beam/sdks/v2/go/pkg/beam"

	"rekey/pipeline"
	"rekey/providers/keys"
	"rekey/schemas"
	"rekey/transforms"
	"rekey/transforms/ledger"
)

// faultyKEK is a fake key backend for fault injection: it wraps a real
// SoftHSM KEK and makes its first calls fail the way a shared HSM does.
// URI: fake-faulty:<mode>:<inner pkcs11 URI>, mode "transient" (the first
// two unwraps of each DEK fail with CKR_DEVICE_ERROR, marked retryable) or "panic" (the
// first wrap panics, as crypto11's Seal does on HSM errors) or "auth"
// (every unwrap fails with a permanent authentication error).
type faultyKEK struct {
	keys.KEK
	mode  string
	mu    sync.Mutex
	tries map[string]int // per DEK, for "transient"
	wraps atomic.Int64
}

var registerFaulty sync.Once

func faulty(t *testing.T, mode, inner string) string {
	registerFaulty.Do(func() {
		keys.Register(keys.Scheme{Name: "fake-faulty", Open: func(ctx context.Context, uri string, opts keys.Options) (keys.KEK, error) {
			parts := strings.SplitN(uri, ":", 3)
			k, err := keys.Open(ctx, parts[2], opts)
			if err != nil {
				return nil, err
			}
			return &faultyKEK{KEK: k, mode: parts[1], tries: map[string]int{}}, nil
		}, Parse: func(uri string) (keys.Ref, error) {
			parts := strings.SplitN(uri, ":", 3)
			if len(parts) < 3 {
				return keys.Ref{}, keys.ErrBadURI
			}
			r, err := keys.ParseRef(parts[2])
			r.Scheme, r.Canonical, r.Redacted = "fake-faulty", uri, parts[0]+":"+parts[1]+":"+r.Redacted
			return r, err
		}})
	})
	return "fake-faulty:" + mode + ":" + inner
}

// URI differs from the inner key's so the process DEK cache (warm from
// generating the dataset) does not hide the injected faults.
func (f *faultyKEK) URI() string { return "fake-faulty:" + f.mode + ":" + f.KEK.URI() }

func (f *faultyKEK) Matches(ref string) bool { return transforms.KEKMatches(f.KEK, ref) }

func (f *faultyKEK) Unwrap(ctx context.Context, b keys.Binding, mech string, w []byte) (*keys.DEK, error) {
	id := b.DEKID
	f.mu.Lock()
	f.tries[id]++
	n := f.tries[id]
	f.mu.Unlock()
	switch {
	case f.mode == "transient" && n <= 2: // each DEK fails twice, then works
		return nil, keys.Retryable(fmt.Errorf("unwrap %q: pkcs11: 0x30: CKR_DEVICE_ERROR (fault injected)", id))
	case f.mode == "auth":
		return nil, fmt.Errorf("unwrap %q: %w (fault injected)", id, keys.ErrAuthFailed)
	}
	return f.KEK.Unwrap(ctx, b, mech, w)
}

func (f *faultyKEK) Wrap(ctx context.Context, b keys.Binding, dek *keys.DEK) ([]byte, error) {
	if f.mode == "panic" && f.wraps.Add(1) == 1 {
		panic("C_EncryptInit: CKR_DEVICE_ERROR (fault injected)")
	}
	return f.KEK.Wrap(ctx, b, dek)
}

func TestTransientHSMErrorsAreRetried(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 2, 40, 4)
	j := d.job(schemas.ModeReencrypt, "flaky", env.KEK("target", "kek-aes"), "aes-gcm")
	j.Source.KEK = faulty(t, "transient", j.Source.KEK)
	m := runJob(t, j)
	if m.Status != "succeeded" || m.Totals.RecordsMigrated != 80 {
		t.Fatalf("transient errors were not absorbed: %s %+v %v", m.Status, m.Totals, m.Failures)
	}
}

func TestPanickingWrapDoesNotKillTheRun(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 1, 20, 3)
	j := d.job(schemas.ModeRewrap, "panic", env.KEK("target", "kek-aes"), "aes-gcm")
	j.Target.KEK = faulty(t, "panic", j.Target.KEK)
	m := runJob(t, j)
	if m.Totals.DEKsMigrated != 2 || m.Totals.DEKsFailed != 1 || !strings.Contains(m.Failures[0].Error, "panic") {
		t.Fatalf("want one failed DEK with the panic as its reason: %+v %v", m.Totals, m.Failures)
	}
}

func TestPermanentHSMErrorStopsTheRun(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 1, 20, 3)
	j := d.job(schemas.ModeReencrypt, "auth", env.KEK("target", "kek-aes"), "aes-gcm")
	j.Source.KEK = faulty(t, "auth", j.Source.KEK)
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	p, s := beam.NewPipelineWithRoot()
	pipeline.Build(s, j.Spec())
	_, err := beam.Run(context.Background(), "direct", p)
	if err == nil || !strings.Contains(err.Error(), "authentication") {
		m := readManifest(t, j)
		t.Fatalf("run did not stop on a permanent HSM error: %v %+v %v", err, m.Totals, m.Failures)
	}
}

func TestSealPanicBecomesAnError(t *testing.T) {
	ctx := context.Background()
	k, err := keys.Open(ctx, env.KEK("source", "kek-noencrypt"), keys.Options{Wrap: schemas.WrapAESGCM})
	if err != nil {
		t.Fatal(err)
	}
	dek, _ := keys.NewDEK(make([]byte, 32))
	if _, err := k.Wrap(ctx, keys.ByID("d"), dek); err == nil || !errors.Is(err, keys.ErrNotPermitted) {
		t.Fatalf("want ErrNotPermitted from a key without CKA_ENCRYPT, got %v", err)
	}
}

func TestFailureBudgetStopsTheRun(t *testing.T) {
	d := genDataset(t, env.KEK("source", "kek-aes"), "aes-gcm", 3, 30, 3)
	// Three corrupt records in the first file.
	rewriteRecords(t, d.gen.Data+"/part-00000.parquet", func(r []transforms.GenRow) []transforms.GenRow {
		for i := 0; i < 3; i++ {
			r[i].Payload[15] ^= 1
		}
		return r
	})
	j := d.job(schemas.ModeReencrypt, "budget", env.KEK("target", "kek-aes"), "aes-gcm")
	j.MaxFailures = "2"
	if err := j.Validate(); err != nil {
		t.Fatal(err)
	}
	transforms.Progress.Failed.Store(0)
	p, s := beam.NewPipelineWithRoot()
	pipeline.Build(s, j.Spec())
	_, err := beam.Run(context.Background(), "direct", p)
	if err == nil || !strings.Contains(err.Error(), transforms.ErrFailureBudget.Error()) {
		t.Fatalf("want the failure budget to stop the run, got %v", err)
	}
	// The failures that stopped it are in the ledger.
	rows, _ := ledger.Read(context.Background(), j.Ledger, j.RunID)
	failed := 0
	for _, r := range rows {
		if r.Status == schemas.StatusFailed {
			failed++
		}
	}
	if failed != 3 {
		t.Fatalf("%d failed ledger rows, want 3", failed)
	}
}

func TestParseBudget(t *testing.T) {
	for in, want := range map[string]transforms.Budget{"": {}, "0": {Count: -1}, "10": {Count: 10}, "0.5%": {Ratio: 0.005}} {
		got, err := transforms.ParseBudget(in)
		if err != nil || got != want {
			t.Errorf("%q: %+v %v", in, got, err)
		}
	}
	for _, bad := range []string{"-1", "x", "200%", "0%"} {
		if _, err := transforms.ParseBudget(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
