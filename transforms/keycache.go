package transforms

import (
	"context"
	"crypto/cipher"
	"fmt"
	"sync"

	"rekey/providers/keys"
)

// openKEKs holds the KEKs opened in this process, shared by every DoFn
// instance: a KEK is a logged-in token, not something to open per bundle.
var (
	keksMu sync.Mutex
	keks   = map[string]keys.KEK{}
)

// openKEK opens a DoFn's KEK with the spec's HSM rate limit.
func (s *Spec) openKEK(ctx context.Context, uri, wrap string) (keys.KEK, error) {
	k, err := OpenKEK(ctx, uri, wrap, s.KeyWorkers())
	if err != nil {
		return nil, err
	}
	// Transient custodian errors are retried per operation, inside the
	// custodian's rate budget.
	return keys.WithRetry(keys.WithRate(k, s.RateFor(uri)), keys.RetryPolicy{}), nil
}

// RateFor is the rate the run allows the custodian of the key at uri:
// its side's rate, else the job's (0: the custodian's default).
func (s *Spec) RateFor(uri string) float64 {
	switch {
	case uri == s.SourceKEK && s.SourceRate > 0:
		return s.SourceRate
	case uri == s.TargetKEK && s.TargetRate > 0:
		return s.TargetRate
	}
	return s.HSMRate
}

// openPair opens the source and target KEKs of a migrating DoFn.
func (s *Spec) openPair(ctx context.Context) (src, dst keys.KEK, err error) {
	if src, err = s.openKEK(ctx, s.SourceKEK, s.SourceWrap); err != nil {
		return nil, nil, fmt.Errorf("source KEK: %w", err)
	}
	if dst, err = s.openKEK(ctx, s.TargetKEK, s.TargetWrap); err != nil {
		return nil, nil, fmt.Errorf("target KEK: %w", err)
	}
	if s.TargetWrap == "" {
		// The key type's default: name it, so output metadata and ledgers
		// say which wrap was used.
		s.TargetWrap = dst.Mechanism()
	}
	return src, dst, nil
}

// OpenKEK opens (once per process) the KEK at uri using wrap, with room
// for sessions concurrent operations: a key already open (the preflight
// opened it first) grows its custodian's sessions to that, within the
// custodian's limit (keys.Reserve); operations past the limit wait for a
// session.
func OpenKEK(ctx context.Context, uri, wrap string, sessions int) (keys.KEK, error) {
	keksMu.Lock()
	defer keksMu.Unlock()
	id := uri + "\x00" + wrap
	k := keks[id]
	if k == nil {
		// Opening can meet what every later call can: a throttled KMS, an
		// HSM failing over. It is retried the same way.
		err := keys.RetryPolicy{}.Do(ctx, func() (err error) {
			k, err = keys.Open(ctx, uri, keys.Options{Wrap: wrap, Sessions: sessions})
			return err
		})
		if err != nil {
			return nil, err
		}
		keks[id] = k
	}
	if sessions > 0 {
		if _, err := keys.Reserve(k, sessions); err != nil {
			return nil, fmt.Errorf("open %s for %d concurrent operations: %w", keys.Redact(uri), sessions, err)
		}
	}
	return k, nil
}

// cachedKey is an unwrapped DEK (its AEAD is built once, by the DEK).
type cachedKey struct {
	dek  *keys.DEK
	aead cipher.AEAD
}

var (
	sharedCacheOnce sync.Once
	sharedCache     *keys.Cache
)

// processCache is the DEK cache of this worker process.
func processCache(size int) *keys.Cache {
	sharedCacheOnce.Do(func() { sharedCache = keys.NewCache(size) })
	return sharedCache
}

// cachedAEAD returns d with its AES-GCM instance.
func cachedAEAD(d *keys.DEK, err error) (*cachedKey, error) {
	if err != nil {
		return nil, err
	}
	aead, err := d.AEAD()
	if err != nil {
		return nil, err
	}
	return &cachedKey{dek: d, aead: aead}, nil
}

// Unwraps is the number of unwraps this process's cache performed.
func Unwraps() int64 { return processCache(0).Loads() }
